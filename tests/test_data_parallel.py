"""Data parallelism under `mpiexec -n 2` (tinybn.distributed): exactness against one process,
bitwise-equal replicas, the buckets, and the faults of a job (a rank killed, signals, flags
that differ between ranks, resuming with another number of replicas).

The test extra installs mpi4py and the mpich wheel, whose mpiexec lies beside the venv's
python: nothing here is skipped in CI. The library-level checks run
tests/mpi_scripts/dp_train_worker.py under mpiexec and compare what each rank wrote with
references computed here, in one process.
"""
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from mpi_launch import mpiexec_path

from tinybn import checkpoint, optim
from tinybn.distributed import world as world_lib
from tinybn.models import cifar10 as cifar_models
from tinybn.tasks.cifar import EMA_DECAY, make_optimizer
from tinybn.tensor import Tensor

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(HERE, "mpi_scripts"))
import dp_train_worker as worker  # noqa: E402

from test_cli_cifar import write_cifar  # noqa: E402


def environment():
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
               OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", NUMBA_NUM_THREADS="1")
    env.pop("TINYBN_BACKEND", None)
    return env


def mpiexec(n, *argv, timeout=240, check=True):
    cmd = [mpiexec_path(), "-n", str(n), sys.executable, *argv]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=environment(), cwd=ROOT)
    if check:
        assert p.returncode == 0, f"{' '.join(cmd)} exited {p.returncode}:\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}"
    return p


def run_worker(tmp_path, n, model, dtype, steps, size, sync_bn, bucket_bytes=-1):
    out = tmp_path / f"{model}-{dtype}-{n}-{int(sync_bn)}-{bucket_bytes}"
    out.mkdir()
    mpiexec(n, os.path.join(HERE, "mpi_scripts", "dp_train_worker.py"), str(out), model, dtype, str(steps),
            str(size), "1" if sync_bn else "0", str(bucket_bytes))
    return [dict(np.load(out / f"rank{r}.npz")) for r in range(n)]


def assert_states_close(got, want, atol):
    assert got.keys() == want.keys()
    for name in want:
        np.testing.assert_allclose(got[name], want[name], rtol=0, atol=atol, err_msg=name)


# -- exactness -----------------------------------------------------------------------------

@pytest.mark.parametrize("model", ["bn", "tutorial"])
def test_sync_bn_two_replicas_equal_one_process_on_the_whole_batch(tmp_path, model):
    """2 x 8 images with --sync-bn against 1 x 16, 20 float64 steps: every parameter, BN
    statistic, optimizer slot and EMA shadow."""
    ranks = run_worker(tmp_path, 2, model, "float64", 20, 16, sync_bn=True)
    run = worker.build_run(model, np.float64, 16, True, world_lib.SINGLE_PROCESS, str(tmp_path / "one"))
    reference = worker.train(run, 20, 16, np.float64, world_lib.SINGLE_PROCESS)
    assert_states_close(ranks[0], reference, atol=1e-10)
    # the state moved: the comparison is not of two copies of the initial weights
    initial = checkpoint.flatten(worker.build_run(model, np.float64, 16, True, world_lib.SINGLE_PROCESS,
                                                  str(tmp_path / "init")).run_state())
    assert max(np.abs(reference[k] - initial[k]).max() for k in initial if k.startswith("model::")) > 1e-3


