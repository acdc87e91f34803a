"""The fast CIFAR model (airbench94's network): shapes layer by layer, the parameter count in
closed form, BN scales frozen (absent) and the whitening kernel frozen (a buffer), the partial
identity init, the logit scale and the summed label-smoothed loss."""
import numpy as np
import pytest

from tinybn import Tensor
from tinybn.models.cifar_fast import WIDTHS, fast, partial_identity
from tinybn.models.whitening import patch_whitening_kernel
from tinybn.nn.batchnorm import BatchNorm
from tinybn.ops import activations
from tinybn.ops.losses import sparse_softmax_cross_entropy_with_label_smoothing

SHAPES = {"whiten": (31, 31, 24), "gelu0": (31, 31, 24), "block1": (15, 15, 64), "block2": (7, 7, 256),
          "block3": (3, 3, 256), "pool": (1, 1, 256), "flatten": (256,), "dense": (10,), "scale": (10,)}


@pytest.fixture(scope="module")
def model():
    return fast(rng=np.random.default_rng(0))


def _images(n, seed=1):
    return np.random.default_rng(seed).standard_normal((n, 32, 32, 3)).astype(np.float32)


def test_shapes_layer_by_layer(model):
    model.record_activations = True
    try:
        logits = model(_images(2))
    finally:
        model.record_activations = False
    assert {name: a.shape[1:] for name, a in model.activations.items()} == SHAPES
    assert logits.shape == (2, 10) and logits.dtype == np.float32


def test_parameter_count_closed_form(model):
    """whitening bias 2*12; each block 9*(C_in*C + C*C) conv weights and 2*C BN biases; dense 256*10."""
    c_in = [24, 64, 256]
    convs = sum(9 * (a * b + b * b) for a, b in zip(c_in, WIDTHS))
    expected = 24 + convs + sum(2 * c for c in WIDTHS) + 256 * 10
    assert expected == 1_971_352
    assert sum(p.data.size for p in model.parameters()) == expected
    assert dict(model.named_buffers())["net/whiten/kernel"].shape == (2, 2, 3, 24)


def test_batch_norm_scales_are_frozen_at_one(model):
    """No BN has a gamma (scale=False: y = (x - mean) / sqrt(var + eps) + beta); each has a beta;
    airbench's epsilon, decay and PyTorch's unbiased moving variance."""
    norms = [m for _, m in model.named_modules() if isinstance(m, BatchNorm)]
    assert len(norms) == 6
    assert all(bn.gamma is None and bn.beta is not None for bn in norms)
    assert all((bn.epsilon, bn.decay, bn.moving_variance_rule) == (1e-12, 0.6, "bessel") for bn in norms)
    names = [n for n, _ in model.named_parameters()]
    assert not any(n.endswith("gamma") for n in names)
    groups = model.parameter_groups()
    assert len(groups["norm_biases"]) == 6 and all(n.endswith("/beta") for n, _ in groups["norm_biases"])
    assert len(groups["other"]) == len(names) - 6


def test_whitening_kernel_is_frozen_and_set_from_images():
    m = fast(rng=np.random.default_rng(0))
    images = _images(4, seed=3)
    m.initialize_whitening(images)
    kernel = m.whitening.kernel.data
    np.testing.assert_array_equal(kernel, patch_whitening_kernel(images).astype(np.float32))
    x = Tensor(_images(2))
    m.loss(m(x), np.array([0, 1])).backward()
    assert m.whitening.kernel.grad is None and m.whitening.bias.grad is not None
    assert all(p.grad is not None for p in m.parameters())


def test_partial_identity_init(model):
    """The first C_in filters of every block conv are the identity: conv(x)[..., :C_in] == x."""
    kernel = partial_identity()((3, 3, 4, 6), np.random.default_rng(0))
    identity = np.zeros((3, 3, 4, 4))
    identity[1, 1, np.arange(4), np.arange(4)] = 1
    np.testing.assert_array_equal(kernel[..., :4], identity)
    assert 0 < np.abs(kernel[..., 4:]).max() <= 1 / np.sqrt(36)
    block = dict(dict(model.net.named_children())["block2"].named_children())
    conv1, conv2 = block["conv1"], block["conv2"]
    x = np.random.default_rng(2).standard_normal((1, 5, 5, 64)).astype(np.float32)
    np.testing.assert_array_equal(conv1(x).data[..., :64], x)
    np.testing.assert_array_equal(conv2(np.pad(x, ((0, 0), (0, 0), (0, 0), (0, 192)))).data[..., :64], x)
    dense = dict(model.net.named_children())["dense"].kernel.data
    assert np.abs(dense).max() <= 1 / 16 and dense.std() > 1 / 16 / 2


