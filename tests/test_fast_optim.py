"""The fast CIFAR recipe's optimizer: tinybn.optim.SGD against torch.optim.SGD (parameter groups,
Nesterov, weight decay) stepped by LambdaLR, the first step's closed form, and airbench's
triangular schedule."""
import numpy as np
import pytest

from tinybn import optim
from tinybn.nn.module import Parameter

STEPS = 6


def _run_both(dtype, nesterov, momentum, lr_lambda, skip_step=None):
    """Two groups (lr, weight decay) as airbench's, random gradients; returns tinybn's and torch's values."""
    torch = pytest.importorskip("torch")      # not in the test extras: the closed forms below always run
    rng = np.random.default_rng(0)
    shapes = [(3, 4), (5,), (2, 2, 3)]
    init = [rng.standard_normal(s).astype(dtype) for s in shapes]
    grads = [[rng.standard_normal(s).astype(dtype) for s in shapes] for _ in range(STEPS)]
    ours = [Parameter(a.copy()) for a in init]
    theirs = [torch.nn.Parameter(torch.from_numpy(a.copy())) for a in init]
    groups = lambda ps: [{"params": ps[:2], "lr": 0.1, "weight_decay": 5e-4 / 0.1},      # noqa: E731
                         {"params": ps[2:], "lr": 6.4, "weight_decay": 5e-4 / 6.4}]
    opt = optim.SGD(groups(ours), lr=0.1, momentum=momentum, nesterov=nesterov, lr_lambda=lr_lambda)
    topt = torch.optim.SGD(groups(theirs), lr=0.1, momentum=momentum, nesterov=nesterov)
    sched = torch.optim.lr_scheduler.LambdaLR(topt, lr_lambda)
    for step in range(STEPS):
        for i, (p, t) in enumerate(zip(ours, theirs)):
            skipped = skip_step == (step, i)
            p.grad = None if skipped else grads[step][i].copy()
            t.grad = None if skipped else torch.from_numpy(grads[step][i].copy())
        opt.step()
        topt.step()
        sched.step()
    return [p.data for p in ours], [t.detach().numpy() for t in theirs], opt, topt


@pytest.mark.parametrize("dtype, rtol", [(np.float64, 1e-14), (np.float32, 2e-6)])
@pytest.mark.parametrize("nesterov, momentum", [(True, 0.85), (False, 0.9), (False, 0.0)])
def test_sgd_matches_torch(dtype, rtol, nesterov, momentum):
    schedule = optim.Triangle(STEPS, start=0.2, end=0.07, peak=0.23)
    ours, theirs, opt, topt = _run_both(dtype, nesterov, momentum, schedule, skip_step=(2, 1))
    for a, b in zip(ours, theirs):
        assert a.dtype == dtype
        np.testing.assert_allclose(a, b, rtol=rtol, atol=rtol)
    if momentum:
        for name, p in zip(opt.names, topt.param_groups[0]["params"] + topt.param_groups[1]["params"]):
            np.testing.assert_allclose(opt.state_dict()[f"{name}/momentum_buffer"],
                                       topt.state[p]["momentum_buffer"].numpy(), rtol=rtol, atol=rtol)


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
