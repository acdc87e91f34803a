"""Hostile state: strict loads that validate before assigning, corrupt checkpoint files, temporaries
left by kill -9, checkpoints written but not yet indexed, and input-queue states out of range."""
import numpy as np
import pytest

from tinybn.nn import layers
from tinybn.nn.batchnorm import BatchNorm
from tinybn.optim import ExponentialMovingAverage, Momentum

# --- load_state_dict: everything is checked before the first assignment -------------------------
BAD_VALUES = {
    "string": lambda shape: np.full(shape, "1.5"),
    "complex": lambda shape: np.full(shape, 1 + 2j),
    "object": lambda shape: np.full(shape, 1.0, dtype=object),
    "None": lambda shape: None,
}


def model_with_ten_tensors():
    rng = np.random.default_rng(0)
    return layers.Sequential(("conv1", layers.Conv2D(3, 4, 3, rng=rng)),
                             ("bn1", BatchNorm(4, zero_debias_moving_mean=True)),   # 2 params, 4 buffers
                             ("fc", layers.Dense(4, 2, rng=rng)))


def changed_state(state, key, kind):
    bad = {k: v + 1 for k, v in state.items()}     # every entry different from what the model holds
    bad[key] = BAD_VALUES[kind](state[key].shape)
    return bad


@pytest.mark.parametrize("kind", BAD_VALUES)
def test_module_load_refuses_non_real_values_and_changes_nothing(kind):
    model = model_with_ten_tensors()
    before = model.state_dict()
    assert len(before) == 10
    last = list(before)[-1] if kind != "None" else "bn1/local_step"     # None has the shape () of a scalar
    with pytest.raises(ValueError, match=rf"load_state_dict into Sequential: unsupported dtype \['{last}: "):
        model.load_state_dict(changed_state(before, last, kind))
    for k, v in model.state_dict().items():
        np.testing.assert_array_equal(v, before[k], err_msg=k)


@pytest.mark.parametrize("kind", BAD_VALUES)
def test_optimizer_and_ema_loads_refuse_non_real_values_and_change_nothing(kind):
    model = model_with_ten_tensors()
    named = list(model.named_parameters())
    for _, p in named:
        p.grad = np.ones_like(p.data)
    opt = Momentum(named, 0.1, 0.9)
    opt.step()
    ema = ExponentialMovingAverage(0.5)
    ema.apply(named)
    for owner, load in ((opt, opt.load_state_dict), (ema, lambda s: ema.load_state_dict(s, named))):
        before = owner.state_dict()
        key = list(before)[-1] if kind != "None" else "iterations"
        if key == "iterations" and owner is ema:
            key = list(before)[0]
        bad = {k: v + 1 for k, v in before.items()}
        bad[key] = BAD_VALUES[kind](before[key].shape)
        with pytest.raises(ValueError, match=rf"load_state_dict: .*unsupported dtype \['{key}: "):
            load(bad)
        for k, v in owner.state_dict().items():
            np.testing.assert_array_equal(v, before[k], err_msg=k)
        assert opt.iterations == 1


def test_optimizer_load_refuses_a_negative_step_and_changes_nothing():
    model = model_with_ten_tensors()
    opt = Momentum(list(model.named_parameters()), 0.1, 0.9)
    state = {k: v + 1 for k, v in opt.state_dict().items()}
    state["iterations"] = np.array(-5)
    with pytest.raises(ValueError, match="iterations is -5"):
        opt.load_state_dict(state)
    assert opt.iterations == 0 and all(not s.any() for s in opt.slots["Momentum"])
