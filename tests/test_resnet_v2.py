"""tinybn.models.resnet_v2: structure and counts, shapes, conv2d_same, gradients, modes, bad input."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from tinybn import Tensor, no_grad
from tinybn.gradcheck import check_gradients, numerical_gradient
from tinybn.models.resnet_v2 import (UNITS, Bottleneck, ResNetV2, SlimConv2D, conv2d_same_padding,
                                     from_slim_variables, resnet_v2_50, resnet_v2_block, resnet_v2_blocks,
                                     slim_names, to_slim_variables)
from tinybn.nn.batchnorm import BatchNorm
from tinybn.ops.conv import conv2d

# keras.applications.ResNet{50,101,152}V2(weights=None, classes=1000), built with keras 3.15:
# (trainable, non-trainable) parameter counts. The same architecture written independently
# (crosscheck/test_tf_resnet.py checks resnet_v2_50 against a live build).
KERAS_COUNTS = {50: (25_568_360, 45_440), 101: (44_577_896, 97_664), 152: (60_236_904, 143_744)}


def closed_form_counts(units, num_classes=1000):
    """(trainable, moving) counts of slim's resnet_v2 with `units` bottlenecks per block."""
    trainable, moving, c = 7 * 7 * 3 * 64 + 64, 0, 64
    for d, n in zip((64, 128, 256, 512), units):
        for _ in range(n):
            trainable += 2 * c + (c * 4 * d + 4 * d if c != 4 * d else 0)     # preact BN, shortcut
            trainable += c * d + 2 * d + 9 * d * d + 2 * d + d * 4 * d + 4 * d  # conv1 + BN, conv2 + BN, conv3
            moving += 2 * c + 2 * d + 2 * d
            c = 4 * d
    return trainable + 2 * c + c * num_classes + num_classes, moving + 2 * c


def tiny(num_classes=3, rng=0, dtype=np.float32, **kwargs):
    """Two short blocks (depths 16 and 32) on 3-channel images: the structure, cheaply."""
    blocks = [resnet_v2_block("block1", 4, 2, 2), resnet_v2_block("block2", 8, 1, 1)]
    return ResNetV2(blocks, num_classes, scope="tiny", rng=np.random.default_rng(rng), dtype=dtype, **kwargs)


def test_unit_counts_and_parameter_counts():
    for depth, units in ((50, (3, 4, 6, 3)), (101, (3, 4, 23, 3)), (152, (3, 8, 36, 3)), (200, (3, 24, 36, 3))):
        blocks = resnet_v2_blocks(depth)
        assert UNITS[depth] == units == tuple(len(b.args) for b in blocks)
        assert 3 * sum(units) + 2 == depth                  # 3 convs per unit, root conv1, logits
        for block, base, stride in zip(blocks, (64, 128, 256, 512), (2, 2, 2, 1)):
            assert block.unit_fn is Bottleneck
            assert block.args == [(4 * base, base, 1)] * (len(block.args) - 1) + [(4 * base, base, stride)]
        if depth in KERAS_COUNTS:
            assert closed_form_counts(units) == KERAS_COUNTS[depth]
    model = resnet_v2_50(num_classes=1000, rng=np.random.default_rng(0))
    assert (sum(p.size for p in model.parameters()), sum(b.size for _, b in model.named_buffers())) == \
        KERAS_COUNTS[50]
    assert len(model.decayed_kernels) == 1 + 3 * 16 + 4 + 1     # root, unit convs, shortcuts, logits
    decay = sum(0.5 * float(np.sum(k.data.astype(np.float64) ** 2)) for k in model.decayed_kernels) * 1e-4
    assert float(model.regularization_loss().numpy()) == pytest.approx(decay, rel=1e-5)


def test_end_point_shapes_for_224():
    model = resnet_v2_50(num_classes=1000, rng=np.random.default_rng(1)).eval()
    images = np.random.default_rng(2).standard_normal((1, 224, 224, 3)).astype(np.float32)
    with no_grad():
        net, end_points = model(images)
    shapes = {k: v.shape for k, v in end_points.items()}
    assert shapes == {"resnet_v2_50/block1": (1, 28, 28, 256), "resnet_v2_50/block2": (1, 14, 14, 512),
                      "resnet_v2_50/block3": (1, 7, 7, 1024), "resnet_v2_50/block4": (1, 7, 7, 2048),
                      "global_pool": (1, 1, 1, 2048), "resnet_v2_50/logits": (1, 1, 1, 1000),
                      "resnet_v2_50/spatial_squeeze": (1, 1000), "predictions": (1, 1000)}
    assert net is end_points["resnet_v2_50/spatial_squeeze"]
    np.testing.assert_allclose(end_points["predictions"].numpy().sum(), 1.0, rtol=1e-5)
    convs = model.conv_layers(224, 224)
    assert [c[3] for c in convs[:2]] == [(112, 112), (56, 56)]        # root conv1, block1 unit_1 shortcut
    assert convs[-1][0] == "resnet_v2_50/logits" and len(convs) == 54


