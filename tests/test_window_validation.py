"""Bad and edge input to the windowed ops, the layers and the models, as a hostile user gives it:

- float16 under the numba and cupy backends: a one-line TypeError naming the op and the
  dtypes the kernels take (it used to fail 39 frames deep inside numba);
- an empty batch (N = 0): the models return (0, 10) logits in inference mode, as TF does;
  batch norm in training mode refuses it (zero examples have no batch statistics: TF
  returns NaN mean and variance and averages them into the moving statistics) and
  leaves the moving statistics as they were;
- strides, dilations, ksize and explicit pads that are not positive ints (1.5, 1.7, True,
  None), zero-sized filters and zero output channels, unknown padding strings, filters of
  the wrong rank: a one-line ValueError or TypeError naming the op, the argument and the
  value, for conv2d, depthwise_conv2d, separable_conv2d, spatially_separable_conv2d,
  max_pool2d and avg_pool2d.
"""
import copy
import sys
import types

import numpy as np
import pytest

import tinybn.backend as backend
from tinybn import Tensor
from tinybn.models import cifar10, mnist
from tinybn.nn.batchnorm import BatchNorm
from tinybn.nn.layers import AvgPool2D, Conv2D, Dense, Flatten, MaxPool2D, SpatiallySeparableConv2D
from tinybn.ops.conv import conv2d, depthwise_conv2d
from tinybn.ops.fused_batch_norm import fused_batch_norm
from tinybn.ops.losses import softmax_cross_entropy_with_logits, sparse_softmax_cross_entropy_with_logits
from tinybn.ops.lrn import local_response_normalization
from tinybn.ops.pool import avg_pool2d, max_pool2d
from tinybn.ops.separable import separable_conv2d, spatially_separable_conv2d
from test_cuda_loader import stand_in_arrays_on_device

_previous = backend.current_backend()
backend.use_backend("numba")      # loads the kernels; the choice itself is put back
backend.use_backend(_previous)

F16 = np.float16


def _one_line_error(error_type, match, call):
    with pytest.raises(error_type, match=match) as info:
        call()
    assert "\n" not in str(info.value)


# ---- float16 under the compiled backends ----------------------------------------------

def _f16_calls():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 6, 6, 3)).astype(F16)
    c3 = np.ones(3, F16)
    return {
        "conv2d": lambda: conv2d(x, np.ones((3, 3, 3, 2), F16), 1, "SAME"),
        "depthwise_conv2d": lambda: depthwise_conv2d(x, np.ones((3, 3, 3, 2), F16), 1, "SAME"),
        "max_pool2d": lambda: max_pool2d(x, 3, 2, "SAME"),
        "avg_pool2d": lambda: avg_pool2d(x, 3, 2, "SAME"),
        "local_response_normalization": lambda: local_response_normalization(x, 2, 1.0, 0.1, 0.75),
        "fused_batch_norm": lambda: fused_batch_norm(x, c3, c3 * 0),
        "fused_batch_norm (inference)": lambda: fused_batch_norm(x, c3, c3 * 0, c3 * 0, c3, is_training=False),
        "softmax_cross_entropy_with_logits": lambda: softmax_cross_entropy_with_logits(
            np.full((4, 5), 0.2, F16), rng.standard_normal((4, 5)).astype(F16)),
        "sparse_softmax_cross_entropy_with_logits": lambda: sparse_softmax_cross_entropy_with_logits(
            np.arange(4) % 5, rng.standard_normal((4, 5)).astype(F16)),
    }


@pytest.mark.parametrize("op", list(_f16_calls()))
def test_float16_under_numba_is_a_clear_error_at_the_op(op):
    call = _f16_calls()[op]
    with backend.backend("numba"):
        _one_line_error(TypeError, rf"{op.split(' ')[0]}.*: the numba backend computes in float32 or "
                                   rf"float64, got float16", call)
    with backend.backend("numpy"):      # the reference computes in float16
        out = call()
        assert (out[0] if isinstance(out, tuple) else out).dtype == F16


