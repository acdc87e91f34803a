"""Hostile state: strict loads that validate before assigning, corrupt checkpoint files, temporaries
left by kill -9, checkpoints written but not yet indexed, and input-queue states out of range."""
import errno
import io
import json
import os
import pickle
import re
import shutil
import subprocess
import sys
import zipfile

import numpy as np
import pytest

from tinybn import checkpoint, checkpoint_manager
from tinybn.data.queue import ShuffleQueue
from tinybn.eval import main as eval_main
from tinybn.nn import layers
from tinybn.nn.batchnorm import BatchNorm
from tinybn.optim import ExponentialMovingAverage, Momentum
from tinybn.train import main as train_main

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


# --- checkpoint files a hostile user (or a bad disk) could leave under a checkpoint's name -----
class Marker:
    """Unpickling this creates a file: proof that nothing in a checkpoint is ever unpickled."""
    path = None

    def __reduce__(self):
        return open, (Marker.path, "w")


def npy(array, allow_pickle=False):
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=allow_pickle)
    return buf.getvalue()


def zip_of(path, members):
    with zipfile.ZipFile(path, "w") as z:
        for name, data in members.items():
            z.writestr(name, data)


def header(names, meta="{}", sha256="0" * 64):
    text = json.dumps({"format": 1, "names": names, "meta": meta, "sha256": sha256}).encode()
    return npy(np.frombuffer(text, np.uint8))


def hostile_file(kind, path, good):
    members = {"__tinybn__.npy": header(["w"]), "a0.npy": npy(np.ones(3))}
    if kind == "zip of garbage":
        zip_of(path, {"__tinybn__": b"\x00garbage", "a0": b"more garbage"})
    elif kind == "garbage array member":
        zip_of(path, dict(members, **{"a0.npy": b"\x93NOTNUMPY garbage"}))
    elif kind == "meta not a string":
        zip_of(path, dict(members, **{"__tinybn__.npy": header(["w"], meta=5)}))
    elif kind in ("pickled header", "pickled array"):
        evil = npy(np.array([Marker()], dtype=object), allow_pickle=True)
        zip_of(path, dict(members, **{"__tinybn__.npy" if kind == "pickled header" else "a0.npy": evil}))
    elif kind == "bare pickle":
        path.write_bytes(pickle.dumps(Marker()))
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "directory":
        path.mkdir()
    else:   # truncated at a fraction of the good file
        path.write_bytes(good[:int(len(good) * float(kind.split()[1]))])


HOSTILE = ["zip of garbage", "garbage array member", "meta not a string", "directory",     # crashed before
           "pickled header", "pickled array", "bare pickle", "empty", "truncated 0.01", "truncated 0.5",
           "truncated 0.99"]


@pytest.mark.parametrize("kind", HOSTILE)
def test_hostile_checkpoint_files_are_refused_without_unpickling(tmp_path, kind):
    Marker.path = str(tmp_path / "unpickled")
    good = tmp_path / "good.npz"
    checkpoint.save(good, {"w": np.ones(3)}, {"step": 1})
    path = tmp_path / "model.ckpt-5.npz"
    hostile_file(kind, path, good.read_bytes())
    before = path.read_bytes() if path.is_file() else None
    with pytest.raises(checkpoint.CheckpointError, match=r"checkpoint '.*model\.ckpt-5\.npz': "):
        checkpoint.load(path)
    assert not os.path.exists(Marker.path)
    assert (path.read_bytes() if path.is_file() else None) == before


def test_checkpoint_of_garbage_members_is_one_line_error_in_train_and_eval(tmp_path):
    data, run = write_cifar(tmp_path / "data"), tmp_path / "run"
    train(data, run, "--max-steps", "2")
    zip_of(run / "model.ckpt-2.npz", {"__tinybn__": b"\x00garbage", "a0": b"more"})
    with pytest.raises(SystemExit, match=r"^error: cannot resume: .*model\.ckpt-2\.npz'?: member '__tinybn__' "
                                         r"is not a numpy array"):
        train(data, run, "--max-steps", "4")
    with pytest.raises(SystemExit, match=r"model\.ckpt-2\.npz'?: member '__tinybn__' is not a numpy array"):
        eval_main(["cifar", "--data-dir", str(data), "--train-dir", str(run), "--eval-dir", str(tmp_path / "ev"),
                   "--batch-size", "8", "--no-download"])


def test_atomic_write_removes_its_temporary_when_the_disk_is_full(tmp_path):
    target = tmp_path / "model.ckpt-1.npz"
    target.write_bytes(b"the previous checkpoint")

    def disk_full(f):
        f.write(b"x" * 1000)
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OSError, match="No space left"):
        checkpoint.atomic_write(target, disk_full)
    assert os.listdir(tmp_path) == ["model.ckpt-1.npz"] and target.read_bytes() == b"the previous checkpoint"