def simulate_towers(model_name, steps, size, towers):
    """One process playing `towers` replicas of tower BN: each tower's gradients and BN moving
    statistics from the same starting state, their means, then one optimizer step and EMA."""
    model = cifar_models.MODELS[model_name](rng=np.random.default_rng(0), dtype=np.float64)
    named = list(model.named_parameters())
    opt = make_optimizer(model_name, named, size // towers, towers)
    ema = optim.ExponentialMovingAverage(EMA_DECAY, num_updates=lambda: opt.iterations)
    ema.apply(named, num_updates=0)
    buffers = list(model.named_buffers())
    b = size // towers
    for step in range(steps):
        images, labels = worker.global_batch(step, size, np.float64)
        before = [t.data.copy() for _, t in buffers]
        grads, moving = [], []
        for r in range(towers):
            for t, value in zip((t for _, t in buffers), before):
                t.data = value.copy()
            model.zero_grad()
            x, y = images[r * b:(r + 1) * b], labels[r * b:(r + 1) * b]
            model.loss(model(Tensor(x)), y).backward()
            grads.append([p.grad.copy() for _, p in named])
            moving.append([t.data.copy() for _, t in buffers])
        for i, (_, p) in enumerate(named):
            p.grad = sum(g[i] for g in grads) / towers
        for i, (_, t) in enumerate(buffers):
            t.data = sum(m[i] for m in moving) / towers
        opt.step()
        ema.apply(named)
    state = {"model": model.state_dict(), "optimizer": opt.state_dict(), "ema": ema.state_dict()}
    return checkpoint.flatten(state)


def test_tower_bn_equals_the_mean_of_two_simulated_towers(tmp_path):
    """Without --sync-bn each replica normalises with its own statistics: equal to two towers
    simulated in one process (mean gradient, mean moving statistics), float64, 20 steps."""
    ranks = run_worker(tmp_path, 2, "bn", "float64", 20, 16, sync_bn=False)
    assert_states_close(ranks[0], simulate_towers("bn", 20, 16, 2), atol=1e-10)
    # and tower BN is a different computation from sync BN (the test tells them apart)
    run = worker.build_run("bn", np.float64, 16, False, world_lib.SINGLE_PROCESS, str(tmp_path / "one"))
    big = worker.train(run, 20, 16, np.float64, world_lib.SINGLE_PROCESS)
    assert max(np.abs(big[k] - ranks[0][k]).max() for k in big) > 1e-6


def test_float32_replicas_stay_bitwise_identical_and_buckets_equal_per_tensor(tmp_path):
    """30 float32 steps of the tutorial-with-BN model: both ranks hold bitwise the same state,
    and the default buckets (several, overlapped with backward) give bitwise what one
    allreduce per tensor gives."""
    bucketed = run_worker(tmp_path, 2, "tutorial_bn", "float32", 30, 16, sync_bn=False)
    per_tensor = run_worker(tmp_path, 2, "tutorial_bn", "float32", 30, 16, sync_bn=False, bucket_bytes=0)
    for name in bucketed[0]:
        assert bucketed[0][name].dtype == np.float32 or not name.startswith("model::")
        assert np.array_equal(bucketed[0][name], bucketed[1][name]), name
        assert np.array_equal(bucketed[0][name], per_tensor[0][name]), name


def test_check_replicas_stops_naming_the_first_tensor_that_diverged(tmp_path):
    """Rank 1 nudges one weight from step 4 on; --check-replicas 3 passes at step 3 and stops the
    job at step 6, naming that weight, on rank 0's line alone."""
    out = tmp_path / "diverge"
    out.mkdir()
    p = mpiexec(2, os.path.join(HERE, "mpi_scripts", "dp_train_worker.py"), str(out), "tutorial", "float32",
                "10", "8", "0", "-1", "3", "4", check=False)
    assert p.returncode == 1, p.stdout + p.stderr
    message = (f"error: the replicas diverged by step 6: model::{worker.PERTURBED} differs between ranks "
               "(--check-replicas 3)")
    assert p.stderr.count(message) == 1, p.stderr
    assert not list(out.glob("rank*.npz"))


@pytest.mark.parametrize("batch_size, replicas, decay_steps", [(128, 1, 136718), (64, 2, 136718), (64, 4, 68359),
                                                                (100, 3, 58333)])
def test_the_tutorial_schedule_divides_decay_steps_by_the_replicas(batch_size, replicas, decay_steps):
    """cifar10_multi_gpu_train.py: int(50000 / batch_size / num_gpus * 350); lr 0.1 until then,
    0.01 from that global step (staircase)."""
    w = Tensor(np.zeros(1, np.float32), requires_grad=True)
    opt = make_optimizer("tutorial", [("w", w)], batch_size, replicas)
    assert opt.learning_rate.decay_steps == decay_steps
    assert opt.learning_rate(decay_steps - 1) == pytest.approx(0.1, rel=1e-6)
    assert opt.learning_rate(decay_steps) == pytest.approx(0.01, rel=1e-6)


# -- the command line under mpiexec ------------------------------------------------------------

@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_cifar(tmp_path_factory.mktemp("dp-data"))


def train_args(data, train_dir, *extra):
    return ["-m", "tinybn.train", "cifar", "--data-dir", str(data), "--train-dir", str(train_dir),
            "--batch-size", "4", "--log-every", "5", "--summary-every", "10", "--no-download",
            "--num-threads", "1", "--backend", "numpy", *extra]


def test_two_ranks_train_write_only_on_rank_0_and_evaluate_anywhere(data, tmp_path):
    out = tmp_path / "run"
    p = mpiexec(2, *train_args(data, out, "--max-steps", "10", "--checkpoint-every", "5"))
    first = p.stdout.splitlines()[0]
    assert first.startswith("data parallel: 2 replicas, backend numpy, batch 4 per replica (global 8)"), first
    assert p.stdout.count("step 10, loss = ") == 1         # rank 0's progress only
    arrays, meta = checkpoint.load(out / "model.ckpt-10.npz")
    assert meta["replicas"] == 2 and meta["step"] == 10 and meta["batch_size"] == 4
    assert [r.split(",")[0] for r in open(out / "train.csv").read().splitlines()[1:]] == ["5", "10"]
    # one process, any backend, reads the job's checkpoint
    from tinybn.eval import main as eval_main
    eval_main(["cifar", "--data-dir", str(data), "--train-dir", str(out), "--eval-dir", str(tmp_path / "ev"),
               "--batch-size", "8", "--no-download"])
    assert open(tmp_path / "ev" / "eval.csv").read().splitlines()[1].startswith("10,")


def test_the_global_input_position_is_one_process_order(data, tmp_path):
    """A 2-rank job with batch 4 consumes the single-process order of batch 8: its queue state
    in the checkpoint equals that of one process with --batch-size 8 after as many steps."""
    from tinybn.train import main as train_main
    mpiexec(2, *train_args(data, tmp_path / "two", "--max-steps", "6"))
    train_main(train_args(data, tmp_path / "one", "--max-steps", "6", "--batch-size", "8")[2:])
    two, _ = checkpoint.load(tmp_path / "two" / "model.ckpt-6.npz")
    one, _ = checkpoint.load(tmp_path / "one" / "model.ckpt-6.npz")
    queue = [k for k in one if k.startswith("queue::")]
    assert queue and all(np.array_equal(two[k], one[k]) for k in queue)


def rank_pid(mpiexec_pid, rank):
    """The pid of `rank` among mpiexec's descendants (its PMI_RANK)."""
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                env = dict(kv.split(b"=", 1) for kv in f.read().split(b"\0") if b"=" in kv)
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read()
        except OSError:
            continue
        if env.get(b"PMI_RANK") == str(rank).encode() and b"tinybn.train" in cmd \
                and env.get(b"TINYBN_TEST_JOB") == str(mpiexec_pid).encode():
            return int(pid)
    return None


def start_job(data, out, tag, *extra):
    env = dict(environment(), TINYBN_TEST_JOB=tag)
    cmd = [mpiexec_path(), "-n", "2", sys.executable, *train_args(data, out, *extra)]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)


