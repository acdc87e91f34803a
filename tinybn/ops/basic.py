"""Elementwise arithmetic, matmul, shape ops, reductions, relu, bias_add, dropout,
the ops behind the Tensor operators.

Floor: ops; imports the core (function, tensor), backend and numpy.

Shapes: any; binary ops broadcast as numpy (and TF) do. The gradient of a
broadcast operand is summed back to that operand's shape (`sum_to`), which is
what TF's `_AddGrad` / `_MulGrad` do with `broadcast_gradient_args`.

    add/sub/mul/div    z = x op y                 dx, dy = summed back to shapes
    pow                z = x ** p (p a constant)  dx = p * x**(p-1) * gz
    matmul             Z = X @ Y  (..., M, K) @ (..., K, N)
                       dX = gZ @ Y^T,  dY = X^T @ gZ
    transpose          z = x.transpose(perm), perm a permutation of range(ndim), negative
                       axes counted from the end (as tf.transpose); dx = gz.transpose(argsort(perm))
    reduce_sum/mean    over `axis` (None = all), keepdims as tf.reduce_*
    reduce_max         dx goes to the maxima; ties share it equally (TF's _MaxGrad)
    relu               y = max(x, 0); dx = gz * (y > 0) (TF's ReluGrad: 0 at x == 0)
    bias_add           x (..., C) + b (C,); db = gz summed over all but the last axis
    dropout            tf.nn.dropout(x, rate): keep with probability 1-rate and
                       scale kept values by 1/(1-rate); dx = gz * mask * scale

The Tensor operators (x + y, x @ y, x[i], x.sum(), ...) are these ops, set on Tensor
by tinybn.ops when it is imported (ops/__init__.py).
"""
import numpy as np

from ..backend import array_module, dispatch, primitive
from ..function import Function


def sum_to(g, shape):
    """Sum `g` over the axes that broadcasting added or stretched, to get `shape`."""
    if g.shape == tuple(shape):
        return g
    lead = g.ndim - len(shape)
    axes = tuple(range(lead)) + tuple(i + lead for i, n in enumerate(shape) if n == 1 and g.shape[i + lead] != 1)
    # float64 accumulation: numpy sums over leading axes sequentially, TF uses trees
    g = g.sum(axis=axes, keepdims=True, dtype=_accumulator(g)).astype(g.dtype)
    return g.reshape(shape)


def _accumulator(a):
    return "float64" if a.dtype.kind == "f" and a.dtype.itemsize <= 8 else None


class Add(Function):
    def forward(self, x, y):
        self.shapes = (x.shape, y.shape)
        return x + y

    def backward(self, gz):
        return sum_to(gz, self.shapes[0]), sum_to(gz, self.shapes[1])


class Sub(Function):
    def forward(self, x, y):
        self.shapes = (x.shape, y.shape)
        return x - y

    def backward(self, gz):
        return sum_to(gz, self.shapes[0]), sum_to(-gz, self.shapes[1])


class Mul(Function):
    def forward(self, x, y):
        self.save_for_backward(x, y)
        return x * y

    def backward(self, gz):
        x, y = self.saved
        need_x, need_y = self.needs_input_grad
        return (sum_to(gz * y, x.shape) if need_x else None,
                sum_to(gz * x, y.shape) if need_y else None)


class Div(Function):
    def forward(self, x, y):
        self.save_for_backward(x, y)
        return x / y

    def backward(self, gz):
        x, y = self.saved
        # TF's _RealDivGrad order, gz * ((-x / y) / y): a broadcast y sums these terms, and
        # when they cancel, a different rounding of each term shows in the sum
        need_x, need_y = self.needs_input_grad
        return (sum_to(gz / y, x.shape) if need_x else None,
                sum_to(gz * ((-x / y) / y), y.shape) if need_y else None)


class Neg(Function):
    def forward(self, x):
        return -x

    def backward(self, gz):
        return -gz


class Pow(Function):
    def __init__(self, exponent):
        self.exponent = exponent

    def forward(self, x):
        self.save_for_backward(x)
        return x ** self.exponent

    def backward(self, gz):
        (x,) = self.saved
        p = self.exponent
        return gz * (p * x ** (p - 1))


class MatMul(Function):
    def forward(self, x, y):
        if x.ndim < 2 or y.ndim < 2:
            raise ValueError(f"matmul: both operands need rank >= 2, got a: {x.shape} and b: {y.shape}")
        if x.shape[-1] != y.shape[-2]:
            raise ValueError(f"matmul: inner dimensions differ: a: {x.shape} and b: {y.shape}")
        self.save_for_backward(x, y)
        return x @ y

    def backward(self, gz):
        x, y = self.saved
        need_x, need_y = self.needs_input_grad
        gx = sum_to(gz @ y.swapaxes(-1, -2), x.shape) if need_x else None
        gy = sum_to(x.swapaxes(-1, -2) @ gz, y.shape) if need_y else None
        return gx, gy


