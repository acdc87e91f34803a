"""relu's primitives (tinybn/ops/basic.py) and their numba twins (kernels/numba_elementwise.py).

The twins must equal the reference bit for bit (the same comparison and product per
element), on arrays below and above the size where they leave numpy's expression for the
parallel kernels; both must give TF's Relu and ReluGrad on NaN, infinities and signed
zeros; and the op's gradient, through the twins, must equal float64 finite differences.
"""
import numpy as np
import pytest
import tensorflow as tf

import tinybn.backend as backend
from tinybn import Tensor
from tinybn.gradcheck import check_gradients
from tinybn.kernels import numba_elementwise
from tinybn.ops.basic import relu

# inf * 0 and NaN * 0 in the gradients are meant: numpy's warning about them is noise here
pytestmark = pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")

_previous = backend.current_backend()
backend.use_backend("numba")      # loads and registers the kernels; the choice itself is put back
backend.use_backend(_previous)

DTYPES = (np.float32, np.float64)
BIG = numba_elementwise._PARALLEL_MIN
SHAPES = [(3, 5), (2, 3, 4, 7), (128, 12, 12, 64), (BIG + 13,)]    # the last two take the kernels
SPECIAL = [np.nan, -np.nan, np.inf, -np.inf, 0.0, -0.0, 1.5, -2.0, 3e-38, -3e-38]


def bits(a):
    return a.view(f"u{a.itemsize}")


def relu_args(name, rng, dtype, shape):
    """x (or y = relu(x)) with specials at fixed strides; relu_grad gets gy with them too."""
    x = rng.standard_normal(shape).astype(dtype)
    for k, value in enumerate(SPECIAL):
        x.flat[k::len(SPECIAL) + 3] = value
    if name == "relu":
        return (x,)
    gy = rng.standard_normal(shape).astype(dtype)
    gy.flat[1::5] = np.asarray(SPECIAL[:4] + [-0.0, -1.0], dtype)[np.arange(gy.flat[1::5].size) % 6]
    return (gy, np.maximum(x, 0))


def twin_and_reference(name, *args):
    return backend.implementation(name, "numba")(*args), backend.implementation(name, "numpy")(*args)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.__name__)
@pytest.mark.parametrize("name", ["relu", "relu_grad"])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_relu_twins_equal_reference_bit_for_bit(name, dtype, shape):
    args = relu_args(name, np.random.default_rng(len(shape)), dtype, shape)
    ours, ref = twin_and_reference(name, *args)
    assert ours.shape == ref.shape == shape and ours.dtype == ref.dtype == dtype
    assert np.array_equal(bits(ours), bits(ref))


@pytest.mark.parametrize("name", ["relu", "relu_grad"])
def test_relu_twins_on_views(name):
    """A strided view (every other channel) gives its copy's result."""
    args = relu_args(name, np.random.default_rng(2), np.float32, (64, 32, 32, 2))
    views = tuple(a[..., ::2] for a in args)
    assert not views[0].flags.c_contiguous and views[0].size >= BIG
    ours, ref = twin_and_reference(name, *views)
    assert np.array_equal(bits(ours), bits(ref))
    assert np.array_equal(bits(ours), bits(backend.implementation(name, "numpy")(*[v.copy() for v in views])))


def _tf_relu_and_grad(x, gy):
    xt = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(xt)
        y = tf.nn.relu(xt)
    return y.numpy(), tape.gradient(y, xt, output_gradients=tf.constant(gy)).numpy()


def assert_same_floats(ours, expected):
    """Equal bits where expected is a number; NaN where it is NaN."""
    nan = np.isnan(expected)
    np.testing.assert_array_equal(np.isnan(ours), nan)
    assert np.array_equal(bits(ours)[~nan], bits(expected)[~nan])


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.__name__)
@pytest.mark.parametrize("size", [len(SPECIAL) ** 2, BIG + 100], ids=["numpy", "kernel"])
def test_relu_specials_equal_tf(dtype, size):
    """Every pair (x, gy) of specials: relu(NaN) is NaN (-NaN keeps its sign bit), relu(-0.0) is
    0.0; the gradient is gy * (y > 0), so NaN or inf gy at y <= 0 is NaN, and -1 there is -0.0.
    (Subnormals left out: TF's CPU kernels flush some of them to zero, numpy keeps them.)"""
    values = np.asarray(SPECIAL + [-1.0], dtype)
    k = np.arange(size)
    x, gy = values[k % len(values)], values[(k // len(values)) % len(values)]
    y_tf, g_tf = _tf_relu_and_grad(x, gy)
    for impl in ("numba", "numpy"):
        y = backend.implementation("relu", impl)(x)
        assert_same_floats(y, y_tf)
        assert np.array_equal(np.signbit(y), np.signbit(y_tf))       # -NaN too
        assert_same_floats(backend.implementation("relu_grad", impl)(gy, y), g_tf)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.__name__)
def test_relu_gradient_under_numba_equals_finite_differences(dtype):
    """relu is elementwise, so one central difference over every element at once gives each
    element's derivative: (relu(x + h) - relu(x - h)) / 2h in float64, x kept away from the kink."""
    rng = np.random.default_rng(4)
    x = rng.standard_normal((2, 16, 16, 130)).astype(dtype)
    x = np.where(np.abs(x) < 1e-2, dtype(0.5), x)
    gy = rng.standard_normal(x.shape).astype(dtype)
    with backend.backend("numba"):
        t = Tensor(x.copy(), requires_grad=True)
        out = relu(t)
        out.backward(gy)
    h = 1e-6
    wide = x.astype(np.float64)
    numeric = (np.maximum(wide + h, 0) - np.maximum(wide - h, 0)) / (2 * h) * gy.astype(np.float64)
    np.testing.assert_allclose(t.grad, numeric, rtol=1e-6, atol=1e-6)
    assert np.array_equal(out.data, np.maximum(x, 0)) and t.grad.dtype == dtype


@pytest.mark.parametrize("name", ["numpy", "numba"])
def test_relu_gradcheck(name):
    x = np.random.default_rng(6).standard_normal((3, 4, 5))
    x = np.where(np.abs(x) < 1e-3, 0.5, x)
    with backend.backend(name):
        check_gradients(relu, x)


def test_relu_plain_python_kernels_equal_reference(monkeypatch):
    """The functions the JIT compiles, run as Python, on a size that takes the kernel path."""
    monkeypatch.setattr(numba_elementwise, "_relu_kernel", numba_elementwise._relu_plain)
    monkeypatch.setattr(numba_elementwise, "_relu_grad_kernel", numba_elementwise._relu_grad_plain)
    for name in ("relu", "relu_grad"):
        args = relu_args(name, np.random.default_rng(9), np.float32, (BIG,))
        ours, ref = twin_and_reference(name, *args)
        assert np.array_equal(bits(ours), bits(ref))


def test_relu_of_integers_and_float16_under_numba():
    """Integers take the reference's expression; float16 is the numba backend's one-line TypeError."""
    ints = np.arange(-BIG, BIG, dtype=np.int32)
    np.testing.assert_array_equal(backend.implementation("relu", "numba")(ints), np.maximum(ints, 0))
    with pytest.raises(TypeError, match=r"^relu: the numba backend computes in float32 or float64, got float16"):
        backend.implementation("relu", "numba")(np.ones(4, np.float16))
