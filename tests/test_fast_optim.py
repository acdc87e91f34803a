"""The fast CIFAR recipe's optimizer: tinybn.optim.SGD (PyTorch's form) in closed form (the first
Nesterov step; two steps with parameter groups, L2 decay into the momentum, an lr_lambda schedule
and a parameter without a gradient), airbench's triangular schedule, state and bad input.
Against Keras's SGD over 6 steps (groups, Nesterov, plain momentum, none; float32 and float64):
crosscheck/test_tf_fast_recipe.py."""
import numpy as np
import pytest

from tinybn import optim
from tinybn.nn.module import Parameter


def test_first_nesterov_step_closed_form():
    """buf = g' = g + wd var; var - lr (g' + m g') = var - lr (1 + m) (g + wd var)."""
    var, g = np.array([1.0, -2.0, 3.0]), np.array([0.5, 0.25, -1.0])
    p = Parameter(var.copy())
    p.grad = g.copy()
    optim.SGD([p], lr=0.1, momentum=0.85, weight_decay=0.01, nesterov=True).step()
    np.testing.assert_allclose(p.data, var - 0.1 * 1.85 * (g + 0.01 * var), rtol=1e-15)


def test_two_steps_closed_form_with_groups_and_schedule():
    """Per group lr_k = lr * lambda(k), g'_k = g_k + wd var_k, buf_k = m buf_{k-1} + g'_k,
    var_{k+1} = var_k - lr_k (g'_k + m buf_k); a parameter without a gradient is left alone."""
    a, b, frozen = Parameter(np.array([1.0, -1.0])), Parameter(np.array([2.0])), Parameter(np.array([5.0]))
    opt = optim.SGD([{"params": [a, frozen], "lr": 0.1, "weight_decay": 0.01}, {"params": [b], "lr": 2.0}],
                    lr=0.5, momentum=0.9, nesterov=True, lr_lambda=lambda k: [1.0, 0.5][k])
    grads = [(np.array([0.3, 0.2]), np.array([-1.0])), (np.array([-0.1, 0.4]), np.array([0.5]))]
    var_a, var_b, buf_a, buf_b = a.data.copy(), b.data.copy(), 0.0, 0.0
    for k, (ga, gb) in enumerate(grads):
        a.grad, b.grad, frozen.grad = ga.copy(), gb.copy(), None
        opt.step()
        ga = ga + 0.01 * var_a
        buf_a, buf_b = 0.9 * buf_a + ga, 0.9 * buf_b + gb
        var_a = var_a - 0.1 * [1.0, 0.5][k] * (ga + 0.9 * buf_a)
        var_b = var_b - 2.0 * [1.0, 0.5][k] * (gb + 0.9 * buf_b)
        np.testing.assert_allclose(a.data, var_a, rtol=1e-15)
        np.testing.assert_allclose(b.data, var_b, rtol=1e-15)
    assert frozen.data[0] == 5.0


def test_triangle_schedule_points():
    """airbench: 0.2 at step 0, 1 at int(0.23 * total), 0.07 at total, linear between."""
    tri = optim.Triangle(476)
    assert tri(0) == 0.2 and tri(109) == 1.0 and tri(476) == pytest.approx(0.07, abs=1e-15)
    assert tri(50) == pytest.approx(0.2 + 0.8 * 50 / 109, rel=1e-15)
    assert tri(300) == pytest.approx(1 - 0.93 * (300 - 109) / (476 - 109), rel=1e-15)


def test_state_dict_round_trip():
    p = Parameter(np.ones(3))
    opt = optim.SGD([("w", p)], lr=0.5, momentum=0.85, nesterov=True)
    p.grad = np.array([1.0, 2.0, 3.0])
    opt.step()
    state = opt.state_dict()
    assert sorted(state) == ["iterations", "w/momentum_buffer"]
    other = optim.SGD([("w", Parameter(np.ones(3)))], lr=0.5, momentum=0.85, nesterov=True).load_state_dict(state)
    np.testing.assert_array_equal(other.slots["momentum_buffer"][0], [1.0, 2.0, 3.0])
    assert other.iterations == 1


@pytest.mark.parametrize("kwargs, message", [
    (dict(lr=0.1, momentum=0.0, nesterov=True), "Nesterov momentum needs a momentum > 0"),
    (dict(lr=0.1, momentum=-0.5), "momentum must be >= 0, got -0.5"),
    (dict(lr=-0.1), "param group 0 has a negative lr or weight_decay: -0.1, 0.0"),
])
def test_bad_hyperparameters(kwargs, message):
    with pytest.raises(ValueError, match="SGD: " + message):
        optim.SGD([Parameter(np.ones(2))], **kwargs)


def test_bad_group():
    with pytest.raises(ValueError, match="SGD: param group 0 must be a dict of 'params'"):
        optim.SGD([{"params": [Parameter(np.ones(2))], "momentum": 0.9}], lr=0.1)
    with pytest.raises(ValueError, match=r"Triangle: the peak int\(0.23 \* 3\) must fall strictly inside"):
        optim.Triangle(3)