class Reshape(Function):
    def __init__(self, shape):
        self.shape = tuple(shape)

    def forward(self, x):
        self.in_shape = x.shape
        return x.reshape(self.shape)

    def backward(self, gz):
        return gz.reshape(self.in_shape)


def _permutation(perm, ndim):
    """perm with negative axes counted from the end, checked to be a permutation of range(ndim)."""
    if perm is None:
        return tuple(reversed(range(ndim)))      # tf.transpose's default: reverse the axes
    try:
        axes = tuple(perm)
    except TypeError:
        axes = None
    if axes is None or not all(isinstance(a, (int, np.integer)) and not isinstance(a, (bool, np.bool_))
                               for a in axes):
        raise ValueError(f"transpose: perm must be a sequence of ints, got {perm!r}")
    normalised = tuple(int(a) % ndim if -ndim <= a < ndim else None for a in axes)
    if None in normalised or sorted(normalised) != list(range(ndim)):
        raise ValueError(f"transpose: perm must be a permutation of range({ndim}) (negative axes count "
                         f"from the end) for an input of rank {ndim}, got {perm!r}")
    return normalised


class Transpose(Function):
    def __init__(self, axes=None):
        self.axes = axes

    def forward(self, x):
        # the inverse permutation must come from the normalised axes: argsort of (0, -1, 1)
        # is (1, 2, 0), not the inverse (0, 2, 1) of (0, 2, 1)
        self.perm = _permutation(self.axes, x.ndim)
        return x.transpose(self.perm)

    def backward(self, gz):
        return gz.transpose(tuple(np.argsort(self.perm)))


def _expand_reduced(g, in_shape, axis, keepdims):
    """Put back the reduced axes of g as size-1 axes so it broadcasts against the input."""
    if keepdims or axis is None:
        return g.reshape([1] * len(in_shape)) if axis is None else g
    axes = sorted(a % len(in_shape) for a in (axis if isinstance(axis, tuple) else (axis,)))
    shape = list(g.shape)
    for a in axes:
        shape.insert(a, 1)
    return g.reshape(shape)


def _axis(axis):
    return tuple(axis) if isinstance(axis, (list, tuple)) else axis


class Sum(Function):
    def __init__(self, axis=None, keepdims=False):
        self.axis, self.keepdims = _axis(axis), keepdims

    def forward(self, x):
        self.in_shape = x.shape
        return x.sum(axis=self.axis, keepdims=self.keepdims)

    def backward(self, gz):
        xp = array_module(gz)
        return xp.broadcast_to(_expand_reduced(gz, self.in_shape, self.axis, self.keepdims), self.in_shape).copy()


class Mean(Function):
    def __init__(self, axis=None, keepdims=False):
        self.axis, self.keepdims = _axis(axis), keepdims

    def forward(self, x):
        self.in_shape = x.shape
        y = x.mean(axis=self.axis, keepdims=self.keepdims)
        self.count = x.size // max(y.size, 1) if x.size else 1
        return y

    def backward(self, gz):
        xp = array_module(gz)
        g = _expand_reduced(gz, self.in_shape, self.axis, self.keepdims) / gz.dtype.type(self.count)
        return xp.broadcast_to(g, self.in_shape).copy()


class Max(Function):
    def __init__(self, axis=None, keepdims=False):
        self.axis, self.keepdims = _axis(axis), keepdims

    def forward(self, x):
        y = x.max(axis=self.axis, keepdims=self.keepdims)
        self.save_for_backward(x, y)
        return y

    def backward(self, gz):
        x, y = self.saved
        selected = (x == _expand_reduced(y, x.shape, self.axis, self.keepdims)).astype(x.dtype)
        share = selected.sum(axis=self.axis, keepdims=True)
        return selected / share * _expand_reduced(gz, x.shape, self.axis, self.keepdims)


class GetItem(Function):
    def __init__(self, index):
        self.index = index.data if hasattr(index, "creator") else index

    def forward(self, x):
        self.in_shape, self.in_dtype = x.shape, x.dtype
        # the index (an index array may be as large as x) is kept only in saved, which release() frees
        index, self.index = self.index, None
        self.save_for_backward(index)
        return x[index]

    def backward(self, gz):
        (index,) = self.saved
        xp = array_module(gz)
        gx = xp.zeros(self.in_shape, self.in_dtype)
        xp.add.at(gx, index, gz)    # repeated indices add up
        return gx


