"""python -m tinybn.train cifar --model fast and python -m tinybn.eval cifar --model fast on tiny
generated CIFAR-10 files (the official binary format): one epoch of the full-width model on 40
images, stopped and resumed, evaluated with TTA; a --without run evaluated as it was built; bad flag combinations
refused in one line before anything is written."""
import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))
from test_cli_cifar import write_cifar  # noqa: E402  (tests/ is on sys.path)

from tinybn import checkpoint  # noqa: E402
from tinybn.data import cifar10 as cifar_data  # noqa: E402
from tinybn.nn.layers import GELU, ReLU  # noqa: E402
from tinybn.tasks.cifar_fast import restore_fast_model  # noqa: E402
from tinybn.tasks.fast_recipe import evaluate  # noqa: E402
from tinybn.eval import main as eval_main  # noqa: E402
from tinybn.train import main as train_main  # noqa: E402

BATCH = 8         # 40 training images: 5 steps an epoch


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_cifar(tmp_path_factory.mktemp("data"), n_train=8, n_test=20)


def train(data, train_dir, *extra):
    return train_main(["cifar", "--model", "fast", "--data-dir", str(data), "--train-dir", str(train_dir),
                       "--batch-size", str(BATCH), "--epochs", "1", "--log-every", "1", "--no-download",
                       "--backend", "numpy", *extra])


def test_one_epoch_resumed_and_evaluated_with_tta(data, tmp_path, capsys):
    """Stopped at step 3, resumed to the epoch's end (step 5); bitwise resumption itself is
    tests/test_fast_run.py's, on a narrow model."""
    run = tmp_path / "run"
    train(data, run, "--max-steps", "3")
    train(data, run)
    assert "model.ckpt-3.npz at step 3" in capsys.readouterr().out       # "resumed from ..."
    arrays, meta = checkpoint.load(run / "model.ckpt-5.npz")
    assert meta["step"] == 5 and meta["model"] == "fast" and meta["epochs"] == 1.0 and meta["batch_size"] == BATCH
    assert "queue::epoch" in arrays and "model::net/whiten/kernel" in arrays
    steps = [int(r.split(",")[0]) for r in open(run / "train.csv").read().splitlines()[1:]]
    assert steps == [1, 2, 3, 4, 5]
    capsys.readouterr()

    eval_main(["cifar", "--model", "fast", "--data-dir", str(data), "--train-dir", str(run),
               "--eval-dir", str(tmp_path / "ev"), "--batch-size", "10", "--no-download", "--backend", "numpy"])
    line = capsys.readouterr().out
    assert "step 5: precision @ 1 = " in line
    assert "(20 examples, last step's weights (the Lookahead average had not started), TTA level 2)" in line
    row = open(tmp_path / "ev" / "eval.csv").read().splitlines()[1].split(",")
    assert row[0] == "5" and row[2] == "20" and round(float(row[1]) * 20) == pytest.approx(float(row[1]) * 20)
    with pytest.raises(SystemExit, match="is a checkpoint of --model fast: evaluate it with --model fast"):
        eval_main(["cifar", "--data-dir", str(data), "--train-dir", str(run),
                   "--eval-dir", str(tmp_path / "ev2"), "--batch-size", "10", "--no-download", "--backend", "numpy"])


def test_an_ablated_run_is_evaluated_with_its_own_network(data, tmp_path, capsys):
    """--without gelu: one step, then the evaluation rebuilds ReLUs from the checkpoint's meta."""
    run = tmp_path / "relu"
    train(data, run, "--max-steps", "1", "--without", "gelu", "--without", "translate")
    _, meta = checkpoint.load(run / "model.ckpt-1.npz")
    assert meta["without"] == ["gelu", "translate"]
    capsys.readouterr()
    eval_main(["cifar", "--model", "fast", "--tta-level", "0", "--data-dir", str(data), "--train-dir", str(run),
               "--eval-dir", str(tmp_path / "ev"), "--batch-size", "10", "--no-download", "--backend", "numpy"])
    printed = float(capsys.readouterr().out.split("precision @ 1 = ")[1].split()[0])
    images, labels = cifar_data.load_cifar10("test", str(data), download=False)
    model, _, _ = restore_fast_model(str(run / "model.ckpt-1.npz"))
    assert {type(m) for _, m in model.named_modules()} & {GELU, ReLU} == {ReLU}
    assert printed == pytest.approx(evaluate(model, images, labels, tta_level=0), abs=5e-5)     # 4 digits printed


@pytest.mark.parametrize("main, argv, message", [
    (train_main, ["--model", "fast", "--num-threads", "2"], "--model fast does not take --num-threads"),
    (train_main, ["--model", "fast", "--sync-bn"], "--model fast does not take --sync-bn: it trains in one process"),
    (train_main, ["--model", "fast", "--epochs", "0"], "--epochs must be a positive number, got 0.0"),
    (train_main, ["--model", "bn", "--epochs", "3"], "--model bn does not take --epochs: it trains to --max-steps"),
    (train_main, ["--model", "bn", "--without", "gelu"], "--model bn does not take --without"),
    (train_main, ["--checkpoint-every-epoch"], "--model tutorial does not take --checkpoint-every-epoch"),
    (eval_main, ["--model", "fast", "--no-ema"], "--model fast does not take --no-ema"),
    (eval_main, ["--model", "fast", "--report"], "--model fast does not take --report"),
    (eval_main, ["--tta-level", "0"], "--tta-level is --model fast's test-time augmentation"),
])
def test_bad_flag_combinations_are_one_line_errors(data, tmp_path, main, argv, message):
    dirs = ["--train-dir", str(tmp_path / "run")] + (["--eval-dir", str(tmp_path / "ev")] if main is eval_main else [])
    with pytest.raises(SystemExit, match=message) as e:
        main(["cifar", "--data-dir", str(data), "--no-download", "--backend", "numpy", *dirs, *argv])
    assert str(e.value).startswith("error: ") and "\n" not in str(e.value)
    assert not os.path.exists(tmp_path / "run") and not os.path.exists(tmp_path / "ev")
