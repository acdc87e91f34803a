"""The two CIFAR-10 models of tinybn.models.cifar10 in TensorFlow and in PyTorch, for bench_cifar.py.

Both are built from tinybn's initial weights (a dict keyed "net/conv1/kernel", HWIO
filters, (IN, OUT) dense kernels), so the first step's loss must agree across
frameworks; bench_cifar.py checks that it does.

    tutorial  conv 5x5x64 + bias, relu, max 3x3/2 SAME, lrn(4, 1, 0.001/9, 0.75),
              conv 5x5x64 + bias, relu, lrn, max 3x3/2 SAME, flatten (NHWC order),
              dense 2304->384 relu, 384->192 relu, 192->10;
              loss = mean sparse xent + 0.004 * l2_loss(local3, local4 kernels); SGD lr 0.1
    bn        [conv 5x5 (no bias), batch norm, relu, max 2x2/2 SAME] x 2,
              conv 5x5x10 (no bias), batch norm, relu, avg 6x6 VALID, flatten;
              loss = mean sparse xent; Adam lr 0.04 (beta1 0.9, beta2 0.999, eps 1e-8)
    batch norm: epsilon 1e-3, moving-average decay 0.999, batch statistics in training.

TensorFlow: tf.nn ops on tf.Variables inside tf.function (jit_compile=True for tf-xla), batch norm as TF's fused
kernel (tf.compat.v1.nn.fused_batch_norm, what tf.keras used on 4-D inputs), updates
by TF's own optimizer kernels (ResourceApplyGradientDescent, ResourceApplyAdam).

PyTorch: eager NCHW (the batch is transposed once, outside the timing), or with the loss and
the forward pass torch.compile'd (default mode; compiled on their first calls; the optimizer
stays eager), on `device` (bench/gpu_check.sh passes "cuda"). Conversions:
    filters HWIO -> OIHW; dense (IN, OUT) -> Linear's (OUT, IN); local3's rows reordered
    from NHWC to NCHW flatten order, so the same weights give the same logits.
    lrn: F.local_response_norm(size=2r+1, alpha=alpha*(2r+1), beta, k=bias), since
    torch divides the window's sum of squares by its size and TF does not.
    max pool SAME: TF pads (total // 2) before and the rest after; F.pad with -inf,
    then a VALID max_pool2d. BatchNorm2d(momentum = 1 - decay).
"""
import numpy as np

LRN = dict(depth_radius=4, bias=1.0, alpha=0.001 / 9.0, beta=0.75)
WEIGHT_DECAY = {"net/local3/kernel": 0.004, "net/local4/kernel": 0.004}
BN_EPSILON, BN_DECAY = 1e-3, 0.999
SGD_LR, ADAM_LR, BETA1, BETA2, ADAM_EPSILON = 0.1, 0.04, 0.9, 0.999, 1e-8


def _decayed(params):
    return [(k, wd) for k, wd in WEIGHT_DECAY.items() if k in params]


# ---- TensorFlow -------------------------------------------------------------------------------

def tf_prepare(threads):
    import tensorflow as tf
    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(threads)
    return f"tensorflow {tf.__version__}"


