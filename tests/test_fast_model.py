"""The fast CIFAR model (airbench94's network): shapes layer by layer, the parameter count in
closed form, BN scales frozen (absent) and the whitening kernel frozen (a buffer), the partial
identity init, the logit scale and the summed label-smoothed loss. The network's equality with
its tf.nn build (one float64 step) is crosscheck/test_tf_fast_model.py."""
import numpy as np
import pytest

from tinybn import Tensor
from tinybn.models.cifar_fast import WIDTHS, fast, partial_identity
from tinybn.models.whitening import patch_whitening_kernel
from tinybn.nn.batchnorm import BatchNorm
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