def test_all_end_points_match_conv_layers():
    model = tiny()
    net, end_points = model(np.zeros((2, 20, 20, 3), np.float32), all_end_points=True)
    for name, conv, _, (oh, ow) in model.conv_layers(20, 20):
        assert end_points[name].shape == (2, oh, ow, conv.kernel.shape[3]), name
    assert list(end_points)[:6] == ["tiny/conv1", "tiny/block1/unit_1/bottleneck_v2/shortcut",
                                    "tiny/block1/unit_1/bottleneck_v2/conv1", "tiny/block1/unit_1/bottleneck_v2/conv2",
                                    "tiny/block1/unit_1/bottleneck_v2/conv3", "tiny/block1/unit_1/bottleneck_v2"]
    assert end_points["tiny/block1"].shape == (2, 3, 3, 16)          # 20 -> 10 -> 5 -> stride 2 in unit_2: 3
    assert end_points["tiny/block1"] is end_points["tiny/block1/unit_2/bottleneck_v2"]


def test_conv2d_same_padding_closed_form():
    assert conv2d_same_padding(7, 2) == [(3, 3), (3, 3)]
    assert conv2d_same_padding(3, 2) == [(1, 1), (1, 1)]
    assert conv2d_same_padding(4, 2) == [(1, 2), (1, 2)]
    assert conv2d_same_padding(3, 2, rate=2) == [(2, 2), (2, 2)]      # effective kernel 5
    assert conv2d_same_padding(3, 1) == "SAME"


