"""tinybn.ops.basic: transpose with negative axes in perm (forward, gradient, bad perms)."""
import re

import numpy as np
import pytest

from tinybn import Tensor
from tinybn.gradcheck import check_gradients
from tinybn.ops import basic


def _normalised(perm, ndim):
    return tuple(a % ndim for a in perm)


@pytest.mark.parametrize("shape, perm", [
    ((3, 3, 3), (0, -1, 1)),       # equal dims: the old inverse (argsort of the raw perm) was silently wrong
    ((2, 3, 4), (0, -1, 1)),       # unequal dims: the old inverse gave a gradient of the wrong shape
    ((2, 3, 4), (-1, -3, -2)),
    ((2, 3, 4, 5), (-2, 0, -1, 1)),
    ((4, 5), (-1, 0)),
])
def test_transpose_negative_perm_gradient(shape, perm):
    rng = np.random.default_rng(0)
    x = rng.standard_normal(shape)
    upstream = rng.standard_normal(tuple(shape[a] for a in perm))
    t = Tensor(x, requires_grad=True)
    y = basic.transpose(t, perm)
    np.testing.assert_array_equal(y.numpy(), np.transpose(x, _normalised(perm, len(shape))))
    y.backward(upstream)
    # closed form: the gradient is the upstream moved back, y[..i_perm[k]..] = x[..i_k..]
    expected = np.zeros(shape)
    np.moveaxis(expected, _normalised(perm, len(shape)), range(len(shape)))[...] = upstream
    np.testing.assert_array_equal(t.grad, expected)
    check_gradients(lambda a: basic.transpose(a, perm), x)       # float64 finite differences


@pytest.mark.parametrize("perm, problem", [
    ((0, 0, 1), "permutation of range(3)"),
    ((0, 1), "permutation of range(3)"),
    ((0, 1, 2, 3), "permutation of range(3)"),
    ((0, 1, 3), "permutation of range(3)"),
    ((0, -4, 1), "permutation of range(3)"),
    ((0, 2, -1), "permutation of range(3)"),     # -1 is axis 2 again
    ((0, 1.0, 2), "sequence of ints"),
    ((True, False, 2), "sequence of ints"),
    (3, "sequence of ints"),
])
def test_transpose_refuses_what_is_not_a_permutation(perm, problem):
    with pytest.raises(ValueError, match=r"^transpose: perm must be a " + re.escape(problem)):
        basic.transpose(np.zeros((2, 3, 4)), perm)


def test_transpose_default_perm_reverses_axes():
    x = np.arange(24.0).reshape(2, 3, 4)
    t = Tensor(x, requires_grad=True)
    y = basic.transpose(t)
    np.testing.assert_array_equal(y.numpy(), x.T)
    y.backward(np.ones((4, 3, 2)))
    np.testing.assert_array_equal(t.grad, np.ones((2, 3, 4)))
