"""The fast CIFAR run in the house's TrainingRun (tasks/cifar_fast.py) on a narrow model and
random images: it trains to the end of --epochs, writes train.csv and a checkpoint with the
Lookahead shadows and the input position, resumes to the same weights, and evaluates."""
import argparse
import csv
import os

import numpy as np
import pytest

from tinybn.checkpoint_manager import CheckpointManager
from tinybn.models.cifar_fast import fast
from tinybn.tasks.cifar_fast import evaluate_fast, train_fast
from tinybn.tasks.fast_recipe import evaluate
from tinybn.training import latest_checkpoint, load_checkpoint_or_fail

WIDTHS = (8, 16, 16)


def _args(train_dir, max_steps, epochs=4):
    return argparse.Namespace(train_dir=str(train_dir), max_steps=max_steps, batch_size=16, seed=0, epochs=epochs,
                              log_every=1, summary_every=100, checkpoint_every=3, max_to_keep=5, backend="numpy")


def _data(n=32):
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (n, 32, 32, 3)).astype(np.uint8), rng.integers(0, 10, n)


def _model():
    return fast(rng=np.random.default_rng(0), widths=WIDTHS)


@pytest.fixture(autouse=True)
def early_average(monkeypatch):
    """Start the average in epoch 1 (of 2 steps each) instead of 3, so a short run has one."""
    from tinybn.tasks import fast_recipe
    hyp = dict(fast_recipe.HYPERPARAMETERS, ema=dict(fast_recipe.HYPERPARAMETERS["ema"], start_epochs=1,
                                                     every_n_steps=2))
    monkeypatch.setattr(fast_recipe, "HYPERPARAMETERS", hyp)


def test_trains_to_the_epochs_end_and_resumes_to_the_same_weights(tmp_path):
    images, labels = _data()
    straight = train_fast(_args(tmp_path / "a", 1000), images, labels, model=_model())
    assert straight.step == 8                                  # 2 steps per epoch, 4 epochs
    with open(tmp_path / "a" / "train.csv") as f:
        assert [int(r["step"]) for r in csv.DictReader(f)] == list(range(1, 9))
    arrays, meta = load_checkpoint_or_fail(latest_checkpoint(str(tmp_path / "a")))
    assert meta["model"] == "fast" and meta["epochs"] == 4
    assert any(k.startswith("lookahead::") for k in arrays) and "queue::epoch" in arrays

    train_fast(_args(tmp_path / "b", 5), images, labels, model=_model())          # stopped at step 5
    resumed = train_fast(_args(tmp_path / "b", 1000), images, labels, model=_model())
    assert resumed.step == 8
    for (name, a), (_, b) in zip(straight.model.state_dict().items(), resumed.model.state_dict().items()):
        np.testing.assert_array_equal(a, b, err_msg=name)


def test_evaluates_a_checkpoint_with_tta(tmp_path):
    images, labels = _data()
    run = train_fast(_args(tmp_path, 2), images, labels, model=_model())
    path = latest_checkpoint(str(tmp_path))
    precision, step, _ = evaluate_fast(path, images, labels, tta_level=2, model=_model())
    assert step == 2 and precision == evaluate(run.model, images, labels, tta_level=2)


@pytest.mark.parametrize("steps, without, weights", [
    (2, None, "last step's weights (the Lookahead average had not started)"),     # epoch 0
    (4, None, "Lookahead-averaged weights"),                                      # started at step 4
    (4, ["lookahead"], "last step's weights (trained without Lookahead)")])
def test_the_evaluation_names_the_weights_the_checkpoint_holds(tmp_path, steps, without, weights):
    images, labels = _data()
    args = _args(tmp_path, steps)
    args.without = without
    train_fast(args, images, labels, model=_model())
    assert evaluate_fast(latest_checkpoint(str(tmp_path)), images, labels, tta_level=0, model=_model())[2] == weights


def test_refuses_other_checkpoints(tmp_path):
    images, labels = _data()
    train_fast(_args(tmp_path, 2), images, labels, model=_model())
    manager = CheckpointManager(str(tmp_path / "other"), max_to_keep=1)
    path = manager.save(1, {"model::x": np.zeros(1)}, {"task": "cifar", "model": "bn"})
    with pytest.raises(SystemExit, match="is not a checkpoint of --model fast"):
        evaluate_fast(path, images, labels)
    with pytest.raises(SystemExit, match="epochs=4, this run has epochs=5"):
        train_fast(_args(tmp_path, 1000, epochs=5), images, labels, model=_model())
    assert os.path.exists(latest_checkpoint(str(tmp_path)))


def test_sec_per_batch_is_the_steps_own_time_without_the_checkpoints(tmp_path, monkeypatch):
    """A fake clock: each step takes 1 s, each checkpoint 100 s. With a checkpoint every 3 steps
    and one at each epoch's end (2 steps an epoch), every train.csv row must read 1 s a step,
    while its wall time counts the checkpoints."""
    import types

    from tinybn import training
    from tinybn.tasks import cifar_fast
    now = [1000.0]
    monkeypatch.setattr(training, "time", types.SimpleNamespace(time=lambda: now[0]))

    def advancing(method, seconds):
        def wrapped(*a, **k):
            now[0] += seconds
            return method(*a, **k)
        return wrapped
    monkeypatch.setattr(cifar_fast.FastRun, "train_step", advancing(cifar_fast.FastRun.train_step, 1.0))
    monkeypatch.setattr(cifar_fast.FastRun, "save", advancing(cifar_fast.FastRun.save, 100.0))
    images, labels = _data()
    args = _args(tmp_path, 8)
    args.checkpoint_every_epoch = True
    train_fast(args, images, labels, model=_model())
    with open(tmp_path / "train.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["step"]) for r in rows] == list(range(1, 9))
    assert [float(r["sec_per_batch"]) for r in rows] == [1.0] * 8
    # saves after steps 2 (epoch), 3 (every 3), 4 (epoch), 6 (both: fit's only), before the next step
    walls = [float(r["wall_time"]) - 1000.0 for r in rows]
    assert walls == [1, 2, 103, 204, 305, 306, 407, 408]
