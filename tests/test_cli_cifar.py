"""python -m tinybn.train cifar / python -m tinybn.eval cifar on tiny generated CIFAR-10 files."""
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from tinybn import checkpoint, checkpoint_manager
from tinybn.eval import main as eval_main
from tinybn.train import main as train_main

RECORD = 3073


def write_cifar(folder, n_train=40, n_test=24, seed=0):
    """Official binary layout: 5 train files and test_batch.bin of random records."""
    rng = np.random.default_rng(seed)
    d = folder / "cifar-10-batches-bin"
    d.mkdir(parents=True)
    for i, n in enumerate([n_train] * 5 + [n_test]):
        rec = rng.integers(0, 256, (n, RECORD), dtype=np.uint8)
        rec[:, 0] = rng.integers(0, 10, n)
        name = f"data_batch_{i + 1}.bin" if i < 5 else "test_batch.bin"
        rec.tofile(d / name)
    return folder


@pytest.fixture
def data(tmp_path):
    return write_cifar(tmp_path / "data")


def train(data, train_dir, *extra):
    return train_main(["cifar", "--data-dir", str(data), "--train-dir", str(train_dir), "--batch-size", "8",
                       "--log-every", "5", "--summary-every", "10", "--no-download", "--num-threads", "2", *extra])


def snapshot(folder):
    return {n: open(os.path.join(folder, n), "rb").read() for n in sorted(os.listdir(folder))}


def test_train_checkpoint_summaries_and_eval(data, tmp_path, capsys):
    out = tmp_path / "run"
    train(data, out, "--max-steps", "20", "--checkpoint-every", "10")
    log = capsys.readouterr().out
    assert "step 20, loss = " in log and "examples/sec" in log
    files = os.listdir(out)
    assert {"model.ckpt-10.npz", "model.ckpt-20.npz", "checkpoint", "train.csv"} <= set(files)
    assert any(f.startswith("events.out.tfevents.") for f in files)
    rows = open(out / "train.csv").read().splitlines()
    assert rows[0].startswith("step,loss") and [r.split(",")[0] for r in rows[1:]] == ["5", "10", "15", "20"]
    arrays, meta = checkpoint.load(out / "model.ckpt-20.npz")
    assert meta["step"] == 20 and meta["model"] == "tutorial"
    assert "model::net/conv1/kernel" in arrays and "ema::net/conv1/kernel/ExponentialMovingAverage" in arrays
    # the shadow lags the weights: it is an average, not a copy
    assert not np.array_equal(arrays["model::net/local3/kernel"],
                              arrays["ema::net/local3/kernel/ExponentialMovingAverage"])

    eval_main(["cifar", "--data-dir", str(data), "--train-dir", str(out), "--eval-dir", str(tmp_path / "ev"),
               "--batch-size", "10", "--no-download"])
    line = capsys.readouterr().out
    assert "step 20: precision @ 1 = " in line and "(24 examples, moving-average weights)" in line
    row = open(tmp_path / "ev" / "eval.csv").read().splitlines()[1].split(",")
    p = float(row[1])
    assert row[0] == "20" and row[2] == "24"
    assert 0.0 <= p <= 1.0 and round(p * 24) == pytest.approx(p * 24)    # a count of hits out of 24


@pytest.mark.parametrize("model", ["tutorial", "bn"])
def test_resume_continues_exactly(data, tmp_path, model):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    train(data, straight, "--max-steps", "12", "--model", model)
    train(data, resumed, "--max-steps", "7", "--model", model)
    train(data, resumed, "--max-steps", "12", "--model", model)
    a, _ = checkpoint.load(straight / "model.ckpt-12.npz")
    b, _ = checkpoint.load(resumed / "model.ckpt-12.npz")
    assert a.keys() == b.keys()
    assert "loss_averages::total_loss" in a      # the summaries' 0.9 averages continue too
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_resume_drops_the_steps_a_crashed_run_logged_after_its_checkpoint(data, tmp_path):
    """As after kill -9 at step 6 with the last checkpoint at 4: train.csv keeps each step once,
    and the new event file tells TensorBoard to drop the old file's steps from 5 on."""
    from test_summary import read_records, parse
    out = tmp_path / "run"
    train(data, out, "--max-steps", "6", "--checkpoint-every", "4", "--log-every", "1", "--summary-every", "1")
    os.unlink(out / "model.ckpt-6.npz")             # the crash: step 6 never reached its checkpoint
    first_events = set(os.listdir(out))
    train(data, out, "--max-steps", "8", "--checkpoint-every", "4", "--log-every", "1", "--summary-every", "1")
    rows = open(out / "train.csv").read().splitlines()
    assert rows[0].startswith("step,loss") and [r.split(",")[0] for r in rows[1:]] == [str(s) for s in range(1, 9)]
    (new,) = [f for f in os.listdir(out) if f.startswith("events.out.tfevents.") and f not in first_events]
    version, start, first = [parse(r) for r in read_records(out / new)][:3]
    assert version[3] == [b"brain.Event:2"]
    assert start[2] == [5] and parse(start[7][0]) == {1: [1]}     # Event{step: 5, session_log: {status: START}}
    assert first[2] == [5] and 5 in first                           # then the resumed run's first summary