# --- kill -9 mid-save: its temporary file, and a checkpoint written but not yet indexed ---------
WRITER = """
import sys, time
from tinybn import checkpoint
def write(f):
    f.write(b"half a checkpoint"); f.flush(); print("writing", flush=True); time.sleep(600)
checkpoint.atomic_write(sys.argv[1], write)
"""


def start_writer(path):
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], stdout=subprocess.PIPE, text=True)
    assert writer.stdout.readline() == "writing\n"      # its temporary file exists now
    return writer


def stop(writer):
    writer.kill()                       # kill -9
    writer.wait()
    writer.stdout.close()


def test_temporaries_of_a_killed_writer_are_removed_and_nothing_else(tmp_path):
    killed = start_writer(tmp_path / "model.ckpt-7.npz")
    stop(killed)
    (dead,) = [n for n in os.listdir(tmp_path) if n.endswith(".tmp")]
    assert dead.startswith(".model.ckpt-7.npz.")
    live = start_writer(tmp_path / "model.ckpt-8.npz")     # a writer still at work: its file stays
    try:
        (busy,) = [n for n in os.listdir(tmp_path) if n.startswith(".model.ckpt-8.npz.")]
        stale = [".checkpoint.x7k2m9q1.tmp"]                      # an older tinybn's index temporary
        keep = ["notes.tmp", ".model.ckpt-3.npz.keep", ".other.npz.abcd1234.tmp", "model.ckpt-x.npz.abcd1234.tmp",
                ".model.ckpt-5.npz.another-host.1.abcd1234.tmp"]    # written elsewhere: cannot tell, left alone
        for name in stale + keep:
            (tmp_path / name).write_bytes(b"x")
        before = sorted(os.listdir(tmp_path))
        checkpoint_manager.CheckpointManager(tmp_path, read_only=True)      # a reader (eval) changes nothing
        assert sorted(os.listdir(tmp_path)) == before
        mgr = checkpoint_manager.CheckpointManager(tmp_path)
        assert sorted(os.listdir(tmp_path)) == sorted(keep + [busy])
        assert mgr.latest() is None
    finally:
        stop(live)


def save_unindexed(mgr, step, arrays):
    """A save that was killed after its checkpoint was in place, before the index write."""
    checkpoint.save(os.path.join(mgr.directory, f"{mgr.prefix}-{step}.npz"), arrays, {"step": step})


def test_checkpoint_written_but_not_indexed_is_the_newest(tmp_path, capsys):
    mgr = checkpoint_manager.CheckpointManager(tmp_path, max_to_keep=3)
    for step in (1, 2):
        mgr.save(step, {"w": np.array(float(step))})
    save_unindexed(mgr, 3, {"w": np.array(3.0)})
    assert mgr.latest().endswith("model.ckpt-3.npz")
    path, arrays, meta = mgr.restore_latest()
    assert path.endswith("model.ckpt-3.npz") and arrays["w"] == 3.0 and meta["step"] == 3
    mgr.save(4, {"w": np.array(4.0)})
    assert [os.path.basename(p) for p in mgr.all()] == ["model.ckpt-2.npz", "model.ckpt-3.npz", "model.ckpt-4.npz"]

    # an unindexed file that does not load is skipped with a warning naming it; the older one is used
    (tmp_path / "model.ckpt-9.npz").write_bytes(b"not a checkpoint")
    path, arrays, _ = mgr.restore_latest()
    assert path.endswith("model.ckpt-4.npz") and arrays["w"] == 4.0
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and re.fullmatch(r"warning: skipping .*model\.ckpt-9\.npz: .*trying the next newest.*",
                                          err[0])
    # and when none loads, that is an error, not a fresh start
    for p in mgr.all():
        open(p, "wb").close()
    with pytest.raises(checkpoint.CheckpointError, match=r"no checkpoint in .* loads; the newest: .*model\.ckpt-9"):
        mgr.restore_latest(warn=lambda message: None)


def test_train_resumes_from_a_checkpoint_written_but_not_indexed(tmp_path, capsys):
    data, run, other = write_cifar(tmp_path / "data"), tmp_path / "run", tmp_path / "other"
    train(data, run, "--max-steps", "4")
    train(data, other, "--max-steps", "6")
    shutil.copy(other / "model.ckpt-6.npz", run)       # as if killed between the checkpoint and the index
    capsys.readouterr()
    train(data, run, "--max-steps", "8")
    assert "resumed from " + str(run / "model.ckpt-6.npz") + " at step 6" in capsys.readouterr().out


