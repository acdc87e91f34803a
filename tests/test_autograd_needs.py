"""What the autograd core knows before forward, and what it frees after backward.

- Function.needs_input_grad (one bool per input: recording, and the input requires a
  gradient) is set before forward runs, and the ops skip the work nobody will use: the
  labels' gradient of the dense cross-entropy, fused batch norm's statistics-output terms
  (backward gets None for them: materialize_grads = False, no look at the values), the
  gradients of inputs that need none.
- Whatever backward reads goes through save_for_backward, so release() frees it: no array
  is left on a Function after its backward (dropout's mask, GetItem's index included).
- Host and device arrays in one op are a one-line TypeError naming the op and its inputs
  (a stand-in cupy array, as tests/test_window_validation.py does).
"""
import gc
import sys
import types
import weakref

import numpy as np
import pytest

from tinybn import Tensor, no_grad, ops
from tinybn.function import Function
from tinybn.ops import basic, batchnorm, losses
from tinybn.ops.fused_batch_norm import FusedBatchNormInference, FusedBatchNormTraining

RNG = np.random.default_rng(10)


class Probe(Function):
    """Records what needs_input_grad said when forward ran."""

    def forward(self, *xs):
        self.seen = self.needs_input_grad
        return xs[0] * 1

    def backward(self, gy):
        return (gy,) + (None,) * (len(self.inputs) - 1)


def _x(*shape, grad=False):
    return Tensor(RNG.standard_normal(shape), requires_grad=grad)


@pytest.mark.parametrize("flags", [(True, False), (False, True), (True, True), (False, False)])
def test_needs_input_grad_is_known_before_forward(flags):
    fn = Probe()
    out = fn(*[_x(2, grad=f) for f in flags], np.ones(2))
    assert fn.seen == flags + (False,)
    assert out.requires_grad == any(flags)


def test_needs_input_grad_under_no_grad_is_all_false():
    fn = Probe()
    with no_grad():
        out = fn(_x(2, grad=True), _x(2, grad=True))
    assert fn.seen == (False, False) and not out.requires_grad and fn.saved is None


def _returned(monkeypatch, cls):
    """Record every gradient tuple cls.backward returns (and the output gradients it got)."""
    calls = []
    original = cls.backward

    def spy(self, *gys):
        grads = original(self, *gys)
        calls.append((gys, grads if isinstance(grads, tuple) else (grads,)))
        return grads
    monkeypatch.setattr(cls, "backward", spy)
    return calls


# ---- the labels' gradient of the cross-entropy ------------------------------------------

def _log_softmax_ref(z):
    s = z - z.max(axis=-1, keepdims=True)
    return s - np.log(np.exp(s).sum(axis=-1, keepdims=True))


def test_cross_entropy_skips_the_labels_gradient_of_data_labels(monkeypatch):
    logits = _x(4, 5, grad=True)
    labels = np.eye(5)[[0, 3, 1, 4]] * 0.9 + 0.02
    loss = ops.softmax_cross_entropy_with_logits(labels, logits)
    fn = loss.creator
    assert fn.saved[1] is None          # the logits are not kept for a gradient nobody wants

    def fail(*args):
        raise AssertionError("the labels' gradient was computed")
    monkeypatch.setattr(losses, "_log_softmax", fail)
    calls = _returned(monkeypatch, losses.SoftmaxCrossEntropyWithLogits)
    g = RNG.standard_normal(4)
    loss.backward(g)
    assert calls[0][1][0] is None
    softmax = np.exp(_log_softmax_ref(logits.data))
    np.testing.assert_allclose(logits.grad, g[:, None] * (softmax - labels), rtol=1e-12)


@pytest.mark.parametrize("axis", [-1, 0])
def test_cross_entropy_labels_gradient_when_asked(axis):
    logits, labels = _x(3, 4, grad=True), Tensor(RNG.uniform(0, 1, (3, 4)), requires_grad=True)
    g = RNG.standard_normal(4 if axis == 0 else 3)
    ops.softmax_cross_entropy_with_logits(labels, logits, axis=axis).backward(g)
    moved = np.moveaxis(logits.data, axis, -1)
    g_moved = g[:, None]
    expected = np.moveaxis(g_moved * -_log_softmax_ref(moved), -1, axis)
    np.testing.assert_allclose(labels.grad, expected, rtol=1e-12)


# ---- batch norm: statistics outputs and inputs that need no gradient ------------------------

