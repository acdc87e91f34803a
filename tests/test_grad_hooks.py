"""Tensor.register_post_accumulate_grad_hook: when the hook runs, what it sees, how often.

The values are small integers in float64, so every gradient below is exact and is compared
with its closed form for equality.
"""
import numpy as np
import pytest

import tinybn  # noqa: F401  (installs the Tensor operators)
from tinybn import Tensor
from tinybn.function import Function


def ints(seed, *shape):
    return np.random.default_rng(seed).integers(-4, 5, shape).astype(np.float64)


def recorder(log, name):
    """A hook that appends (name, a copy of the gradient it sees) to log."""
    return lambda t: log.append((name, t.grad.copy()))


class FirstOnly(Function):
    """y = x; the second input is carried along but gets no gradient (backward returns None)."""

    def forward(self, x, v):
        return x.copy()

    def backward(self, gy):
        return gy, None


def test_a_leaf_used_three_times_is_hooked_once_with_the_sum_of_its_gradients():
    a, b, c = ints(0, 3, 4), ints(1, 3, 4), ints(2, 3, 4)
    w = Tensor(ints(3, 3, 4), requires_grad=True)
    log = []
    w.register_post_accumulate_grad_hook(recorder(log, "w"))
    ((w * a).sum() + (w * b).sum() * 2.0 + (w * w * c).sum()).backward()
    assert [name for name, _ in log] == ["w"]
    np.testing.assert_array_equal(log[0][1], a + 2 * b + 2 * w.data * c)
    np.testing.assert_array_equal(w.grad, log[0][1])


def test_a_chain_hooks_the_last_layer_first_while_earlier_ones_wait():
    x = Tensor(ints(4, 2, 3))
    w1, w2, w3 = (Tensor(ints(5 + i, 3, 3), requires_grad=True) for i in range(3))
    order, pending = [], {}
    for name, w in (("w1", w1), ("w2", w2), ("w3", w3)):
        def hook(t, name=name):
            order.append(name)
            pending[name] = [n for n, p in (("w1", w1), ("w2", w2), ("w3", w3)) if p.grad is None]
        w.register_post_accumulate_grad_hook(hook)
    (x @ w1 @ w2 @ w3).sum().backward()
    assert order == ["w3", "w2", "w1"]
    # each hook ran before backward reached the layers below it: the overlap data parallelism uses
    assert pending == {"w3": ["w1", "w2"], "w2": ["w1"], "w1": []}
    ones = np.ones((2, 3))
    np.testing.assert_array_equal(w1.grad, x.data.T @ ones @ w3.data.T @ w2.data.T)


def test_a_leaf_shared_by_two_layers_is_hooked_after_the_earlier_layer():
    x = Tensor(ints(8, 2, 3))
    w, v = Tensor(ints(9, 3, 3), requires_grad=True), Tensor(ints(10, 3, 3), requires_grad=True)
    log = []
    w.register_post_accumulate_grad_hook(recorder(log, "w"))
    v.register_post_accumulate_grad_hook(recorder(log, "v"))
    (x @ w @ v @ w).sum().backward()     # w is the first layer and the last
    assert [name for name, _ in log] == ["v", "w"]
    ones = np.ones((2, 3))
    xw = x.data @ w.data
    expected = (xw @ v.data).T @ ones + x.data.T @ ones @ w.data.T @ v.data.T
    np.testing.assert_array_equal(log[1][1], expected)


def test_every_hook_of_a_leaf_runs_in_registration_order_until_removed():
    w = Tensor(ints(11, 4), requires_grad=True)
    log = []
    first = w.register_post_accumulate_grad_hook(lambda t: log.append("first"))
    w.register_post_accumulate_grad_hook(lambda t: log.append("second"))
    (w * 3.0).sum().backward()
    first.remove()
    first.remove()                        # a second remove() is harmless
    (w * 3.0).sum().backward()
    assert log == ["first", "second", "second"]


def test_removing_the_last_hook_stops_the_calls():
    w = Tensor(ints(12, 4), requires_grad=True)
    log = []
    handle = w.register_post_accumulate_grad_hook(lambda t: log.append(1))
    handle.remove()
    (w * w).sum().backward()
    assert log == []
    np.testing.assert_array_equal(w.grad, 2 * w.data)


def test_a_leaf_outside_the_graph_or_given_no_gradient_is_not_hooked():
    w, outside, cut = (Tensor(ints(13 + i, 4), requires_grad=True) for i in range(3))
    log = []
    for name, t in (("w", w), ("outside", outside), ("cut", cut)):
        t.register_post_accumulate_grad_hook(recorder(log, name))
    FirstOnly()(w * 2.0, cut).sum().backward()
    assert [name for name, _ in log] == ["w"]
    assert outside.grad is None and cut.grad is None


@pytest.mark.parametrize("cut_first", [True, False])
def test_a_consumer_that_no_gradient_reaches_still_lets_the_hook_run_once(cut_first):
    a = ints(16, 4)
    w, v = Tensor(ints(17, 4), requires_grad=True), Tensor(ints(18, 4), requires_grad=True)
    log = []
    w.register_post_accumulate_grad_hook(recorder(log, "w"))
    # w * 5 is walked (it is behind the loss) but FirstOnly gives it no gradient; in one of the
    # two sums it comes last in the walk, after w * a has given w all of its gradient
    cut, used = FirstOnly()(v * 1.0, w * 5.0).sum(), (w * a).sum()
    (cut + used if cut_first else used + cut).backward()
    assert [name for name, _ in log] == ["w"]
    np.testing.assert_array_equal(log[0][1], a)


def test_backward_twice_through_a_retained_graph_hooks_twice_with_the_accumulated_gradient():
    a = ints(19, 4)
    w = Tensor(ints(20, 4), requires_grad=True)
    log = []
    w.register_post_accumulate_grad_hook(recorder(log, "w"))
    loss = (w * a).sum()
    loss.backward(retain_graph=True)
    loss.backward()
    assert [name for name, _ in log] == ["w", "w"]
    np.testing.assert_array_equal(log[0][1], a)
    np.testing.assert_array_equal(log[1][1], 2 * a)


def test_backward_on_the_leaf_itself_hooks_it():
    w = Tensor(ints(21, 4), requires_grad=True)
    log = []
    w.register_post_accumulate_grad_hook(recorder(log, "w"))
    w.backward(np.full(4, 3.0))
    assert [name for name, _ in log] == ["w"]
    np.testing.assert_array_equal(log[0][1], np.full(4, 3.0))


@pytest.mark.parametrize("make, error, words", [
    (lambda: Tensor(np.ones(3)), ValueError, "requires_grad=False"),
    (lambda: Tensor(np.ones(3), requires_grad=True) * 2.0, ValueError, "the output of"),
])
def test_only_a_leaf_that_requires_grad_takes_a_hook(make, error, words):
    with pytest.raises(error, match=words):
        make().register_post_accumulate_grad_hook(lambda t: None)


def test_a_hook_must_be_callable():
    with pytest.raises(TypeError, match="must be callable"):
        Tensor(np.ones(3), requires_grad=True).register_post_accumulate_grad_hook("not a function")