class Concat(Function):
    def __init__(self, axis):
        self.axis = axis

    def forward(self, *xs):
        xp = array_module(xs[0])
        self.sizes = [x.shape[self.axis] for x in xs]
        return xp.concatenate(xs, axis=self.axis)

    def backward(self, gz):
        xp = array_module(gz)
        cuts = np.cumsum(self.sizes)[:-1]
        return tuple(xp.split(gz, cuts, axis=self.axis))


# ---- relu's hot primitives (the numba backend's twins make one pass on both cores) ------

@primitive("relu")
def relu_forward(x):
    """max(x, 0): NaN passes through (with its sign), -0.0 gives 0.0, as TF's Relu. Subnormal
    inputs pass through too (TF's CPU kernels flush some of them to zero)."""
    return array_module(x).maximum(x, 0)


@primitive("relu_grad")
def relu_grad(gy, y):
    """gy * (y > 0), y relu's output: TF's ReluGrad is this product, not a select, so a NaN
    or infinite gy where y <= 0 gives NaN there, and a negative gy gives -0.0."""
    return gy * (y > 0)


class Relu(Function):
    def forward(self, x):
        y = dispatch("relu", x)
        self.save_for_backward(y)
        return y

    def backward(self, gz):
        (y,) = self.saved
        return dispatch("relu_grad", gz, y)


# ---- bias_add's hot primitives (the numba backend's twins run on both cores) ----------

@primitive("bias_add")
def bias_add_forward(x, b):
    """x (..., C) + b (C,)."""
    return x + b


@primitive("bias_add_grad")
def bias_add_grad(gy):
    """db (C,): gy summed over all but its last axis, in float64 (TF's BiasAddGrad)."""
    rows = gy.reshape(-1, gy.shape[-1])
    return rows.sum(axis=0, dtype=_accumulator(rows)).astype(gy.dtype)


class BiasAdd(Function):
    def forward(self, x, b):
        if b.ndim != 1 or x.ndim < 2 or x.shape[-1] != b.shape[0]:
            raise ValueError(f"bias_add: bias must be 1-D of size value.shape[-1]; got value: {x.shape}, bias: {b.shape}")
        return dispatch("bias_add", x, b)

    def backward(self, gz):
        return gz, dispatch("bias_add_grad", gz)


class Dropout(Function):
    def __init__(self, mask, scale):
        self.mask, self.scale = mask, scale

    def forward(self, x):
        # the mask (x's size) is kept only in saved, which release() frees
        mask, self.mask = self.mask, None
        self.save_for_backward(mask)
        return x * (mask * x.dtype.type(self.scale))

    def backward(self, gz):
        (mask,) = self.saved
        return gz * (mask * gz.dtype.type(self.scale))


# ---- lowercase wrappers, named like their TF twins ------------------------------

def add(x, y): return Add()(x, y)
def sub(x, y): return Sub()(x, y)
def mul(x, y): return Mul()(x, y)
def div(x, y): return Div()(x, y)
def neg(x): return Neg()(x)
def pow(x, exponent): return Pow(exponent)(x)  # noqa: A001  (tf.pow)
def matmul(a, b): return MatMul()(a, b)
def reshape(tensor, shape): return Reshape(shape)(tensor)
def transpose(a, perm=None): return Transpose(perm)(a)
def reduce_sum(input_tensor, axis=None, keepdims=False): return Sum(axis, keepdims)(input_tensor)
def reduce_mean(input_tensor, axis=None, keepdims=False): return Mean(axis, keepdims)(input_tensor)
def reduce_max(input_tensor, axis=None, keepdims=False): return Max(axis, keepdims)(input_tensor)
def get_item(x, index): return GetItem(index)(x)
def concat(values, axis): return Concat(axis)(*values)
def relu(features): return Relu()(features)
def bias_add(value, bias): return BiasAdd()(value, bias)


def dropout(x, rate, noise_shape=None, seed=None, rng=None):
    """tf.nn.dropout: zero each element with probability `rate`, scale the rest by 1/(1-rate).

    The mask is drawn from `rng` (a numpy Generator) or from default_rng(seed);
    `noise_shape` broadcasts one draw over several elements, as in TF.
    """
    if not 0 <= rate < 1:
        raise ValueError(f"dropout: rate must be in [0, 1), got {rate}")
    data = x.data if hasattr(x, "creator") else x
    rng = rng if rng is not None else np.random.default_rng(seed)
    shape = tuple(noise_shape) if noise_shape is not None else data.shape
    keep = rng.random(shape) >= rate
    mask = array_module(data).asarray(keep.astype(data.dtype))
    return Dropout(mask, 1.0 / (1.0 - rate))(x)