def test_fused_training_gets_none_for_unused_statistics(monkeypatch):
    x, scale, offset = _x(6, 3, grad=True), _x(3, grad=True), _x(3, grad=True)
    calls = _returned(monkeypatch, FusedBatchNormTraining)
    any_calls = []
    monkeypatch.setattr(np, "any", lambda *a, **k: any_calls.append(a) or True)
    y, mean, var = ops.fused_batch_norm(x, scale, offset)
    dy = RNG.standard_normal(y.shape)
    y.backward(dy)
    (gy, gmean, gvar), _ = calls[0]
    assert gmean is None and gvar is None and not any_calls      # no test of zeros, no host sync
    xhat = (x.data - x.data.mean(0)) / np.sqrt(x.data.var(0) + 1e-3)
    np.testing.assert_allclose(scale.grad, (dy * xhat).sum(0), rtol=1e-12)


def test_fused_training_statistics_gradient_when_used(monkeypatch):
    x, scale, offset = _x(5, 2, grad=True), _x(2), _x(2)
    calls = _returned(monkeypatch, FusedBatchNormTraining)
    _, mean, var = ops.fused_batch_norm(x, scale, offset, bessel_correction=False)
    (mean.sum() + var.sum() * 2.0).backward()
    (gy, gmean, gvar), grads = calls[0]
    assert gy is None and gmean is not None and gvar is not None
    n = x.shape[0]
    np.testing.assert_allclose(x.grad, 1 / n + 2 * 2 * (x.data - x.data.mean(0)) / n, rtol=1e-12)


def test_fused_inference_computes_no_gradient_for_the_moving_statistics(monkeypatch):
    x, scale, offset = _x(4, 2, grad=True), _x(2, grad=True), _x(2, grad=True)
    mean, var = Tensor(RNG.standard_normal(2)), Tensor(RNG.uniform(0.5, 2, 2))
    calls = _returned(monkeypatch, FusedBatchNormInference)
    y, _, _ = ops.fused_batch_norm(x, scale, offset, mean, var, is_training=False)
    y.backward(np.ones(y.shape))
    grads = calls[0][1]
    assert grads[3] is None and grads[4] is None
    np.testing.assert_allclose(x.grad, np.broadcast_to(scale.data / np.sqrt(var.data + 1e-3), x.shape), rtol=1e-12)


def test_batch_normalization_computes_only_the_gradients_asked(monkeypatch):
    x = _x(3, 2, 2, 4, grad=True)
    mean, var, offset, scale = _x(4), Tensor(RNG.uniform(0.5, 2, 4)), _x(4, grad=True), _x(4)
    calls = _returned(monkeypatch, batchnorm.BatchNormalization)
    y = ops.batch_normalization(x, mean, var, offset, scale, 1e-3)
    dy = RNG.standard_normal(y.shape)
    y.backward(dy)
    grads = calls[0][1]
    assert [g is None for g in grads] == [False, True, True, False, True]
    np.testing.assert_allclose(x.grad, dy * scale.data / np.sqrt(var.data + 1e-3), rtol=1e-12)
    np.testing.assert_allclose(offset.grad, dy.sum((0, 1, 2)), rtol=1e-12)


@pytest.mark.parametrize("op, cls", [(basic.mul, basic.Mul), (basic.div, basic.Div), (basic.matmul, basic.MatMul)])
def test_binary_ops_skip_the_constant_operand(monkeypatch, op, cls):
    a, b = _x(3, 3, grad=True), Tensor(RNG.uniform(1, 2, (3, 3)))
    calls = _returned(monkeypatch, cls)
    op(a, b).backward(np.ones((3, 3)))
    assert calls[0][1][1] is None and calls[0][1][0] is not None


# ---- save_for_backward holds everything backward reads ------------------------------------

def _arrays_left(fn):
    """Arrays a Function still holds outside `inputs` (leaves, which their owners hold anyway)."""
    found = []
    for name, value in vars(fn).items():
        if name == "inputs":
            continue
        for v in (value if isinstance(value, (tuple, list)) else (value,)):
            if isinstance(v, np.ndarray) and v.ndim > 0:
                found.append(name)
    return found