def test_float16_under_cupy_is_the_same_clear_error(monkeypatch):
    """cupy_gpu.py loaded over a stand-in cupy (numpy arrays; kernels must never launch):
    its twins are registered behind the same check."""
    stub = types.ModuleType("cupy")
    stub.__getattr__ = lambda name: getattr(np, name)

    class RawModule:
        def __init__(self, code, name_expressions):
            pass

        def get_function(self, name):
            raise AssertionError(f"{name} launched on float16")
    stub.RawModule = RawModule
    monkeypatch.setitem(sys.modules, "cupy", stub)
    monkeypatch.delitem(sys.modules, "tinybn.kernels.cupy_gpu", raising=False)
    monkeypatch.setattr(backend, "_registry", copy.deepcopy(backend._registry))
    monkeypatch.setattr(backend, "_loaded", set(backend._loaded))
    monkeypatch.setattr(backend, "_current", [backend.current_backend()])
    stand_in_arrays_on_device(monkeypatch)
    x = np.ones((2, 4, 4, 3), F16)
    try:
        with backend.backend("cupy"):
            _one_line_error(TypeError, "max_pool2d: the cupy backend computes in float32 or float64, got float16",
                            lambda: max_pool2d(x, 2, 2, "SAME"))
            # a 1x1 conv launches no im2col kernel, and is refused all the same
            _one_line_error(TypeError, "conv2d .*: the cupy backend computes in float32 or float64, got float16",
                            lambda: conv2d(x, np.ones((1, 1, 3, 2), F16), 1, "VALID"))
    finally:       # the module loaded over the stand-in must not outlive the test
        sys.modules.pop("tinybn.kernels.cupy_gpu", None)


# ---- an empty batch ----------------------------------------------------------------------

MODELS = [(name, builder, 24, 3) for name, builder in cifar10.MODELS.items()] + \
         [(name, builder, 28, 1) for name, builder in mnist.MODELS.items()]
HAS_BATCH_NORM = ["tutorial_bn", "bn", "cnn_bn", "fc-bn"]


@pytest.mark.parametrize("backend_name", ["numpy", "numba"])
@pytest.mark.parametrize("name, builder, size, channels", MODELS, ids=[m[0] for m in MODELS])
def test_model_on_an_empty_batch_gives_empty_logits(name, builder, size, channels, backend_name):
    """Inference mode: (0, 10) logits, and a backward pass gives an empty input gradient and
    zero parameter gradients of the parameters' shapes (a sum over no examples)."""
    model = builder(rng=np.random.default_rng(0)).eval()
    images = Tensor(np.zeros((0, size, size, channels), np.float32), requires_grad=True)
    with backend.backend(backend_name):
        logits = model(images)
        logits.backward(np.zeros(logits.shape, np.float32))
    assert logits.shape == (0, 10) and logits.dtype == np.float32
    assert images.grad.shape == images.shape
    for param in model.parameters():
        assert param.grad.shape == param.shape and not param.grad.any()


def test_model_without_batch_norm_trains_on_an_empty_batch():
    model = cifar10.tutorial(rng=np.random.default_rng(0)).train()
    assert model(Tensor(np.zeros((0, 24, 24, 3), np.float32))).shape == (0, 10)


@pytest.mark.parametrize("name", HAS_BATCH_NORM)
def test_batch_norm_in_training_refuses_an_empty_batch_and_keeps_its_statistics(name):
    builders = dict(cifar10.MODELS, **mnist.MODELS)
    size, channels = (24, 3) if name in cifar10.MODELS else (28, 1)
    model = builders[name](rng=np.random.default_rng(0)).train()
    before = {k: np.array(v) for k, v in model.state_dict().items()}
    empty = Tensor(np.zeros((0, size, size, channels), np.float32))
    _one_line_error(ValueError, "BatchNorm: training mode needs at least one example", lambda: model(empty))
    for key, value in model.state_dict().items():
        np.testing.assert_array_equal(value, before[key], err_msg=key)
    assert model.eval()(empty).shape == (0, 10)     # inference mode has its statistics