def test_eval_no_ema_and_bn_inference(data, tmp_path, capsys):
    out = tmp_path / "run"
    train(data, out, "--max-steps", "6", "--model", "tutorial_bn")
    before = snapshot(out)
    eval_main(["cifar", "--data-dir", str(data), "--train-dir", str(out), "--eval-dir", str(tmp_path / "ev"),
               "--no-ema", "--no-download", "--batch-size", "8"])
    assert "raw weights" in capsys.readouterr().out
    assert snapshot(out) == before          # evaluation never writes into the training run


def test_watch_evaluates_each_new_checkpoint(data, tmp_path):
    out, ev = tmp_path / "run", tmp_path / "ev"
    watcher = subprocess.Popen(
        [sys.executable, "-m", "tinybn.eval", "cifar", "--data-dir", str(data), "--train-dir", str(out),
         "--eval-dir", str(ev), "--watch", "--eval-interval-secs", "0.2", "--stop-at-step", "20",
         "--no-download", "--batch-size", "8", "--backend", "numpy"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        train(data, out, "--max-steps", "10")
        deadline = time.time() + 60
        while not (ev / "eval.csv").exists() and time.time() < deadline:
            time.sleep(0.2)
        train(data, out, "--max-steps", "20")
        output, _ = watcher.communicate(timeout=120)
    finally:
        watcher.kill()
    assert watcher.returncode == 0, output
    steps = [r.split(",")[0] for r in open(ev / "eval.csv").read().splitlines()[1:]]
    assert steps == ["10", "20"], output
    assert any(f.startswith("events.out.tfevents.") for f in os.listdir(ev))


def test_truncated_file_and_bad_label_are_named(data, tmp_path):
    path = data / "cifar-10-batches-bin" / "data_batch_3.bin"
    raw = path.read_bytes()
    path.write_bytes(raw[:-100])
    with pytest.raises(SystemExit, match="data_batch_3.bin.*not a positive multiple of the 3073"):
        train(data, tmp_path / "run", "--max-steps", "2")
    bad = bytearray(raw)
    bad[RECORD * 2] = 12
    path.write_bytes(bytes(bad))
    with pytest.raises(SystemExit, match="data_batch_3.bin: record 2 .*label byte 12"):
        train(data, tmp_path / "run", "--max-steps", "2")


def test_corrupt_checkpoint_is_refused_and_left_intact(data, tmp_path):
    out = tmp_path / "run"
    train(data, out, "--max-steps", "4")
    ckpt = out / "model.ckpt-4.npz"
    raw = bytearray(ckpt.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    ckpt.write_bytes(bytes(raw))
    before = snapshot(out)
    with pytest.raises(SystemExit, match="cannot resume.*model.ckpt-4.npz"):
        train(data, out, "--max-steps", "8")
    with pytest.raises(SystemExit, match="model.ckpt-4.npz"):
        eval_main(["cifar", "--data-dir", str(data), "--train-dir", str(out), "--eval-dir", str(tmp_path / "e"),
                   "--batch-size", "8"])
    assert snapshot(out) == before


def test_mismatched_checkpoint_is_refused_and_left_intact(data, tmp_path):
    out = tmp_path / "run"
    train(data, out, "--max-steps", "4")
    before = snapshot(out)
    with pytest.raises(SystemExit, match="written with model='tutorial', this run has model='bn'"):
        train(data, out, "--max-steps", "8", "--model", "bn")
    # same flags but the arrays do not fit the model: a checkpoint from elsewhere under our name
    arrays, meta = checkpoint.load(out / "model.ckpt-4.npz")
    arrays["model::net/conv1/kernel"] = np.zeros((3, 3, 3, 64), np.float32)
    other = tmp_path / "other"
    checkpoint_manager.CheckpointManager(other).save(4, arrays, meta)
    before_other = snapshot(other)
    with pytest.raises(SystemExit, match="does not match.*net/conv1/kernel"):
        train(data, other, "--max-steps", "8")
    assert snapshot(out) == before and snapshot(other) == before_other


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])  # SIGTERM: schedulers
def test_ctrl_c_or_sigterm_saves_and_exits_cleanly(data, tmp_path, signum):
    out = tmp_path / "run"
    proc = subprocess.Popen(
        [sys.executable, "-m", "tinybn.train", "cifar", "--data-dir", str(data), "--train-dir", str(out),
         "--batch-size", "8", "--log-every", "1", "--max-steps", "100000", "--no-download", "--backend", "numpy"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    for line in proc.stdout:            # wait until a few steps have run
        lines.append(line)
        if "step 3," in line:
            break
    proc.send_signal(signum)
    rest, _ = proc.communicate(timeout=120)
    output = "".join(lines) + rest
    assert proc.returncode == 0, output
    assert "saved " in output
    ckpts = [f for f in os.listdir(out) if f.endswith(".npz")]
    assert len(ckpts) == 1
    step = int(ckpts[0].split("-")[1].split(".")[0])
    assert step >= 3
    _, meta = checkpoint.load(out / ckpts[0])
    assert meta["step"] == step
