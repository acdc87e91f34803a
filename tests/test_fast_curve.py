"""The curve of precision@1 against wall time (tasks/curve.py): on tiny generated CIFAR-10 files, a
--model fast run with --checkpoint-every-epoch and a tutorial run, each checkpoint evaluated by
python -m tinybn.eval cifar --every-checkpoint, the plot of both, and the bad inputs."""
import argparse
import csv
import os
import sys
import time

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(__file__))
from test_cli_cifar import write_cifar  # noqa: E402  (tests/ is on sys.path)

from tinybn import checkpoint  # noqa: E402
from tinybn.checkpoint_manager import CheckpointManager  # noqa: E402
from tinybn.data import cifar10 as cifar_data  # noqa: E402
from tinybn.eval import main as eval_main  # noqa: E402
from tinybn.models.cifar_fast import fast  # noqa: E402
from tinybn.tasks import cifar  # noqa: E402
from tinybn.tasks.cifar_fast import train_fast  # noqa: E402
from tinybn.train import main as train_main  # noqa: E402

COMMON = ["--no-download", "--backend", "numpy"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_cifar(tmp_path_factory.mktemp("data"), n_train=8, n_test=20)      # 40 training images


@pytest.fixture(scope="module")
def runs(data, tmp_path_factory):
    """A fast run of 2 epochs of 4 steps (checkpoints at 4 and 8) and a tutorial run of 4 steps
    (checkpoints at 2 and 4), each with its curve.csv; and the time just before training began."""
    root = tmp_path_factory.mktemp("runs")
    before = time.time()
    train_main(["cifar", "--model", "fast", "--data-dir", str(data), "--train-dir", str(root / "fast"),
                "--batch-size", "10", "--epochs", "2", "--log-every", "1", "--checkpoint-every-epoch",
                "--max-to-keep", "1", *COMMON])
    train_main(["cifar", "--model", "tutorial", "--data-dir", str(data), "--train-dir", str(root / "tutorial"),
                "--batch-size", "8", "--max-steps", "4", "--checkpoint-every", "2", "--log-every", "2",
                "--num-threads", "1", *COMMON])
    for name, model in (("fast", ["--model", "fast", "--tta-level", "1"]), ("tutorial", [])):
        eval_main(["cifar", *model, "--data-dir", str(data), "--train-dir", str(root / name), "--eval-dir",
                   str(root / f"{name}_eval"), "--batch-size", "10", "--every-checkpoint", *COMMON])
    return root, before


def _rows(path):
    with open(path) as f:
        return list(csv.DictReader(f))


@pytest.mark.parametrize("name, steps", [("fast", [4, 8]), ("tutorial", [2, 4])])
def test_each_checkpoint_is_a_point_of_its_eval_and_its_train_csv_time(data, runs, name, steps):
    root, before = runs
    rows = _rows(root / f"{name}_eval" / "curve.csv")
    assert [int(r["step"]) for r in rows] == steps
    logged = {int(r["step"]): float(r["wall_time"]) for r in _rows(root / name / "train.csv")}
    images, labels = cifar_data.load_cifar10("test", str(data), download=False)
    batches = (cifar.FastEvalSet(images, labels, 1, 10) if name == "fast"
               else cifar.eval_batches(images, labels, 10))
    paths = CheckpointManager(str(root / name), max_to_keep=None, read_only=True).all()
    for row, path in zip(rows, paths):
        precision, total, step, _ = cifar.evaluate(path, batches, use_ema=True)     # the one-checkpoint eval
        _, meta = checkpoint.load(path)
        assert (int(row["step"]), float(row["precision_at_1"]), int(row["examples"])) == (step, precision, 20)
        assert meta["wall_time"] == logged[step]                      # train.csv's time of that step
        assert float(row["wall_time_secs"]) == logged[step] - meta["started"]
        assert before <= meta["started"] < min(logged.values())       # started before the data was read


def test_the_fast_runs_epoch_checkpoints_are_all_kept_and_a_second_pass_adds_nothing(data, runs, capsys):
    root, _ = runs
    assert [os.path.basename(p) for p in CheckpointManager(str(root / "fast"), None, read_only=True).all()] == \
        ["model.ckpt-4.npz", "model.ckpt-8.npz"]                  # --max-to-keep 1 did not rotate them
    before = (root / "fast_eval" / "curve.csv").read_text()
    eval_main(["cifar", "--model", "fast", "--tta-level", "1", "--data-dir", str(data), "--train-dir",
               str(root / "fast"), "--eval-dir", str(root / "fast_eval"), "--batch-size", "10", "--every-checkpoint",
               *COMMON])
    assert "step" not in capsys.readouterr().out                    # nothing evaluated again
    assert (root / "fast_eval" / "curve.csv").read_text() == before


def test_the_plot_of_both_runs_is_written(runs, capsys):
    root, _ = runs
    png = root / "plots" / "curve.png"
    os.makedirs(png.parent)
    eval_main(["cifar", "--time-curve", str(png), "--curve-run", f"fast={root / 'fast_eval'}",
               "--curve-run", str(root / "tutorial_eval")])
    assert f"wrote {png}" in capsys.readouterr().out
    head = png.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n"
    assert (int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")) == (800, 500)


def test_a_resumed_run_keeps_its_start(tmp_path):
    rng = np.random.default_rng(0)
    images, labels = rng.integers(0, 256, (32, 32, 32, 3)).astype(np.uint8), rng.integers(0, 10, 32)

    def args(max_steps):
        return argparse.Namespace(train_dir=str(tmp_path), max_steps=max_steps, batch_size=16, seed=0, epochs=4,
                                  log_every=1, summary_every=100, checkpoint_every=1000, max_to_keep=5,
                                  backend="numpy", started=time.time())
    first = args(2)
    train_fast(first, images, labels, model=fast(rng=np.random.default_rng(0), widths=(8, 16, 16)))
    train_fast(args(4), images, labels, model=fast(rng=np.random.default_rng(0), widths=(8, 16, 16)))
    metas = [checkpoint.load(tmp_path / f"model.ckpt-{s}.npz")[1] for s in (2, 4)]
    assert metas[0]["started"] == metas[1]["started"] == first.started
    assert metas[1]["wall_time"] > metas[0]["wall_time"]


@pytest.mark.parametrize("argv, message", [
    (["--every-checkpoint", "--train-dir", "{empty}"], "error: no checkpoint in "),
    (["--every-checkpoint", "--model", "fast", "--train-dir", "{tutorial}"], "is not a checkpoint of --model fast"),
    (["--every-checkpoint", "--train-dir", "{fast}"], "is a checkpoint of --model fast: evaluate it with --model"),
    (["--every-checkpoint", "--watch", "--train-dir", "{fast}"], "--every-checkpoint evaluates the checkpoints"),
    (["--time-curve", "{out}/c.png", "--curve-run", "{empty}"], "error: no points in "),
    (["--curve-run", "{fast}"], "--curve-run names a run of --time-curve's plot"),
    (["--time-curve", "{out}/c.png", "--report"], "--time-curve plots curve.csv files"),
])
def test_bad_input_is_a_one_line_error(data, runs, tmp_path, argv, message):
    root, _ = runs
    (tmp_path / "empty").mkdir()
    dirs = {"empty": tmp_path / "empty", "fast": root / "fast", "tutorial": root / "tutorial", "out": tmp_path}
    argv = [a.format(**dirs) for a in argv]
    with pytest.raises(SystemExit, match=message) as e:
        eval_main(["cifar", "--data-dir", str(data), "--eval-dir", str(tmp_path / "ev"), "--batch-size", "10",
                   *COMMON, *argv])
    assert str(e.value).startswith("error: ") and "\n" not in str(e.value)
    assert not os.path.exists(tmp_path / "ev" / "curve.csv") and not os.path.exists(tmp_path / "c.png")


def test_a_checkpoint_without_times_is_refused(data, tmp_path):
    manager = CheckpointManager(str(tmp_path / "old"), max_to_keep=1)
    manager.save(1, {"model::x": np.zeros(1)}, {"task": "cifar", "model": "tutorial"})
    with pytest.raises(SystemExit, match="records no wall time"):
        eval_main(["cifar", "--data-dir", str(data), "--train-dir", str(tmp_path / "old"), "--eval-dir",
                   str(tmp_path / "ev"), "--batch-size", "10", "--every-checkpoint", *COMMON])