def test_logits_are_the_dense_output_over_nine_and_the_loss_sums(model):
    model.eval()
    try:
        model.record_activations = True
        logits = model(_images(3))
    finally:
        model.record_activations = False
        model.train()
    np.testing.assert_allclose(logits.data, model.activations["dense"].data * np.float32(1 / 9), rtol=1e-7)
    labels = np.array([1, 2, 9])
    loss = model.loss(logits, labels)
    per_example = sparse_softmax_cross_entropy_with_label_smoothing(labels, logits.data, 0.2).data
    assert loss.shape == () and float(loss.data) == pytest.approx(float(per_example.sum()), rel=1e-6)


def _torch_airbench(torch, widths, whiten_kernel):
    """airbench94's make_net in float64 on the CPU (its ConvGroup, BatchNorm with a frozen weight)."""
    nn = torch.nn

    def norm(c):
        bn = nn.BatchNorm2d(c, eps=1e-12, momentum=1 - 0.6).double()
        bn.weight.requires_grad = False
        return bn

    def group(cin, cout):
        return nn.Sequential(nn.Conv2d(cin, cout, 3, padding="same", bias=False), nn.MaxPool2d(2), norm(cout),
                             nn.GELU(), nn.Conv2d(cout, cout, 3, padding="same", bias=False), norm(cout), nn.GELU())
    whiten = nn.Conv2d(3, whiten_kernel.shape[-1], 2, padding=0, bias=True)
    net = nn.Sequential(whiten, nn.GELU(), group(24, widths[0]), group(widths[0], widths[1]),
                        group(widths[1], widths[2]), nn.MaxPool2d(3), nn.Flatten(),
                        nn.Linear(widths[2], 10, bias=False)).double()
    net[0].weight.requires_grad = False
    return net


def _copy_into_torch(torch, model, net):
    """HWIO kernels to OIHW, the dense (in, out) kernel to Linear's (out, in), by layer order."""
    ours = [t for n, t in list(model.named_parameters()) + list(model.named_buffers())
            if n.endswith("kernel") and "whiten" not in n]
    theirs = [m for m in net.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))][1:]
    with torch.no_grad():
        net[0].weight.copy_(torch.from_numpy(model.whitening.kernel.data.transpose(3, 2, 0, 1).copy()))
        net[0].bias.copy_(torch.from_numpy(model.whitening.bias.data))
        for t, m in zip(ours, theirs):
            w = t.data.transpose(3, 2, 0, 1) if t.data.ndim == 4 else t.data.T
            m.weight.copy_(torch.from_numpy(w.copy()))
    return ours, theirs


def test_equals_airbench_torch_network_float64(monkeypatch):
    """Logits, the summed label-smoothed loss, every gradient and the BN moving statistics after
    one training step equal airbench's network in PyTorch (float64, a narrow model, batch 4).
    PyTorch's GELU uses 1/sqrt(2) itself, TF's (and tinybn's) its float32 rounding, which moves
    the logits by ~3e-8: for this comparison tinybn's gelu takes PyTorch's constant."""
    torch = pytest.importorskip("torch")      # not in the test extras
    monkeypatch.setattr(activations, "_SQRT_HALF", 0.7071067811865476)
    widths = (8, 16, 16)
    images = _images(4, seed=5).astype(np.float64)
    labels = np.array([3, 1, 4, 1])
    model = fast(rng=np.random.default_rng(0), dtype=np.float64, whitening_images=images, widths=widths)
    model.whitening.bias.data[...] = np.random.default_rng(4).standard_normal(24) * 0.1
    net = _torch_airbench(torch, widths, model.whitening.kernel.data)
    ours, theirs = _copy_into_torch(torch, model, net)

    x = torch.from_numpy(images.transpose(0, 3, 1, 2).copy())
    torch_logits = net(x) / 9
    torch_loss = torch.nn.CrossEntropyLoss(label_smoothing=0.2, reduction="sum")(torch_logits, torch.from_numpy(labels))
    torch_loss.backward()
    logits = model(Tensor(images))
    loss = model.loss(logits, labels)
    loss.backward()

    np.testing.assert_allclose(logits.data, torch_logits.detach().numpy(), rtol=1e-10, atol=1e-12)
    assert float(loss.data) == pytest.approx(torch_loss.item(), rel=1e-12)
    for t, m in zip(ours, theirs):
        g = t.grad.transpose(3, 2, 0, 1) if t.grad.ndim == 4 else t.grad.T
        np.testing.assert_allclose(g, m.weight.grad.numpy(), rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(model.whitening.bias.grad, net[0].bias.grad.numpy(), rtol=1e-8, atol=1e-10)
    torch_norms = [m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    our_norms = [m for _, m in model.named_modules() if isinstance(m, BatchNorm)]
    for bn, tbn in zip(our_norms, torch_norms):
        np.testing.assert_allclose(bn.beta.grad, tbn.bias.grad.numpy(), rtol=1e-8, atol=1e-10)
        np.testing.assert_allclose(bn.moving_mean.data, tbn.running_mean.numpy(), rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(bn.moving_variance.data, tbn.running_var.numpy(), rtol=1e-10, atol=1e-12)