@pytest.mark.parametrize("renorm", [False, True])
def test_batch_norm_layer_in_training_refuses_an_empty_batch(renorm):
    layer = BatchNorm(3, renorm=renorm)
    before = {k: np.array(v) for k, v in layer.state_dict().items()}
    _one_line_error(ValueError, "BatchNorm: training mode needs at least one example",
                    lambda: layer(Tensor(np.zeros((0, 4, 4, 3), np.float32))))
    for key, value in layer.state_dict().items():      # renorm wrote NaN into them
        np.testing.assert_array_equal(value, before[key], err_msg=key)


def test_flatten_of_an_empty_batch():
    assert Flatten()(np.zeros((0, 6, 6, 64), np.float32)).shape == (0, 2304)


# ---- window arguments ----------------------------------------------------------------------

X = np.zeros((2, 7, 7, 3), np.float32)
W = np.zeros((3, 3, 3, 4), np.float32)


def _call(op, **bad):
    """op with good arguments except `bad`: strides, padding, dilations, ksize, filter shapes."""
    strides, padding = bad.get("strides", 1), bad.get("padding", "SAME")
    if op == "conv2d":
        return lambda: conv2d(X, np.zeros(bad.get("filters", W.shape), np.float32), strides, padding,
                              dilations=bad.get("dilations"))
    if op == "depthwise_conv2d":
        return lambda: depthwise_conv2d(X, np.zeros(bad.get("filter", (3, 3, 3, 2)), np.float32), strides,
                                        padding, dilations=bad.get("dilations"))
    if op == "separable_conv2d":
        return lambda: separable_conv2d(X, np.zeros(bad.get("depthwise_filter", (3, 3, 3, 2)), np.float32),
                                        np.zeros(bad.get("pointwise_filter", (1, 1, 6, 4)), np.float32),
                                        strides, padding, dilations=bad.get("dilations"))
    if op == "spatially_separable_conv2d":
        return lambda: spatially_separable_conv2d(X, np.zeros(bad.get("filters_kx1", (3, 1, 3, 2)), np.float32),
                                                  np.zeros(bad.get("filters_1xk", (1, 3, 2, 4)), np.float32),
                                                  strides, padding, dilations=bad.get("dilations"))
    pool = {"max_pool2d": max_pool2d, "avg_pool2d": avg_pool2d}[op]
    return lambda: pool(X, bad.get("ksize", 3), strides, padding)


CONVS = ["conv2d", "depthwise_conv2d", "separable_conv2d", "spatially_separable_conv2d"]
POOLS = ["max_pool2d", "avg_pool2d"]
NOT_INT = r"must be an int or a pair of ints, got "


@pytest.mark.parametrize("op", CONVS + POOLS)
@pytest.mark.parametrize("bad, error, match", [
    (dict(padding=[(1.7, 1), (1, 1)]), TypeError, r"explicit padding must hold ints .*got 1\.7 in"),
    (dict(padding=[[0, 0], [1, 1], [1, 2.0], [0, 0]]), TypeError, r"explicit padding must hold ints .*got 2\.0"),
    (dict(padding=[(True, 1), (1, 1)]), TypeError, r"explicit padding must hold ints .*got True"),
    (dict(strides=1.5), TypeError, "strides " + NOT_INT + r"1\.5"),
    (dict(strides=(1, 1.5)), TypeError, "strides " + NOT_INT + r"\(1, 1\.5\)"),
    (dict(strides=True), TypeError, "strides " + NOT_INT + "True"),
    (dict(strides=None), TypeError, "strides " + NOT_INT + "None"),
    (dict(strides="2"), TypeError, "strides " + NOT_INT + "'2'"),
    (dict(padding="FULL"), ValueError, "padding must be 'SAME', 'VALID' or explicit"),
])
def test_bad_window_arguments_name_the_op_argument_and_value(op, bad, error, match):
    _one_line_error(error, f"{op}: {match}", _call(op, **bad))


@pytest.mark.parametrize("op", CONVS)
def test_fractional_dilations_are_refused(op):
    _one_line_error(TypeError, f"{op}: dilations " + NOT_INT + r"1\.5", _call(op, dilations=1.5))