def wait_for(predicate, timeout=120):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.2)
    return False


def checkpoints(out):
    return sorted(out.glob("model.ckpt-*.npz"), key=lambda p: int(p.stem.split("-")[1]))


def test_a_killed_rank_ends_the_job_and_the_command_resumes(data, tmp_path):
    out = tmp_path / "run"
    job = start_job(data, out, "kill9", "--max-steps", "100000", "--checkpoint-every", "3")
    try:
        assert wait_for(lambda: len(checkpoints(out)) >= 2), "no checkpoint appeared"
        pid = rank_pid("kill9", 1)
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        job.wait(timeout=30)            # ends, never hangs: TimeoutExpired fails the test
    finally:
        if job.poll() is None:
            job.kill()
        job.communicate()
    assert job.returncode != 0
    steps = []
    for path in checkpoints(out):
        _, meta = checkpoint.load(path)     # every checkpoint on disk is whole
        steps.append(meta["step"])
    last = max(steps)
    p = mpiexec(2, *train_args(data, out, "--max-steps", str(last + 3), "--checkpoint-every", "3"))
    assert f"resumed from {out / f'model.ckpt-{last}.npz'} at step {last}" in p.stdout
    assert checkpoint.load(out / f"model.ckpt-{last + 3}.npz")[1]["step"] == last + 3


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_to_mpiexec_saves_and_every_rank_exits_0(data, tmp_path, signum):
    out = tmp_path / "run"
    job = start_job(data, out, f"signal{signum}", "--max-steps", "100000", "--checkpoint-every", "1000")
    try:
        assert wait_for(lambda: (out / "train.csv").exists() and len(open(out / "train.csv").readlines()) > 2)
        job.send_signal(signum)
        stdout, stderr = job.communicate(timeout=60)
    finally:
        if job.poll() is None:
            job.kill()
    assert job.returncode == 0, stderr
    saved = checkpoints(out)
    assert len(saved) == 1 and f"saved {saved[0]}" in stdout
    assert checkpoint.load(saved[0])[1]["step"] > 10


