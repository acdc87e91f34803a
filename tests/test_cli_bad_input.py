"""The command lines under bad input, as a hostile user gives it: every refusal is one line
starting "error:" with a non-zero exit status, never a traceback, and nothing the user had
is changed. Most run in-process (a traceback there is any exception but SystemExit); the
few that need a process of their own (the environment at import, signals) run one, with
--backend numpy so that no numba compile slows them."""
import builtins
import errno
import os
import queue
import signal
import subprocess
import sys
import tempfile
import threading

import pytest

from tinybn import checkpoint_manager
from tinybn.eval import main as eval_main
from tinybn.train import main as train_main
from tinybn.training import StopFlag

from test_cli_cifar import snapshot, write_cifar      # noqa: E402  (tests/ is on sys.path)
from test_cli_mnist import write_mnist                # noqa: E402


@pytest.fixture(scope="module")
def cifar(tmp_path_factory):
    return write_cifar(tmp_path_factory.mktemp("cifar") / "data")      # 5 x 40 train, 24 test


@pytest.fixture(scope="module")
def mnist(tmp_path_factory):
    return write_mnist(tmp_path_factory.mktemp("mnist") / "data")      # 48 train, 40 test


@pytest.fixture(scope="module")
def cifar_run(cifar, tmp_path_factory):
    """A finished CIFAR run at step 4 with checkpoints 2 and 4 (read only by the tests)."""
    out = tmp_path_factory.mktemp("cifar_run") / "run"
    train_cifar(cifar, out, "--max-steps", "4", "--checkpoint-every", "2")
    return out


def train_cifar(data, train_dir, *extra):
    return train_main(["cifar", "--data-dir", str(data), "--train-dir", str(train_dir), "--batch-size", "8",
                       "--log-every", "1", "--summary-every", "10", "--no-download", "--backend", "numpy", *extra])


def eval_cifar(data, train_dir, eval_dir, *extra):
    return eval_main(["cifar", "--data-dir", str(data), "--train-dir", str(train_dir), "--eval-dir", str(eval_dir),
                      "--no-download", "--backend", "numpy", *extra])


def mnist_flags(data, train_dir):
    return ["mnist", "--data-dir", str(data), "--train-dir", str(train_dir), "--no-download", "--backend", "numpy"]