@pytest.mark.parametrize("op", POOLS)
@pytest.mark.parametrize("ksize, error, match", [
    (1.5, TypeError, "ksize " + NOT_INT + r"1\.5"),
    ((2, 0), ValueError, r"ksize must be positive, got \(2, 0\)"),
    (0, ValueError, "ksize must be positive, got 0"),
])
def test_bad_pool_ksize(op, ksize, error, match):
    _one_line_error(error, f"{op}: {match}", _call(op, ksize=ksize))


@pytest.mark.parametrize("op, arg, shape, match", [
    ("conv2d", "filters", (3, 3, 3, 0), "output channels O = 0"),
    ("conv2d", "filters", (0, 3, 3, 4), "kernel height KH = 0"),
    ("conv2d", "filters", (3, 0, 3, 4), "kernel width KW = 0"),
    ("depthwise_conv2d", "filter", (3, 3, 3, 0), "channel multiplier CM = 0"),
    ("depthwise_conv2d", "filter", (3, 0, 3, 1), "kernel width KW = 0"),
    ("separable_conv2d", "pointwise_filter", (1, 1, 6, 0), "output channels O = 0"),
    ("separable_conv2d", "depthwise_filter", (0, 3, 3, 2), "kernel height KH = 0"),
    ("spatially_separable_conv2d", "filters_kx1", (3, 1, 3, 0), "intermediate channels M = 0"),
    ("spatially_separable_conv2d", "filters_kx1", (0, 1, 3, 2), "kernel height KH = 0"),
    ("spatially_separable_conv2d", "filters_1xk", (1, 3, 2, 0), "output channels O = 0"),
])
def test_zero_sized_filters_are_refused(op, arg, shape, match):
    bad = {arg: shape}
    if op == "spatially_separable_conv2d" and "M = 0" in match:
        bad["filters_1xk"] = (1, 3, 0, 4)
    _one_line_error(ValueError, rf"{op}: {arg} \({', '.join(map(str, shape))},?\) has {match}", _call(op, **bad))


def test_zero_input_channels_are_refused():
    _one_line_error(ValueError, "conv2d: filters .* has input channels C = 0",
                    lambda: conv2d(np.zeros((2, 5, 5, 0), np.float32), np.zeros((3, 3, 0, 4), np.float32), 1, "SAME"))


@pytest.mark.parametrize("call, match", [
    (lambda: conv2d(X, W[0], 1, "SAME"), r"conv2d: filters must be rank 4 \(HWIO \(KH, KW, C, O\)\)"),
    (lambda: depthwise_conv2d(X, W[0], 1, "SAME"), r"depthwise_conv2d: filter must be rank 4 \(\(KH, KW, C, CM\)\)"),
])
def test_filters_of_the_wrong_rank_name_their_layout(call, match):
    _one_line_error(ValueError, match, call)


@pytest.mark.parametrize("make, error, match", [
    (lambda: Conv2D(3, 0, 5), ValueError, "Conv2D: filters must be a positive int, got 0"),
    (lambda: Conv2D(0, 8, 5), ValueError, "Conv2D: in_channels must be a positive int, got 0"),
    (lambda: Conv2D(3, 8, 5, strides=1.5), TypeError, "Conv2D: strides " + NOT_INT + r"1\.5"),
    (lambda: Conv2D(3, 8.0, 5), TypeError, r"Conv2D: filters must be a positive int, got 8\.0"),
    (lambda: SpatiallySeparableConv2D(3, 8, 3, intermediate_channels=0), ValueError,
     "SpatiallySeparableConv2D: intermediate_channels must be a positive int, got 0"),
    (lambda: Dense(10, 0), ValueError, "Dense: units must be a positive int, got 0"),
    (lambda: MaxPool2D(1.5), TypeError, "MaxPool2D: ksize " + NOT_INT + r"1\.5"),
    (lambda: AvgPool2D(2, strides=0), ValueError, "AvgPool2D: strides must be positive, got 0"),
])
def test_layers_refuse_bad_sizes_when_built(make, error, match):
    _one_line_error(error, match, make)