def test_flags_that_differ_between_ranks_are_refused_naming_rank_and_flag(data, tmp_path):
    out = tmp_path / "run"
    cmd = [mpiexec_path(), "-n", "1", sys.executable, *train_args(data, out, "--max-steps", "5"), ":",
           "-n", "1", sys.executable, *train_args(data, out, "--max-steps", "5", "--seed", "3")]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=environment(), cwd=ROOT)
    assert p.returncode != 0
    assert "error: rank 1 has --seed 3, rank 0 has 0" in p.stderr
    assert not checkpoints(out)


def test_a_training_set_of_another_size_on_one_rank_is_refused(data, tmp_path):
    other = write_cifar(tmp_path / "other", n_train=36)
    out = tmp_path / "run"
    cmd = [mpiexec_path(), "-n", "1", sys.executable, *train_args(data, out, "--max-steps", "5"), ":",
           "-n", "1", sys.executable, *train_args(other, out, "--max-steps", "5")]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=environment(), cwd=ROOT)
    assert p.returncode != 0
    assert "error: rank 1 has the training set's size 180, rank 0 has 200" in p.stderr, p.stderr


@pytest.mark.parametrize("first, second", [(2, 1), (1, 2)])
def test_resuming_with_another_number_of_replicas_is_refused(data, tmp_path, first, second):
    from tinybn.train import main as train_main
    out = tmp_path / "run"

    def train(n, steps):
        argv = train_args(data, out, "--max-steps", str(steps))
        if n == 1:
            try:
                train_main(argv[2:])
            except SystemExit as e:
                return 1, str(e.code)
            return 0, ""
        p = mpiexec(n, *argv, check=False)
        return p.returncode, p.stderr
    assert train(first, 5)[0] == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    code, message = train(second, 10)
    assert code != 0
    assert f"was written by a job of {first} replica(s), this one has {second}" in message
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before       # nothing was touched


def test_mnist_trains_under_mpiexec(tmp_path):
    from test_cli_mnist import write_mnist
    data = write_mnist(tmp_path / "mnist")
    out = tmp_path / "run"
    p = mpiexec(2, "-m", "tinybn.train", "mnist", "--data-dir", str(data), "--train-dir", str(out),
                "--batch-size", "4", "--max-steps", "6", "--log-every", "3", "--no-download", "--sync-bn",
                "--backend", "numpy")
    assert p.stdout.splitlines()[0].startswith("data parallel: 2 replicas, backend numpy, batch 4 per replica "
                                               "(global 8)")
    assert "batch norm cross-replica (--sync-bn)" in p.stdout.splitlines()[0]
    assert p.stdout.count("eval set") == 1
    assert checkpoint.load(out / "model.ckpt-6.npz")[1]["replicas"] == 2