def one_line_error(capsys, command, *args):
    """The error `command(*args)` ends with: SystemExit, non-zero, one line starting "error:"."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:
        command(*args)
    code = exit_.value.code
    text = code if isinstance(code, str) else capsys.readouterr().err      # argparse prints, then exits 2
    assert code not in (0, None), text
    assert text.startswith("error: ") and "\n" not in text.rstrip("\n"), text
    return text


def events_files(folder):
    return [f for f in os.listdir(folder) if f.startswith("events.out.tfevents.")] if os.path.isdir(folder) else []


# --- flag values ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("extra, message", [
    (["--max-to-keep", "0"], "--max-to-keep must be positive, got 0"),
    (["--max-steps", "0"], "--max-steps must be positive, got 0"),
    (["--max-steps", "1e6"], "argument --max-steps: invalid int value: '1e6'"),
    (["--seed", "-1"], "--seed must be >= 0, got -1"),
    (["--num-threads", "0"], "--num-threads must be positive, got 0"),
    (["--batch-size", "201"], "--batch-size 201 is larger than the 200 examples of the CIFAR-10 training set"),
])
def test_train_cifar_flags(cifar, tmp_path, capsys, extra, message):
    error = one_line_error(capsys, train_cifar, cifar, tmp_path / "run", "--max-steps", "1", *extra)
    assert message in error
    assert not (tmp_path / "run" / "train.csv").exists()        # refused before it trained or logged


@pytest.mark.parametrize("extra, message", [
    (["--batch-size", "0"], "--batch-size must be positive, got 0"),
    (["--num-examples", "-5"], "--num-examples must be >= 0, got -5"),
    (["--num-examples", "25"], "--num-examples 25 is more than the 24 examples of the CIFAR-10 test set"),
    (["--batch-size", "25"], "--batch-size 25 is larger than the 24 examples of the CIFAR-10 test set"),
    (["--num-examples", "10", "--batch-size", "11"], "--batch-size 11 is larger than the 10 examples of "
                                                     "--num-examples 10"),
    (["--eval-interval-secs", "0"], "--eval-interval-secs must be a positive number of seconds, got 0.0"),
    (["--eval-interval-secs", "-1"], "--eval-interval-secs must be a positive number of seconds, got -1.0"),
    (["--eval-interval-secs", "nan"], "--eval-interval-secs must be a positive number of seconds, got nan"),
    (["--stop-at-step", "-1"], "--stop-at-step must be >= 0, got -1"),
])
def test_eval_cifar_flags(cifar, cifar_run, tmp_path, capsys, extra, message):
    before = snapshot(cifar_run)
    error = one_line_error(capsys, eval_cifar, cifar, cifar_run, tmp_path / "ev", "--batch-size", "8", *extra)
    assert message in error
    assert snapshot(cifar_run) == before


def test_mnist_batch_larger_than_the_data_set(mnist, tmp_path, capsys):
    error = one_line_error(capsys, train_main, mnist_flags(mnist, tmp_path / "run") + ["--batch-size", "49", "--max-steps", "1"])
    assert "--batch-size 49 is larger than the 48 examples of --train-split train[0:48]" in error
    train_main(mnist_flags(mnist, tmp_path / "run") + ["--model", "fc-bn", "--max-steps", "1", "--batch-size", "40"])
    error = one_line_error(capsys, eval_main, mnist_flags(mnist, tmp_path / "run") + ["--batch-size", "41"])
    assert "--batch-size 41 is larger than the 40 examples of the eval set test[0:40]" in error


# --- directories and files ---------------------------------------------------------------------------------
def test_a_file_where_a_directory_belongs(cifar, cifar_run, tmp_path, capsys):
    a_file = tmp_path / "a_file"
    a_file.write_text("mine")
    assert f"--train-dir {a_file} is not a directory" in one_line_error(capsys, train_cifar, cifar, a_file)
    assert f"--train-dir {a_file} is not a directory" in one_line_error(capsys, eval_cifar, cifar, a_file,
                                                                         tmp_path / "ev")
    assert f"--eval-dir {a_file} is not a directory" in one_line_error(capsys, eval_cifar, cifar, cifar_run, a_file,
                                                                        "--batch-size", "8")
    assert a_file.read_text() == "mine"


def test_eval_never_creates_the_train_dir(cifar, tmp_path, capsys):
    missing = tmp_path / "mistyped"
    assert f"no checkpoint in {missing}" in one_line_error(capsys, eval_cifar, cifar, missing, tmp_path / "ev",
                                                           "--batch-size", "8")
    assert f"no checkpoint in {missing}" in one_line_error(capsys, eval_main, mnist_flags(tmp_path, missing))
    assert not missing.exists()


def test_a_data_error_leaves_no_train_dir_behind(cifar, tmp_path, capsys):
    train_dir = tmp_path / "run"
    assert "cifar-10-batches-bin" in one_line_error(capsys, train_cifar, tmp_path / "no-data", train_dir)
    assert "is larger than the 200 examples" in one_line_error(capsys, train_cifar, cifar, train_dir,
                                                               "--batch-size", "256")
    assert not train_dir.exists()


def test_a_foreign_train_csv_is_refused_and_left_as_it_is(cifar, tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "train.csv").write_text("epoch,accuracy\n1,0.5\n")
    error = one_line_error(capsys, train_cifar, cifar, out, "--max-steps", "2")
    assert error.rstrip() == (f"error: train.csv in {out} has columns epoch,accuracy, not step,loss,train_accuracy,"
                              "learning_rate,examples_per_sec,sec_per_batch,wall_time; use another --train-dir")
    assert (out / "train.csv").read_text() == "epoch,accuracy\n1,0.5\n"
    assert events_files(out) == []


# --- a full disk, a read-only file system ----------------------------------------------------------------------
def to_dev_full(fd):
    """Point an open file descriptor at /dev/full: every write to it fails with ENOSPC, for real."""
    full = os.open("/dev/full", os.O_WRONLY)
    os.dup2(full, fd)
    os.close(full)


needs_dev_full = pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full (Linux)")


@needs_dev_full
def test_disk_full_on_train_csv(cifar, tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "train.csv").symlink_to("/dev/full")
    error = one_line_error(capsys, train_cifar, cifar, out, "--max-steps", "2")
    assert error.rstrip() == f"error: {out / 'train.csv'}: No space left on device"
    assert events_files(out) == []


@needs_dev_full
def test_disk_full_on_the_event_file(cifar, tmp_path, capsys, monkeypatch):
    from tinybn import summary

    def open_on_a_full_disk(path, mode="r", *args, **kwargs):
        f = builtins.open(path, mode, *args, **kwargs)
        if "tfevents" in os.fspath(path):
            to_dev_full(f.fileno())
        return f
    monkeypatch.setattr(summary, "open", open_on_a_full_disk, raising=False)
    out = tmp_path / "run"
    error = one_line_error(capsys, train_cifar, cifar, out, "--max-steps", "2")
    assert error.startswith(f"error: {out}/events.out.tfevents.") and error.rstrip().endswith(": No space left on device")
    assert events_files(out) == []


@needs_dev_full
def test_disk_full_on_a_checkpoint(cifar, tmp_path, capsys, monkeypatch):
    real_mkstemp = tempfile.mkstemp

    def mkstemp_on_a_full_disk(*args, **kwargs):
        fd, path = real_mkstemp(*args, **kwargs)
        to_dev_full(fd)
        return fd, path
    monkeypatch.setattr(tempfile, "mkstemp", mkstemp_on_a_full_disk)
    out = tmp_path / "run"
    error = one_line_error(capsys, train_cifar, cifar, out, "--max-steps", "4", "--checkpoint-every", "2")
    assert error.startswith(f"error: cannot save the checkpoint of step 2 in {out}: ")
    assert "No space left on device (the last checkpoint, none, is kept)" in error
    assert sorted(os.listdir(out)) == ["train.csv"]       # no temporary file, no events file without events


def read_only(monkeypatch, folder):
    """Make writes into `folder` fail as on a read-only mount (EROFS). chmod cannot stand in: the
    tests run as root, whom file modes do not stop, and mounting needs privileges a test lacks.
    Every way in which the trainer writes goes through open(), os.open() (tempfile) or os.mkdir."""
    folder = os.path.abspath(folder)

    def inside(path):
        return not isinstance(path, int) and os.path.abspath(os.fspath(path)).startswith(folder + os.sep)

    def refuse(path):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), os.fspath(path))
    real_open, real_os_open, real_mkdir = builtins.open, os.open, os.mkdir

    def open_(path, mode="r", *args, **kwargs):
        if inside(path) and set(mode) & set("wax+"):
            refuse(path)
        return real_open(path, mode, *args, **kwargs)

    def os_open(path, flags, *args, **kwargs):
        if inside(path) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
            refuse(path)
        return real_os_open(path, flags, *args, **kwargs)

    def mkdir(path, *args, **kwargs):
        if inside(path) or os.path.abspath(os.fspath(path)) == folder:
            refuse(path)
        return real_mkdir(path, *args, **kwargs)
    monkeypatch.setattr(builtins, "open", open_)
    monkeypatch.setattr(os, "open", os_open)
    monkeypatch.setattr(os, "mkdir", mkdir)


def test_read_only_train_dir(cifar, tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    train_cifar(cifar, out, "--max-steps", "2")
    before = snapshot(out)
    read_only(monkeypatch, out)
    error = one_line_error(capsys, train_cifar, cifar, out, "--max-steps", "4")
    assert error.rstrip() == f"error: {out / 'train.csv'}: Read-only file system"
    monkeypatch.undo()
    assert snapshot(out) == before


# --- the environment, signals, eval --watch ----------------------------------------------------------------
def run_cli(args, env=None, **kwargs):
    environ = dict(os.environ, **(env or {}))
    return subprocess.run([sys.executable, "-m", *args], env=environ, capture_output=True, text=True,
                          timeout=120, **kwargs)


try:
    import cupy  # noqa: F401
    BAD_BACKENDS = ["bogus", "NUMPY"]
except ImportError:
    BAD_BACKENDS = ["bogus", "NUMPY", "cupy"]      # without cupy, the cupy backend cannot load


@pytest.mark.parametrize("value", BAD_BACKENDS)
def test_bad_tinybn_backend_is_one_line_and_backend_overrides_it(cifar, tmp_path, value):
    proc = run_cli(["tinybn.train", "cifar", "--data-dir", str(cifar), "--train-dir", str(tmp_path / "r"),
                    "--max-steps", "1", "--no-download"], env={"TINYBN_BACKEND": value})
    assert proc.returncode == 1 and proc.stderr.startswith(f"error: TINYBN_BACKEND={value!r}"), proc.stderr
    assert proc.stderr.count("\n") == 1 and "--backend" in proc.stderr
    if value == "bogus":     # --help and an explicit --backend do not read the variable
        assert run_cli(["tinybn.eval", "cifar", "--help"], env={"TINYBN_BACKEND": value}).returncode == 0
        proc = run_cli(["tinybn.eval", "mnist", "--backend", "numpy", "--train-dir", str(tmp_path / "none")],
                       env={"TINYBN_BACKEND": value})
        assert proc.stderr == f"error: no checkpoint in {tmp_path / 'none'}; train first " \
                              "(python -m tinybn.train mnist)\n"


def test_stop_flag_takes_sigint_and_sigterm_and_restores_the_handlers():
    seen = []

    def mine(signum, frame):
        seen.append(signum)
    previous = {s: signal.signal(s, mine) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        for signum in (signal.SIGTERM, signal.SIGINT):
            with StopFlag() as stop:
                signal.raise_signal(signum)
                assert stop.requested
                with pytest.raises(KeyboardInterrupt):      # a second one aborts
                    signal.raise_signal(signum)
            assert signal.getsignal(signal.SIGINT) is mine and signal.getsignal(signal.SIGTERM) is mine
        assert seen == []
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def test_watch_skips_a_checkpoint_rotated_away_before_it_is_read(cifar, cifar_run, tmp_path, capsys, monkeypatch):
    gone = tmp_path / "model.ckpt-2.npz"      # the name latest() gave, deleted before it is read
    real_latest = checkpoint_manager.CheckpointManager.latest
    calls = []

    def latest_then_rotated(self):
        calls.append(1)
        return str(gone) if len(calls) == 1 else real_latest(self)
    monkeypatch.setattr(checkpoint_manager.CheckpointManager, "latest", latest_then_rotated)
    eval_cifar(cifar, cifar_run, tmp_path / "ev", "--watch", "--stop-at-step", "4", "--eval-interval-secs", "0.01",
               "--batch-size", "8")
    out = capsys.readouterr().out
    assert "step 4: precision @ 1 = " in out and "step 2" not in out
    assert [r.split(",")[0] for r in (tmp_path / "ev" / "eval.csv").read_text().splitlines()] == ["step", "4"]


def test_watch_on_a_missing_dir_waits_says_so_and_ends_quietly_on_ctrl_c(cifar, tmp_path):
    missing = tmp_path / "mistyped"
    proc = subprocess.Popen(
        [sys.executable, "-m", "tinybn.eval", "cifar", "--data-dir", str(cifar), "--train-dir", str(missing),
         "--eval-dir", str(tmp_path / "ev"), "--watch", "--eval-interval-secs", "0.1", "--batch-size", "8",
         "--no-download", "--backend", "numpy"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        # a shell's background job (`make test &`) ignores SIGINT, and a child would inherit that:
        # the user's Ctrl-C is what this test sends, so the child starts with the default action
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    lines = queue.Queue()
    threading.Thread(target=lambda: lines.put(proc.stdout.readline()), daemon=True).start()
    try:
        first = lines.get(timeout=60)
    except queue.Empty:
        first = None
    proc.send_signal(signal.SIGINT)
    rest, err = proc.communicate(timeout=60)
    assert first == f"waiting for a checkpoint in {missing}\n", (first, rest, err)
    assert proc.returncode == 0 and err == "" and rest == "", (proc.returncode, rest, err)
    assert not missing.exists()
