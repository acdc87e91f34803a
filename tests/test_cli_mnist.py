"""python -m tinybn.train mnist / python -m tinybn.eval mnist on tiny generated idx files (in-process)."""
import gzip
import os

import numpy as np
import pytest

from tinybn import checkpoint
from tinybn.data.mnist import FILES
from tinybn.eval import main as eval_main
from tinybn.train import main as train_main


def idx(magic, dims, payload):
    return magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in dims) + payload.tobytes()


def write_mnist(folder, n_train=48, n_test=40, seed=0):
    """Official file names; train gzipped, t10k plain. Each class lights its own rows, so it can be learnt."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    for split, n, gz in (("train", n_train, True), ("test", n_test, False)):
        labels = rng.integers(0, 10, n).astype(np.uint8)
        images = (rng.random((n, 28, 28)) * 60).astype(np.uint8)
        for i, label in enumerate(labels):
            images[i, 2 * label + 4:2 * label + 7, 4:24] = 250
        for name, data in zip(FILES[split], (idx(2051, (n, 28, 28), images), idx(2049, (n,), labels))):
            (folder / (name if gz else name[:-3])).write_bytes(gzip.compress(data) if gz else data)
    return folder


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_mnist(tmp_path_factory.mktemp("mnist") / "data")


def train(data, train_dir, *extra):
    return train_main(["mnist", "--data-dir", str(data), "--train-dir", str(train_dir), "--batch-size", "8",
                       "--log-every", "2", "--summary-every", "4", "--no-download", "--backend", "numpy", *extra])


def eval_lines(out):
    return [line for line in out.splitlines() if "precision @ 1 = " in line]


def final_precision(train_dir):
    """{set: precision@1} of the last evaluation in eval.csv."""
    rows = [r.split(",") for r in open(train_dir / "eval.csv").read().splitlines()[1:]]
    return {r[1]: float(r[4]) for r in rows[-2:]}


@pytest.mark.parametrize("model", ["cnn_bn", "fc-bn"])
def test_train_then_eval_prints_precision_for_both_sets(data, tmp_path, capsys, model):
    out = tmp_path / "run"
    train(data, out, "--model", model, "--max-steps", "6", "--checkpoint-every", "3", "--eval-every", "4")
    log = capsys.readouterr().out
    assert "step 6, loss = " in log and "examples/sec" in log
    lines = eval_lines(log)
    assert len(lines) == 4          # step 4 and the end, eval set then training set
    assert "step 4: eval set test[0:40] (40 examples, BN in inference mode): precision @ 1 = 0." in lines[0]
    assert "step 6: train set train[0:48] (48 examples, BN in inference mode): precision @ 1 = " in lines[3]
    assert {"model.ckpt-3.npz", "model.ckpt-6.npz", "train.csv", "eval.csv"} <= set(os.listdir(out))
    rows = [r.split(",") for r in open(out / "eval.csv").read().splitlines()]
    assert rows[0] == ["step", "set", "split", "examples", "precision_at_1"]
    assert [r[:4] for r in rows[1:]] == [["4", "eval", "test[0:40]", "40"], ["4", "train", "train[0:48]", "48"],
                                         ["6", "eval", "test[0:40]", "40"], ["6", "train", "train[0:48]", "48"]]
    precision = float(rows[3][4])
    assert lines[2].endswith(f"precision @ 1 = {precision:.4f}") and round(precision * 40, 9) % 1 == 0
    arrays, meta = checkpoint.load(out / "model.ckpt-6.npz")
    assert meta["model"] == model and meta["train_split"] == "train[0:48]" and meta["bn_decay"] == 0.99
    assert any(k.endswith("moving_variance") for k in arrays) and "queue::batches" in arrays

    eval_main(["mnist", "--data-dir", str(data), "--train-dir", str(out), "--no-download", "--batch-size", "16"])
    again = eval_lines(capsys.readouterr().out)
    assert again[0].endswith(f"precision @ 1 = {precision:.4f}")
    assert "step 6: eval set test[0:40] (40 examples" in again[0]
    assert again[1].endswith(lines[3].rpartition(" = ")[2]) and "train set train[0:48] (48 examples" in again[1]


def test_fc_bn_learns_the_pattern(data, tmp_path, capsys):
    train(data, tmp_path / "run", "--model", "fc-bn", "--max-steps", "30", "--log-every", "10")
    results = final_precision(tmp_path / "run")
    assert results["train"] >= 0.9 and results["eval"] >= 0.5, results


def test_resume_continues_exactly(data, tmp_path):
    flags = ("--model", "fc-bn", "--train-split", "train[:40]", "--eval-split", "test[-8:]")
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    train(data, straight, "--max-steps", "9", *flags)              # 9 batches of 8: across an epoch of 40
    train(data, resumed, "--max-steps", "4", *flags)
    train(data, resumed, "--max-steps", "9", *flags)
    a, _ = checkpoint.load(straight / "model.ckpt-9.npz")
    b, _ = checkpoint.load(resumed / "model.ckpt-9.npz")
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    with pytest.raises(SystemExit, match=r"written with train_split='train\[0:40\]', this run has "
                                         r"train_split='train\[0:48\]'"):
        train(data, resumed, "--max-steps", "12", "--model", "fc-bn")


def test_split_flags(data, tmp_path, capsys):
    train(data, tmp_path / "a", "--model", "fc-bn", "--max-steps", "2", "--train-split", "t10k[:30]",
                "--eval-split", "test[30:]")
    out = capsys.readouterr()
    assert "eval set test[30:40] (10 examples" in out.out and "train set test[0:30] (30 examples" in out.out
    assert "warning" not in out.err
    train(data, tmp_path / "b", "--model", "fc-bn", "--max-steps", "2", "--train-split", "test[:30]",
          "--eval-split", "test[20:]")
    assert "warning: --train-split test[0:30] and --eval-split test[20:40] share 10 examples" in capsys.readouterr().err
    for flag, value, match in [("--train-split", "test[:41]", r"--train-split: split test\[:41\]: the range is "
                                                            r"outside the 40 examples of 'test'"),
                               ("--eval-split", "valid", "--eval-split: split 'valid': unknown file set"),
                               ("--eval-split", "test[5:5]", r"--eval-split: .*the range \[5:5\] is empty")]:
        with pytest.raises(SystemExit, match=match):
            train(data, tmp_path / "c", "--max-steps", "2", flag, value)
    with pytest.raises(SystemExit):
        train(data, tmp_path / "c", "--model", "fc_bn")           # the spelling is fc-bn
    assert sorted(f for f in os.listdir(tmp_path / "a") if f.endswith(".npz")) == ["model.ckpt-2.npz"]


def test_bad_flags_and_missing_data(data, tmp_path):
    with pytest.raises(SystemExit, match="--eval-every must be >= 0"):
        train(data, tmp_path / "r", "--eval-every", "-1")
    with pytest.raises(SystemExit, match=r"--bn-decay must be in \[0, 1\]"):
        train(data, tmp_path / "r", "--bn-decay", "1.5")
    with pytest.raises(SystemExit, match="train-images-idx3-ubyte.gz not found in .*download is off"):
        train(tmp_path / "empty", tmp_path / "r")
    with pytest.raises(SystemExit, match="no checkpoint in"):
        eval_main(["mnist", "--data-dir", str(data), "--train-dir", str(tmp_path / "none"), "--no-download"])