def tf_adapter(model, params, buffers, x, labels, jit_compile=False):
    import tensorflow as tf
    var = {k: tf.Variable(v) for k, v in params.items()}
    moving = {k: tf.Variable(v, trainable=False) for k, v in buffers.items()}
    trainables = list(var.values())
    images, targets = tf.constant(x), tf.constant(labels.astype(np.int64))

    def conv(h, layer):
        return tf.nn.conv2d(h, var[f"net/{layer}/kernel"], 1, "SAME")

    def batch_norm(h, layer, training):
        gamma, beta = var[f"net/{layer}/gamma"], var[f"net/{layer}/beta"]
        mean, variance = moving[f"net/{layer}/moving_mean"], moving[f"net/{layer}/moving_variance"]
        if not training:
            return tf.compat.v1.nn.fused_batch_norm(h, gamma, beta, mean, variance, BN_EPSILON, is_training=False)[0]
        y, new_mean, new_variance = tf.compat.v1.nn.fused_batch_norm(
            h, gamma, beta, mean, variance, BN_EPSILON, is_training=True, exponential_avg_factor=1.0 - BN_DECAY)
        mean.assign(new_mean)
        variance.assign(new_variance)
        return y

    def dense(h, layer):
        return tf.matmul(h, var[f"net/{layer}/kernel"]) + var[f"net/{layer}/bias"]

    def net(h, training):
        n = h.shape[0]
        if model == "bn":
            for conv_name, bn_name in (("conv1", "bn1"), ("conv2", "bn2")):
                h = tf.nn.relu(batch_norm(conv(h, conv_name), bn_name, training))
                h = tf.nn.max_pool2d(h, 2, 2, "SAME")
            h = tf.nn.relu(batch_norm(conv(h, "conv3"), "bn3", training))
            return tf.reshape(tf.nn.avg_pool2d(h, 6, 6, "VALID"), [n, -1])
        h = tf.nn.relu(tf.nn.bias_add(conv(h, "conv1"), var["net/conv1/bias"]))
        h = tf.nn.lrn(tf.nn.max_pool2d(h, 3, 2, "SAME"), **LRN)
        h = tf.nn.lrn(tf.nn.relu(tf.nn.bias_add(conv(h, "conv2"), var["net/conv2/bias"])), **LRN)
        h = tf.reshape(tf.nn.max_pool2d(h, 3, 2, "SAME"), [n, -1])
        h = tf.nn.relu(dense(h, "local3"))
        return dense(tf.nn.relu(dense(h, "local4")), "softmax_linear")

    if model == "tutorial":
        def update(grads):
            for v, g in zip(trainables, grads):
                tf.raw_ops.ResourceApplyGradientDescent(var=v.handle, alpha=tf.constant(SGD_LR), delta=g)
    else:
        m = [tf.Variable(tf.zeros_like(v), trainable=False) for v in trainables]
        s = [tf.Variable(tf.zeros_like(v), trainable=False) for v in trainables]
        beta1_power, beta2_power = tf.Variable(BETA1), tf.Variable(BETA2)

        def update(grads):
            for v, mv, sv, g in zip(trainables, m, s, grads):
                tf.raw_ops.ResourceApplyAdam(
                    var=v.handle, m=mv.handle, v=sv.handle, beta1_power=beta1_power.read_value(),
                    beta2_power=beta2_power.read_value(), lr=tf.constant(ADAM_LR), beta1=tf.constant(BETA1),
                    beta2=tf.constant(BETA2), epsilon=tf.constant(ADAM_EPSILON), grad=g)
            beta1_power.assign(beta1_power * BETA1)
            beta2_power.assign(beta2_power * BETA2)

    @tf.function(jit_compile=jit_compile)
    def train_graph(h, y):
        with tf.GradientTape() as tape:
            logits = net(h, True)
            loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels=y, logits=logits))
            for k, wd in _decayed(var):
                loss = loss + wd * tf.nn.l2_loss(var[k])
        update(tape.gradient(loss, trainables))
        return loss

    @tf.function(jit_compile=jit_compile)
    def forward_graph(h):
        return net(h, False)

    return (lambda: float(train_graph(images, targets).numpy())), (lambda: forward_graph(images).numpy())


# ---- PyTorch ----------------------------------------------------------------------------------

def torch_prepare(threads):
    import torch
    torch.set_num_threads(threads)
    try:
        torch.set_num_interop_threads(threads)
    except RuntimeError:            # only allowed before the first parallel work; harmless here
        pass
    return f"torch {torch.__version__}"