@settings(max_examples=20, deadline=None)
@given(h=st.integers(3, 9), w=st.integers(3, 9), k=st.integers(1, 4), stride=st.integers(1, 3))
def test_conv2d_same_is_tf_pad_then_valid_and_a_subsampled_same_conv(h, w, k, stride):
    rng = np.random.default_rng(h * 100 + w * 10 + k)
    layer = SlimConv2D(2, 3, k, stride, conv2d_same_padding(k, stride), rng=rng, dtype=np.float64)
    x = rng.standard_normal((2, h, w, 2))
    y = layer(x).data - layer.bias.data
    total = k - 1
    padded = np.pad(x, ((0, 0), (total // 2, total - total // 2), (total // 2, total - total // 2), (0, 0)))
    np.testing.assert_allclose(y, conv2d(padded, layer.kernel.data, stride, "VALID").data, rtol=1e-12, atol=1e-12)
    # resnet_utils.conv2d_same's docstring: the same as a stride-1 SAME conv, subsampled
    full = conv2d(x, layer.kernel.data, 1, "SAME").data
    np.testing.assert_allclose(y, full[:, ::stride, ::stride], rtol=1e-12, atol=1e-12)
    assert y.shape[1:3] == layer.output_size((h, w)) == (-(-h // stride), -(-w // stride))


BN64 = dict(decay=0.997, epsilon=1.001e-5, moving_variance_rule="bessel", dtype=np.float64)


@settings(max_examples=12, deadline=None)
@given(kind=st.sampled_from(["conv shortcut", "pool shortcut", "identity"]), stride=st.integers(1, 2),
       hw=st.integers(2, 4), training=st.booleans(), seed=st.integers(0, 99))
def test_bottleneck_gradients_float64(kind, stride, hw, training, seed):
    rng = np.random.default_rng(seed)
    depth_in, depth = (3, 4) if kind == "conv shortcut" else (4, 4)
    stride = 1 if kind == "identity" else max(stride, 2 if kind == "pool shortcut" else 1)
    unit = Bottleneck(depth_in, depth, 2, stride, BN64, rng=rng, dtype=np.float64)
    for bn in (m for _, m in unit.named_modules() if isinstance(m, BatchNorm)):
        bn.gamma.data = rng.uniform(0.5, 1.5, bn.gamma.shape)
        bn.beta.data = 0.3 * rng.standard_normal(bn.beta.shape)
        bn.moving_mean.data = 0.3 * rng.standard_normal(bn.moving_mean.shape)
    assert (unit.shortcut is None) == (kind != "conv shortcut")
    unit.train(training)
    x = rng.standard_normal((2, hw, hw, depth_in))
    check_gradients(lambda t: unit(t), x)
    g = rng.standard_normal(unit(Tensor(x)).shape)
    unit.zero_grad()
    unit(Tensor(x)).backward(g)
    for name, p in unit.named_parameters():
        numeric = numerical_gradient(lambda: float(np.sum(g * unit(Tensor(x)).data)), p.data)
        np.testing.assert_allclose(p.grad, numeric, rtol=1e-5, atol=1e-7 * max(1, np.abs(numeric).max()),
                                   err_msg=name)


def test_train_and_eval_modes():
    model = tiny()
    images = np.random.default_rng(3).standard_normal((4, 16, 16, 3)).astype(np.float32)
    net, end_points = model.train()(images)
    block2 = end_points["tiny/block2"].numpy().astype(np.float64).reshape(-1, 32)      # postnorm's input
    n = block2.shape[0]
    np.testing.assert_allclose(model.postnorm.moving_mean.data, 0.003 * block2.mean(0), rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(model.postnorm.moving_variance.data, 0.997 + 0.003 * block2.var(0) * n / (n - 1),
                               rtol=1e-5)                            # slim's fused BN: Bessel-corrected
    # training mode: batch statistics, so an image's logits depend on the rest of the batch
    alone, _ = model(images[:1])
    assert not np.allclose(alone.numpy(), net.numpy()[:1], atol=1e-3)
    state = model.state_dict()
    model.eval()
    with no_grad():
        batch_logits, _ = model(images)
        alone, _ = model(images[:1])
    np.testing.assert_allclose(alone.numpy(), batch_logits.numpy()[:1], rtol=1e-5, atol=1e-6)
    for k, v in model.state_dict().items():
        np.testing.assert_array_equal(v, state[k], err_msg=k)     # eval() updates no moving statistic


def test_slim_names_and_round_trip():
    model = tiny()
    names = slim_names(model)
    assert names["conv1/kernel"] == "tiny/conv1/weights" and names["conv1/bias"] == "tiny/conv1/biases"
    assert names["block1/unit_1/bottleneck_v2/preact/gamma"] == "tiny/block1/unit_1/bottleneck_v2/preact/gamma"
    assert names["block1/unit_1/bottleneck_v2/shortcut/bias"] == "tiny/block1/unit_1/bottleneck_v2/shortcut/biases"
    assert (names["block2/unit_1/bottleneck_v2/conv2/BatchNorm/moving_variance"]
            == "tiny/block2/unit_1/bottleneck_v2/conv2/BatchNorm/moving_variance")
    assert names["postnorm/beta"] == "tiny/postnorm/beta" and names["logits/kernel"] == "tiny/logits/weights"
    assert "block1/unit_2/bottleneck_v2/shortcut/kernel" not in names      # depth == depth_in: max pool
    assert len(set(names.values())) == len(names)
    other = tiny(rng=1)
    from_slim_variables(other, to_slim_variables(model))
    for k, v in model.state_dict().items():
        np.testing.assert_array_equal(other.state_dict()[k], v)


def test_bad_input():
    model = tiny()
    with pytest.raises(ValueError, match=r"tiny: images must be rank 4 \(N, H, W, C\), got shape \(16, 16, 3\)"):
        model(np.zeros((16, 16, 3), np.float32))
    with pytest.raises(ValueError, match="tiny: images have 4 channels .* built for 3"):
        model(np.zeros((1, 16, 16, 4), np.float32))
    with pytest.raises(ValueError, match="spatial_squeeze needs 1x1 logits, got shape"):
        tiny(global_pool=False)(np.zeros((1, 16, 16, 3), np.float32))
    assert tiny(global_pool=False, spatial_squeeze=False)(np.zeros((1, 16, 16, 3), np.float32))[0].shape == \
        (1, 2, 2, 3)
    with pytest.raises(ValueError, match="depth must be one of \\[50, 101, 152, 200\\], got 34"):
        resnet_v2_blocks(34)
    variables = to_slim_variables(model)
    with pytest.raises(ValueError, match=r"\['tiny/conv1/kernel'\] are not variables of tiny"):
        from_slim_variables(model, {**variables, "tiny/conv1/kernel": variables["tiny/conv1/weights"]})
    del variables["tiny/postnorm/gamma"]
    with pytest.raises(ValueError, match=r"missing keys \['postnorm/gamma'\]"):
        from_slim_variables(model, variables)


def test_features_without_classes():
    model = tiny(num_classes=None)
    net, end_points = model(np.zeros((2, 16, 16, 3), np.float32))
    assert net.shape == (2, 1, 1, 32) and list(end_points)[-1] == "global_pool"
    assert not any("logits" in k for k, _ in model.named_parameters())