OPS = {
    "dropout": lambda x: basic.dropout(x, 0.5, seed=1),
    "get_item (index array)": lambda x: basic.get_item(x, np.array([1, 0, 1])),
    "get_item (index tensor)": lambda x: basic.get_item(x, Tensor(np.array([2, 2]))),
    "mul": lambda x: x * x,
    "matmul": lambda x: x @ x.T,
    "reduce_max": lambda x: basic.reduce_max(x, axis=1),
    "relu": lambda x: basic.relu(x),
    "softmax": lambda x: ops.softmax(x),
    "cross_entropy": lambda x: ops.softmax_cross_entropy_with_logits(np.full(x.shape, 0.25), x),
    "sparse_cross_entropy": lambda x: ops.sparse_softmax_cross_entropy_with_logits(np.array([0, 1, 3]), x),
    "moments": lambda x: ops.moments(x, [0])[1],
    "batch_normalization": lambda x: ops.batch_normalization(x, 0.5 * x, x * x + 1.0, None, None, 1e-3),
    "fused_batch_norm": lambda x: ops.fused_batch_norm(x, np.ones(4), np.zeros(4))[0],
    "conv2d": lambda x: ops.conv2d(x.reshape(1, 3, 4, 1), np.ones((2, 2, 1, 2)), 1, "SAME"),
    "max_pool2d": lambda x: ops.max_pool2d(x.reshape(1, 3, 4, 1), 2, 1, "SAME"),
    "lrn": lambda x: ops.lrn(x.reshape(1, 1, 3, 4), 1),
}


@pytest.mark.parametrize("name", OPS)
def test_backward_leaves_no_array_on_the_function(name):
    x = _x(3, 4, grad=True)
    y = OPS[name](x)
    fn = y.creator
    assert fn.saved, f"{name} saved nothing for backward"
    y.backward(np.ones(y.shape))
    assert fn.released and fn.saved is None
    assert _arrays_left(fn) == [], f"{name} keeps {_arrays_left(fn)} outside save_for_backward"


@pytest.mark.parametrize("name, make", [
    ("dropout mask", lambda x: basic.dropout(x, 0.5, seed=3)),
    ("get_item index", lambda x: basic.get_item(x, np.arange(3)[::-1].copy())),
])
def test_release_frees_what_backward_needed(name, make):
    x = _x(3, 4, grad=True)
    y = make(x)
    (kept,) = y.creator.saved
    ref = weakref.ref(kept)
    del kept
    y.backward(np.ones(y.shape))
    gc.collect()
    assert ref() is None, f"the {name} outlived backward"


def test_dropout_and_get_item_gradients():
    x = _x(4, 5, grad=True)
    y = basic.dropout(x, 0.4, seed=7)
    mask = y.creator.saved[0]
    y.backward(np.ones(x.shape))
    np.testing.assert_allclose(x.grad, mask / 0.6, rtol=1e-12)
    x.grad = None
    y = basic.get_item(x, np.array([3, 3, 0]))
    y.backward(np.ones(y.shape))
    expected = np.zeros(x.shape)
    expected[3], expected[0] = 2, 1
    np.testing.assert_array_equal(x.grad, expected)


# ---- host and device arrays in one op ----------------------------------------------------

class _DeviceArray(np.ndarray):
    """An array that says it is cupy's (array_module reads the type's module)."""


_DeviceArray.__module__ = "cupy._core.core"


@pytest.fixture
def stand_in_cupy(monkeypatch):
    stub = types.ModuleType("cupy")
    stub.ndarray = _DeviceArray
    monkeypatch.setitem(sys.modules, "cupy", stub)
    return lambda a: np.asarray(a).view(_DeviceArray)


@pytest.mark.parametrize("op, expected", [
    (basic.add, "Add: inputs on different devices (x numpy (2, 2), y cupy (2, 2))"),
    (basic.matmul, "MatMul: inputs on different devices (x numpy (2, 2), y cupy (2, 2))"),
    (lambda a, b: ops.softmax_cross_entropy_with_logits(a, b),
     "SoftmaxCrossEntropyWithLogits: inputs on different devices (labels numpy (2, 2), logits cupy (2, 2))"),
    (lambda a, b: ops.conv2d(a.reshape(1, 2, 2, 1), b.reshape(2, 2, 1, 1), 1, "VALID"),
     "conv2d: inputs on different devices (x numpy (1, 2, 2, 1), w cupy (2, 2, 1, 1))"),
    (lambda a, b: ops.concat([a, a, b], 0),
     "Concat: inputs on different devices (xs[0] numpy (2, 2), xs[1] numpy (2, 2), xs[2] cupy (2, 2))"),
])
def test_host_and_device_inputs_are_one_clear_error(stand_in_cupy, op, expected):
    host, device = np.ones((2, 2)), stand_in_cupy(np.ones((2, 2)))
    with pytest.raises(TypeError) as info:
        op(Tensor(host, requires_grad=True), Tensor(device))
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(expected + "; move them to one"), message


def test_inputs_of_one_device_pass(stand_in_cupy):
    a, b = stand_in_cupy(np.full(3, 2.0)), stand_in_cupy(np.full(3, 3.0))
    np.testing.assert_array_equal(np.asarray(basic.mul(a, b).data), np.full(3, 6.0))
