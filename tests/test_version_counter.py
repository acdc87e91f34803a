"""Version counters: a graph whose saved parameters were changed in place refuses to backward.

The optimizers, ExponentialMovingAverage.swap and load_state_dict change parameter
values after a forward pass may have saved them; a second backward through a
retained graph would then differentiate with the new weights (a gradient of no
function at all). The reference for the gradients that do work is the first
backward itself, and a fresh forward pass.
"""
import numpy as np
import pytest

from tinybn import Tensor, ops
from tinybn.nn import layers
from tinybn.optim import Adam, ExponentialMovingAverage, GradientDescent, Momentum


def small_model():
    rng = np.random.default_rng(0)
    return layers.Sequential(("conv1", layers.Conv2D(2, 3, 3, rng=rng)), layers.ReLU(), layers.Flatten(),
                             ("fc", layers.Dense(4 * 4 * 3, 2, rng=rng)))


def loss_of(model):
    x = Tensor(np.random.default_rng(1).standard_normal((2, 4, 4, 2)).astype(np.float32))
    return ops.reduce_sum(ops.sparse_softmax_cross_entropy_with_logits(np.array([0, 1]), model(x)))


def grads(model):
    return {n: p.grad.copy() for n, p in model.named_parameters()}


@pytest.mark.parametrize("make", [lambda named: GradientDescent(named, 0.1), lambda named: Momentum(named, 0.1, 0.9),
                                  lambda named: Adam(named)], ids=["sgd", "momentum", "adam"])
def test_retained_graph_after_an_optimizer_step_is_refused(make):
    model = small_model()
    opt = make(list(model.named_parameters()))
    loss = loss_of(model)
    loss.backward(retain_graph=True)
    first = grads(model)
    model.zero_grad()
    loss.backward(retain_graph=True)      # nothing changed: the same gradients again
    for name, g in grads(model).items():
        np.testing.assert_array_equal(g, first[name], err_msg=name)

    opt.step()
    model.zero_grad()
    name = type(opt).__name__
    with pytest.raises(RuntimeError, match=rf"input 1 \('(fc|conv1)/kernel', shape \(\d+, \d+.*\) was modified "
                                           rf"in place by {name}\.step\(\) after the forward pass.*run the forward"):
        loss.backward()
    assert all(p.grad is None for p in model.parameters())     # refused before anything was accumulated
    # a new forward pass records the new versions and differentiates the stepped weights
    loss_of(model).backward()
    assert all(p.grad is not None for p in model.parameters())


def test_step_swap_load_and_detach_each_refuse_and_name_the_op():
    model = small_model()
    named = list(model.named_parameters())
    kernel = dict(named)["fc/kernel"]

    ema = ExponentialMovingAverage(0.5)
    ema.apply(named)
    loss = loss_of(model)
    with ema.average_weights():
        with pytest.raises(RuntimeError, match=r"modified in place by ExponentialMovingAverage\.swap\(\)"):
            loss.backward(retain_graph=True)

    loss = loss_of(model)
    model.load_state_dict(model.state_dict())
    with pytest.raises(RuntimeError, match=r"by load_state_dict into Sequential after the forward pass"):
        loss.backward(retain_graph=True)

    # a detached tensor shares the parameter's counter (and its array)
    x = Tensor(np.ones((1, 48), np.float32), requires_grad=True)
    y = ops.reduce_sum(ops.matmul(x, kernel.detach()))
    kernel.grad = np.ones_like(kernel.data)
    GradientDescent([("fc/kernel", kernel)], 0.1).step()
    with pytest.raises(RuntimeError, match=r"MatMul's input 1 \('fc/kernel', shape \(48, 2\)\) was modified"):
        y.backward()


def test_ops_that_saved_no_parameter_array_still_backward():
    # add keeps no operand: its gradient does not depend on w, so a step in between is harmless
    w = Tensor(np.ones(3), requires_grad=True)
    x = Tensor(np.arange(3.0), requires_grad=True)
    y = ops.reduce_sum(ops.add(x, w))
    y.backward(retain_graph=True)
    GradientDescent([w], 0.1).step()
    x.grad = None
    y.backward()
    np.testing.assert_array_equal(x.grad, np.ones(3))
