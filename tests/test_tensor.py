"""Autograd engine and basic ops: finite differences, closed forms, and the graph rules."""
import numpy as np
import pytest
from hypothesis import given, strategies as st

import tinybn
from tinybn import Tensor, no_grad
from tinybn.gradcheck import check_gradients
from tinybn.ops import basic


def rand(rng, *shape):
    return rng.standard_normal(shape)


shapes = st.lists(st.integers(1, 4), min_size=1, max_size=3).map(tuple)


@st.composite
def broadcast_pair(draw):
    shape = draw(shapes)
    other = tuple(n if draw(st.booleans()) else 1 for n in shape)
    drop = draw(st.integers(0, len(other) - 1))
    return shape, other[drop:]


@given(broadcast_pair(), st.sampled_from(["add", "sub", "mul", "div"]), st.booleans())
def test_arithmetic_broadcast_gradients(pair, op, swap):
    rng = np.random.default_rng(0)
    a, b = rand(rng, *pair[0]), rand(rng, *pair[1])
    if op == "div":
        b = np.sign(b) * (np.abs(b) + 0.5)     # keep away from 0
    if swap and op != "div":
        a, b = b, a
    fn = getattr(basic, op)
    check_gradients(fn, a, b)


@given(shapes, st.sampled_from([2, 3, 0.5, -1.5]))
def test_pow_gradient(shape, p):
    x = np.abs(np.random.default_rng(1).standard_normal(shape)) + 0.5
    check_gradients(lambda t: t ** p, x)


@given(st.integers(1, 4), st.integers(1, 4), st.integers(1, 4), st.sampled_from([(), (2,), (3, 1)]))
def test_matmul_gradient(m, k, n, batch):
    rng = np.random.default_rng(2)
    a = rand(rng, *batch, m, k)
    b = rand(rng, k, n)
    check_gradients(lambda x, y: x @ y, a, b)


@given(shapes, st.data())
def test_reduction_gradients(shape, data):
    x = np.random.default_rng(3).standard_normal(shape)
    axis = data.draw(st.sampled_from([None] + list(range(len(shape))) + [tuple(range(len(shape)))]))
    keepdims = data.draw(st.booleans())
    check_gradients(lambda t: t.sum(axis, keepdims), x)
    check_gradients(lambda t: t.mean(axis, keepdims), x)
    check_gradients(lambda t: t.max(axis, keepdims), x)   # distinct values: no ties


def test_reduce_max_ties_share_the_gradient():
    x = Tensor(np.array([[1.0, 3.0, 3.0], [2.0, 2.0, 2.0]]), requires_grad=True)
    x.max(axis=1).backward(np.array([1.0, 3.0]))
    np.testing.assert_array_equal(x.grad, [[0, 0.5, 0.5], [1, 1, 1]])


@given(shapes)
def test_shape_op_gradients(shape):
    x = np.random.default_rng(4).standard_normal(shape)
    check_gradients(lambda t: t.reshape(-1), x)
    check_gradients(lambda t: t.transpose(), x)
    perm = tuple(reversed(range(len(shape))))
    check_gradients(lambda t: basic.transpose(t, perm) * 2.0, x)


def test_indexing_and_concat_gradients():
    rng = np.random.default_rng(5)
    x = rand(rng, 4, 3)
    check_gradients(lambda t: t[1:3, ::2], x)
    check_gradients(lambda t: t[np.array([0, 2, 2, 3])], x)     # repeated rows add up
    check_gradients(lambda a, b: basic.concat([a, b, a], axis=1), x, rand(rng, 4, 2))


def test_relu_bias_add_gradients():
    rng = np.random.default_rng(6)
    x = rand(rng, 3, 4, 5)
    x[np.abs(x) < 1e-3] = 0.5     # finite differences across the kink are meaningless
    check_gradients(basic.relu, x)
    check_gradients(basic.bias_add, x, rand(rng, 5))


def test_relu_gradient_is_zero_at_zero():
    x = Tensor(np.array([-1.0, 0.0, 2.0]), requires_grad=True)
    basic.relu(x).backward(np.ones(3))
    np.testing.assert_array_equal(x.grad, [0, 0, 1])


def test_dropout_scales_kept_values_and_routes_gradient():
    x = Tensor(np.ones((200, 50)), requires_grad=True)
    y = basic.dropout(x, rate=0.25, seed=7)
    kept = y.data != 0
    np.testing.assert_allclose(y.data[kept], 1 / 0.75)
    assert abs(kept.mean() - 0.75) < 0.02
    y.backward(np.full(x.shape, 2.0))
    np.testing.assert_allclose(x.grad, np.where(kept, 2 / 0.75, 0.0))
    with pytest.raises(ValueError, match="rate"):
        basic.dropout(x, rate=1.0)