def torch_adapter(model, params, buffers, x, labels, compile=False, device="cpu"):
    import torch
    import torch.nn.functional as F
    nn = torch.nn

    def max_pool_same(h, k, s):
        pads = []
        for size in (h.shape[3], h.shape[2]):            # F.pad lists the last axis first
            out = -(-size // s)
            total = max((out - 1) * s + k - size, 0)
            pads += [total // 2, total - total // 2]
        return F.max_pool2d(F.pad(h, pads, value=float("-inf")), k, s)

    def lrn(h):
        n = 2 * LRN["depth_radius"] + 1
        return F.local_response_norm(h, n, alpha=LRN["alpha"] * n, beta=LRN["beta"], k=LRN["bias"])

    def load(param, array):
        with torch.no_grad():
            param.copy_(torch.from_numpy(np.ascontiguousarray(array)))

    def conv(name, cin, cout, bias):
        layer = nn.Conv2d(cin, cout, 5, padding=2, bias=bias)
        load(layer.weight, params[f"net/{name}/kernel"].transpose(3, 2, 0, 1))
        if bias:
            load(layer.bias, params[f"net/{name}/bias"])
        return layer

    def linear(name, kernel=None):
        kernel = params[f"net/{name}/kernel"] if kernel is None else kernel
        layer = nn.Linear(*kernel.shape)
        load(layer.weight, kernel.T)
        load(layer.bias, params[f"net/{name}/bias"])
        return layer

    def batch_norm(name, c):
        layer = nn.BatchNorm2d(c, eps=BN_EPSILON, momentum=1.0 - BN_DECAY)
        load(layer.weight, params[f"net/{name}/gamma"])
        load(layer.bias, params[f"net/{name}/beta"])
        load(layer.running_mean, buffers[f"net/{name}/moving_mean"])
        load(layer.running_var, buffers[f"net/{name}/moving_variance"])
        return layer

    class Tutorial(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1, self.conv2 = conv("conv1", 3, 64, True), conv("conv2", 64, 64, True)
            k3 = params["net/local3/kernel"]             # rows in (h, w, c) order -> (c, h, w)
            self.local3 = linear("local3", k3.reshape(6, 6, 64, -1).transpose(2, 0, 1, 3).reshape(k3.shape))
            self.local4, self.softmax_linear = linear("local4"), linear("softmax_linear")

        def forward(self, h):
            h = lrn(max_pool_same(F.relu(self.conv1(h)), 3, 2))
            h = max_pool_same(lrn(F.relu(self.conv2(h))), 3, 2).flatten(1)
            return self.softmax_linear(F.relu(self.local4(F.relu(self.local3(h)))))

        def decay(self):
            return sum(WEIGHT_DECAY[f"net/{k}/kernel"] * (getattr(self, k).weight ** 2).sum() / 2
                       for k in ("local3", "local4"))

    class BN(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1, self.bn1 = conv("conv1", 3, 64, False), batch_norm("bn1", 64)
            self.conv2, self.bn2 = conv("conv2", 64, 64, False), batch_norm("bn2", 64)
            self.conv3, self.bn3 = conv("conv3", 64, 10, False), batch_norm("bn3", 10)

        def forward(self, h):
            h = max_pool_same(F.relu(self.bn1(self.conv1(h))), 2, 2)
            h = max_pool_same(F.relu(self.bn2(self.conv2(h))), 2, 2)
            return F.avg_pool2d(F.relu(self.bn3(self.conv3(h))), 6, 6).flatten(1)

        def decay(self):
            return 0.0

    net = (Tutorial() if model == "tutorial" else BN()).to(device)
    opt = (torch.optim.SGD(net.parameters(), lr=SGD_LR) if model == "tutorial" else
           torch.optim.Adam(net.parameters(), lr=ADAM_LR, betas=(BETA1, BETA2), eps=ADAM_EPSILON))
    images = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2))).to(device)
    targets = torch.from_numpy(labels.astype(np.int64)).to(device)

    def loss_of(h, y):
        return F.cross_entropy(net(h), y) + net.decay()

    def logits_of(h):
        return net(h)
    if compile:                                      # each compiled on its first call
        loss_of, logits_of = torch.compile(loss_of), torch.compile(logits_of)

    def train_step():
        net.train()
        opt.zero_grad(set_to_none=True)
        loss = loss_of(images, targets)
        loss.backward()
        opt.step()
        return float(loss.item())

    def forward():
        net.eval()
        with torch.inference_mode():
            return logits_of(images).cpu().numpy()
    return train_step, forward


PREPARE = {"tf": tf_prepare, "tf-xla": tf_prepare, "torch": torch_prepare, "torch-compile": torch_prepare}
ADAPTERS = {"tf": tf_adapter, "tf-xla": lambda *a: tf_adapter(*a, jit_compile=True),
            "torch": torch_adapter, "torch-compile": lambda *a: torch_adapter(*a, compile=True)}
