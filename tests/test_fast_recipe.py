"""The fast CIFAR recipe's loop (tasks/fast_recipe.py) on a narrow model and random images: the
optimizer's groups from airbench's hyperparameters, when the Lookahead average starts, updates
and copies back, the whitening bias frozen after its epochs, resuming, and the evaluation."""
import math

import numpy as np
import pytest

from tinybn.data.fast_augment import FastBatches, normalize
from tinybn.models.cifar_fast import HYPERPARAMETERS, fast
from tinybn.tasks.fast_recipe import FastRecipe, evaluate, sgd_settings
from tinybn.tensor import Tensor

HYP = {"whiten_bias_epochs": 1, "ema": {"start_epochs": 1, "decay_base": 0.95, "decay_pow": 3.0, "every_n_steps": 3}}


def _data(n=64, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 32, 32, 3)).astype(np.uint8), rng.integers(0, 10, n)


def _recipe(images, epochs=2.5):
    model = fast(rng=np.random.default_rng(0), whitening_images=normalize(images[:16]), widths=(8, 16, 16))
    return FastRecipe(model, len(images), 16, epochs, hyp=HYP)


def test_sgd_settings_are_airbench_conversion():
    lr, wd, lr_b, wd_b = sgd_settings(1024)
    scale = 1024 * (1 + 1 / 0.15)
    assert lr == pytest.approx(11.5 / scale, rel=1e-15) and lr_b == pytest.approx(64 * 11.5 / scale, rel=1e-15)
    assert lr * wd == pytest.approx(0.0153 * 1024 / scale, rel=1e-15) and lr_b * wd_b == pytest.approx(lr * wd)
    assert HYPERPARAMETERS["batch_size"] == 1024


def test_lookahead_schedule_and_whitening_bias_freeze():
    images, labels = _data()
    recipe = _recipe(images)
    assert (recipe.steps_per_epoch, recipe.total_steps) == (4, math.ceil(4 * 2.5))
    batches = FastBatches(images, labels, 16, seed=0)
    started, bias_after_epoch0 = [], None
    for _ in range(recipe.total_steps):
        loss, accuracy = recipe.train_step(*batches.next_batch())
        assert np.isfinite(loss) and 0 <= accuracy <= 1
        started.append(recipe.lookahead is not None)
        if recipe.step == 4:
            bias_after_epoch0 = recipe.model.whitening.bias.data.copy()
        if recipe.step in (8, 10):        # an epoch's (or the run's) end: the weights are the shadows
            for name, t in recipe.lookahead._tensors(recipe.model):
                np.testing.assert_array_equal(t.data, recipe.lookahead.shadow[name])
    # epoch 0 (steps 1-4) has no average; step 6 is the first multiple of 3 in epoch 1
    assert started == [False] * 5 + [True] * 5
    assert bias_after_epoch0 is not None and np.abs(bias_after_epoch0).max() > 0
    np.testing.assert_array_equal(recipe.model.whitening.bias.data, bias_after_epoch0)


def test_frozen_whitening_bias_stops_the_backward_at_block1(monkeypatch):
    """After whiten_bias_epochs the step equals the full backward with the bias's gradient
    dropped (parameters bit for bit), and block1's first conv computes no input gradient."""
    from tinybn.ops import conv as conv_ops
    images, labels = _data()
    frozen, dropped = _recipe(images), _recipe(images)
    batches = [FastBatches(images, labels, 16, seed=0) for _ in range(2)]
    for _ in range(frozen.steps_per_epoch):               # epoch 0: the bias trains in both
        frozen.train_step(*batches[0].next_batch())
        dropped.train_step(*batches[1].next_batch())
    calls = []
    original = conv_ops.Conv2D._input_gradient
    monkeypatch.setattr(conv_ops.Conv2D, "_input_gradient",
                        lambda self, gy, w: calls.append(self.x_shape) or original(self, gy, w))
    frozen.train_step(*batches[0].next_batch())
    assert frozen.model.whitening.bias.grad is None
    assert len(calls) == 5 and (16, 31, 31, 24) not in calls     # 6 convs after the whitening, less block1's first

    dropped.model.whitening.bias.requires_grad = True          # the old way: full backward, gradient dropped
    x, y = batches[1].next_batch()
    logits = dropped.model(Tensor(x))
    loss = dropped.model.loss(logits, y)
    dropped.model.zero_grad()
    loss.backward()
    assert dropped.model.whitening.bias.grad is not None and len(calls) == 11
    dropped.model.whitening.bias.grad = None
    dropped.optimizer.step()
    for (name, a), (_, b) in zip(frozen.model.named_parameters(), dropped.model.named_parameters()):
        np.testing.assert_array_equal(a.data, b.data, err_msg=name)


def test_resume_gives_the_same_weights():
    images, labels = _data(n=32)
    straight = _recipe(images, epochs=3)
    batches = FastBatches(images, labels, 16, seed=0)
    for _ in range(6):
        straight.train_step(*batches.next_batch())
    first = _recipe(images, epochs=3)
    batches = FastBatches(images, labels, 16, seed=0)
    for _ in range(3):
        first.train_step(*batches.next_batch())
    resumed = _recipe(images, epochs=3)
    resumed.model.load_state_dict(first.model.state_dict())
    resumed.load_state_dict(first.state_dict())
    batches = FastBatches(images, labels, 16, seed=0, state=batches.state_dict())
    for _ in range(3):
        resumed.train_step(*batches.next_batch())
    for (name, a), (_, b) in zip(straight.model.state_dict().items(), resumed.model.state_dict().items()):
        np.testing.assert_array_equal(a, b, err_msg=name)


def test_evaluate_counts_hits_and_restores_the_mode():
    images, labels = _data(n=20)
    model = fast(rng=np.random.default_rng(0), whitening_images=normalize(images), widths=(8, 16, 16))
    model.eval()
    predicted = model(normalize(images)).numpy().argmax(1)
    model.train()
    assert evaluate(model, images, labels, tta_level=0, batch_size=7) == pytest.approx(np.mean(predicted == labels))
    assert model.training
    assert 0 <= evaluate(model, images, labels, tta_level=2, batch_size=7) <= 1


def test_too_few_examples():
    images, _ = _data(n=8)
    with pytest.raises(ValueError, match="FastRecipe: 8 examples at batch size 16 for 2.5 epochs make no full step"):
        _recipe(images)