def test_gradients_accumulate_across_backward_calls():
    x = Tensor(np.array([1.0, 2.0]), requires_grad=True)
    (x * x).sum().backward()
    (x * 3.0).sum().backward()
    np.testing.assert_array_equal(x.grad, [2 + 3, 4 + 3])


def test_shared_subgraph_gets_both_paths():
    x = Tensor(np.array(3.0), requires_grad=True)
    y = x * x
    z = y * y + y           # dz/dx = (2y + 1) * 2x = 19 * 6
    z.backward()
    assert x.grad == pytest.approx(114.0)


def test_deep_graph_has_no_recursion_limit():
    x = Tensor(np.array(1.0), requires_grad=True)
    y = x
    for _ in range(20000):
        y = y * 1.0001
    y.backward()
    assert x.grad == pytest.approx(1.0001 ** 20000, rel=1e-9)


def test_second_backward_through_freed_graph_is_an_error():
    x = Tensor(np.array([1.0, 2.0]), requires_grad=True)
    y = (x * x).sum()
    y.backward()
    with pytest.raises(RuntimeError, match="second time"):
        y.backward()
    z = (x * x).sum()
    x.grad = None
    z.backward(retain_graph=True)
    z.backward()
    np.testing.assert_array_equal(x.grad, [4.0, 8.0])


def test_graph_frees_intermediate_arrays_backward_does_not_need():
    """Add's backward needs none of its inputs and Relu's only its output: the array of
    h = x + 1 is freed once the caller drops h, and the gradient is still right."""
    import gc
    import weakref
    x = Tensor(np.array([-2.0, -0.5, 0.5, 2.0]), requires_grad=True)
    h = x + 1.0
    y = basic.relu(h) * 3.0
    freed = weakref.ref(h.data)
    del h
    gc.collect()
    assert freed() is None
    y.backward(np.ones(4))
    np.testing.assert_array_equal(x.grad, [0.0, 3.0, 3.0, 3.0])


def test_multi_output_function_routes_each_gradient_to_its_output():
    x = Tensor(np.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]), requires_grad=True)
    mean, var = tinybn.ops.moments(x, axes=[0])          # one Function, two outputs
    (mean * 2.0 + var * 10.0).sum().backward()
    # d mean/dx = 1/2; d var/dx = (x - mean) for N = 2 (population variance: 2 (x - mean) / N)
    np.testing.assert_allclose(x.grad, 2.0 * 0.5 + 10.0 * (x.data - x.data.mean(axis=0)), rtol=1e-12)


def test_backward_seed_rules():
    x = Tensor(np.ones((2, 3)), requires_grad=True)
    y = x * 2.0
    with pytest.raises(RuntimeError, match="scalar"):
        y.backward()
    with pytest.raises(ValueError, match="shape"):
        y.backward(np.ones(3))
    y.backward(np.full((2, 3), 0.5))
    np.testing.assert_array_equal(x.grad, np.ones((2, 3)))


def test_no_grad_records_nothing():
    x = Tensor(np.ones(3), requires_grad=True)
    with no_grad():
        y = x * 2.0
    assert not y.requires_grad and y.creator is None
    with pytest.raises(RuntimeError, match="does not require grad"):
        y.sum().backward()


def test_dtypes_float32_default_and_float64_kept():
    assert Tensor([1.0, 2.0]).dtype == np.float32
    assert Tensor(2.5).dtype == np.float32
    assert (Tensor([1.0]) * 2.0).dtype == np.float32
    assert (Tensor(np.ones(2)) * 2.0).dtype == np.float64
    assert (2.0 - Tensor(np.ones(2, np.float32))).dtype == np.float32
    assert Tensor(np.array([1, 2])).dtype.kind == "i"
    with pytest.raises(ValueError, match="floating-point"):
        Tensor(np.array([1, 2]), requires_grad=True)


def test_ops_accept_arrays_and_tensors():
    a = np.ones((2, 2), np.float32)
    out = basic.matmul(a, Tensor(a))
    assert isinstance(out, Tensor)
    np.testing.assert_array_equal(out.numpy(), 2 * a)
    np.testing.assert_array_equal((np.float32(3) * Tensor(a)).numpy(), 3 * a)


def test_matmul_and_bias_add_bad_shapes():
    with pytest.raises(ValueError, match="inner dimensions"):
        basic.matmul(np.ones((2, 3)), np.ones((2, 3)))
    with pytest.raises(ValueError, match="bias"):
        basic.bias_add(np.ones((2, 3)), np.ones(4))


def test_public_api():
    assert tinybn.Tensor is Tensor
    assert tinybn.ops.relu is basic.relu