# --- the input queue's position and sizes, restored from a checkpoint ------------------------
def queue_state(**changes):
    x, labels = np.zeros((50, 2, 2, 3), np.uint8), np.arange(50) % 10
    with ShuffleQueue(x, labels, **QUEUE) as q:
        for _ in range(9):
            q.next_batch()
        state = q.state_dict()
    state.update(changes)
    return {k: v for k, v in state.items() if v is not None}


QUEUE = dict(batch_size=5, min_after_dequeue=12, seed=3, chunk_size=3, transform=lambda a, rng: a * 1.0)
OUT_OF_RANGE = {
    "absurd position": (dict(batches=10 ** 9), "inconsistent: 1000000000 batches"),
    "absurd chunk count": (dict(next_chunk=10 ** 17), "inconsistent"),
    "negative position": (dict(batches=-1), "batches is -1"),
    "fractional position": (dict(batches=np.float64(9.5)), "batches must be an integer"),
    "buffer position not yet inserted": (dict(buffer=np.arange(50, 62)), r"outside \[0, 57\)"),
    "buffer position twice": (dict(buffer=np.zeros(12, np.int64)), "or twice"),
    "negative buffer position": (dict(buffer=-np.ones(12, np.int64)), "outside"),
    "buffer too long": (dict(buffer=np.arange(10 ** 6)), "inconsistent"),
    "absurd position, no buffer": (dict(batches=10 ** 9, next_chunk=None, buffer=None), "replaying more than"),
}


@pytest.mark.parametrize("case", OUT_OF_RANGE)
def test_queue_state_out_of_range_is_refused(case, monkeypatch):
    changes, message = OUT_OF_RANGE[case]
    state = queue_state(**changes)
    takes = []

    def counted_take(self, with_payload):     # the base code replayed 10**9 batches here: stop it early
        takes.append(1)
        if len(takes) > 1000:
            raise AssertionError("replaying the absurd position")
        return real_take(self, with_payload)

    real_take = ShuffleQueue._take
    monkeypatch.setattr(ShuffleQueue, "_take", counted_take)
    x, labels = np.zeros((50, 2, 2, 3), np.uint8), np.arange(50) % 10
    with pytest.raises(ValueError, match=message):
        ShuffleQueue(x, labels, **QUEUE, state=state)


def test_queue_state_of_another_data_set_size_says_so():
    x, labels = np.zeros((40, 2, 2, 3), np.uint8), np.arange(40) % 10
    with pytest.raises(ValueError, match="^the checkpoint was made with a data set of 50 images, this one has 40"):
        ShuffleQueue(x, labels, **QUEUE, state=queue_state())
    # a state without num_examples: the min_after_dequeue mismatch is still said in those terms
    kwargs = dict(QUEUE, min_after_dequeue=8)
    with pytest.raises(ValueError, match="min_after_dequeue is 12 .* a data set of another size .* 40 images"):
        ShuffleQueue(x, labels, **kwargs, state=queue_state(num_examples=None))


def test_resume_with_a_smaller_data_set_or_an_absurd_position_is_one_line_error(tmp_path):
    data, small, run = write_cifar(tmp_path / "data"), write_cifar(tmp_path / "small", n_train=8), tmp_path / "run"
    train(data, run, "--max-steps", "2")
    with pytest.raises(SystemExit, match="^error: the checkpoint was made with a data set of 200 images, "
                                         "this one has 40"):
        train(small, run, "--max-steps", "4")
    arrays, meta = checkpoint.load(run / "model.ckpt-2.npz")
    arrays["queue::batches"] = np.array(10 ** 9)
    checkpoint.save(run / "model.ckpt-2.npz", arrays, meta)
    with pytest.raises(SystemExit, match="^error: queue state is inconsistent: 1000000000 batches"):
        train(data, run, "--max-steps", "4")


# --- tiny CIFAR-10 files and the CLI, as in test_cli_cifar.py ------------------------------------
def write_cifar(folder, n_train=40, n_test=24, seed=0):
    rng = np.random.default_rng(seed)
    d = folder / "cifar-10-batches-bin"
    d.mkdir(parents=True)
    for i, n in enumerate([n_train] * 5 + [n_test]):
        records = rng.integers(0, 256, (n, 3073), dtype=np.uint8)
        records[:, 0] = rng.integers(0, 10, n)
        records.tofile(d / (f"data_batch_{i + 1}.bin" if i < 5 else "test_batch.bin"))
    return folder


def train(data, train_dir, *extra):
    return train_main(["cifar", "--data-dir", str(data), "--train-dir", str(train_dir), "--batch-size", "8",
                       "--log-every", "5", "--summary-every", "10", "--no-download", "--num-threads", "1", *extra])
