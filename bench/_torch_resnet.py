"""TF-slim's resnet_v2_<depth> restated in PyTorch (eager NCHW), from the slim-named weights, for bench_resnet.py.

The same network as crosscheck/tf_resnet.py (tinybn's weights by slim's names, HWIO
filters turned to OIHW), so the first training-mode loss agrees with TF's and tinybn's;
bench_resnet.py warns when it does not. What TF's conventions become here:

    conv2d_same(k, s > 1)  F.pad(beg = (k-1)//2, end = k-1-beg on H and W), VALID conv
    SAME, stride 1         padding (k-1)//2: every kernel here is odd, so SAME is symmetric
    1x1 stride s SAME      no padding at all (ceil(H/s) outputs either way)
    subsample              x[:, :, ::s, ::s], a 1x1 max pool of stride s
    pool1 3x3/2 SAME       F.pad with -inf (total // 2 before, the rest after), VALID max pool
    batch norm             F.batch_norm(eps 1.001e-5, momentum 1 - 0.997): batch statistics in
                           training, the running variance updated with the unbiased one, as TF's
                           fused kernel does; the moving statistics in inference
    loss                   mean cross entropy + 1e-4 * sum(w**2)/2 over every conv kernel

    torch_steps(depth, variables, images, labels, compile=False, device="cpu") -> (forward, forward_backward)
forward: the logits in inference mode; forward_backward: the loss and every gradient, in
training mode (moving statistics updated), no optimizer update, as TF's step. With
`compile`, each is torch.compile'd (default mode) and compiled on its first call.
"""
import numpy as np

UNITS = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3), 152: (3, 8, 36, 3), 200: (3, 24, 36, 3)}
BASE_DEPTHS, BLOCK_STRIDES = (64, 128, 256, 512), (2, 2, 2, 1)
BN_DECAY, BN_EPSILON, WEIGHT_DECAY = 0.997, 1.001e-5, 1e-4


def torch_steps(depth, variables, images, labels, compile=False, device="cpu"):
    import torch
    import torch.nn.functional as F
    scope = f"resnet_v2_{depth}"

    def tensor(name, array):
        if name.endswith("/weights"):
            array = array.transpose(3, 2, 0, 1)            # HWIO -> OIHW
        t = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32)).to(device)
        return t if "moving_" in name else t.requires_grad_(True)
    v = {name: tensor(name, np.asarray(a)) for name, a in variables.items()}
    trainable = [t for name, t in v.items() if "moving_" not in name]
    kernels = [t for name, t in v.items() if name.endswith("/weights")]

    def batch_norm(x, name, training):
        return F.batch_norm(x, v[f"{name}/moving_mean"], v[f"{name}/moving_variance"], v[f"{name}/gamma"],
                            v[f"{name}/beta"], training, 1.0 - BN_DECAY, BN_EPSILON)

    def conv(x, name, stride=1, training=False, same=False):
        w = v[f"{name}/weights"]
        k = w.shape[-1]
        if same and stride > 1:
            beg = (k - 1) // 2
            y = F.conv2d(F.pad(x, [beg, k - 1 - beg, beg, k - 1 - beg]), w, stride=stride)
        else:
            y = F.conv2d(x, w, stride=stride, padding=(k - 1) // 2)
        if f"{name}/biases" in v:
            return y + v[f"{name}/biases"].view(1, -1, 1, 1)
        return F.relu(batch_norm(y, f"{name}/BatchNorm", training))

    def bottleneck(x, unit, depth_out, stride, training):
        preact = F.relu(batch_norm(x, f"{unit}/preact", training))
        if depth_out == x.shape[1]:
            shortcut = x if stride == 1 else x[:, :, ::stride, ::stride]
        else:
            shortcut = conv(preact, f"{unit}/shortcut", stride)
        residual = conv(preact, f"{unit}/conv1", 1, training)
        residual = conv(residual, f"{unit}/conv2", stride, training, same=True)
        return shortcut + conv(residual, f"{unit}/conv3")

    def max_pool_same(x, k, s):
        pads = []
        for size in (x.shape[3], x.shape[2]):              # F.pad lists the last axis first
            total = max((-(-size // s) - 1) * s + k - size, 0)
            pads += [total // 2, total - total // 2]
        return F.max_pool2d(F.pad(x, pads, value=float("-inf")), k, s)

    def logits_of(x, training):
        net = max_pool_same(conv(x, f"{scope}/conv1", 2, same=True), 3, 2)
        for b, (base, units, stride) in enumerate(zip(BASE_DEPTHS, UNITS[depth], BLOCK_STRIDES)):
            for u in range(units):
                net = bottleneck(net, f"{scope}/block{b + 1}/unit_{u + 1}/bottleneck_v2", 4 * base,
                                 stride if u == units - 1 else 1, training)
        net = F.relu(batch_norm(net, f"{scope}/postnorm", training)).mean(dim=(2, 3), keepdim=True)
        return conv(net, f"{scope}/logits").flatten(1)

    def loss_of(x, y):
        decay = sum((w * w).sum() for w in kernels) / 2
        return F.cross_entropy(logits_of(x, True), y) + WEIGHT_DECAY * decay

    def infer(x):
        return logits_of(x, False)
    if compile:
        loss_of, infer = torch.compile(loss_of), torch.compile(infer)
    x = torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2))).to(device)
    y = torch.from_numpy(labels.astype(np.int64)).to(device)

    def forward():
        with torch.inference_mode():
            return infer(x).cpu().numpy()

    def forward_backward():
        for t in trainable:
            t.grad = None
        loss = loss_of(x, y)
        loss.backward()
        return float(loss.item())
    return forward, forward_backward
