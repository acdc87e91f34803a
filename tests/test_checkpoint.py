"""Checkpoints: exact round trips, atomic replacement, refusal of every damaged file, the manager."""
import json
import os

import numpy as np
import pytest
from hypothesis import given, strategies as st
from hypothesis.extra import numpy as hnp

from tinybn import checkpoint
from tinybn.checkpoint import CheckpointError, flatten, load, save, unflatten
from tinybn.checkpoint_manager import CheckpointManager

DTYPES = [np.float32, np.float64, np.int32, np.int64, np.uint8, np.bool_, np.dtype(">f4"), np.float16]
arrays_st = st.sampled_from(DTYPES).flatmap(
    lambda dt: hnp.arrays(dt, hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=4)))
json_st = st.recursive(
    st.none() | st.booleans() | st.integers(-2**62, 2**62) | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=8)


def sample(rng=None):
    rng = np.random.default_rng(0) if rng is None else rng
    return {"model::conv1/kernel": rng.normal(size=(3, 3, 2, 4)).astype(np.float32),
            "optimizer::conv1/kernel/Momentum": rng.normal(size=(3, 3, 2, 4)),
            "iterations": np.array(17, dtype=np.int64)}


def assert_same(got, want):
    assert list(got) == list(want)
    for k in want:
        w = np.asarray(want[k])
        assert got[k].dtype == w.dtype and got[k].shape == w.shape, k
        assert np.array_equal(got[k], w, equal_nan=w.dtype.kind == "f"), k


@given(st.dictionaries(st.text(max_size=12), arrays_st, max_size=5), st.dictionaries(st.text(max_size=6), json_st))
def test_round_trip_is_exact(tmp_path_factory, arrays, meta):
    path = tmp_path_factory.mktemp("rt") / "c.npz"
    save(path, arrays, meta)
    got, got_meta = load(path)
    assert_same(got, arrays)
    assert got_meta == meta
    with np.load(path, allow_pickle=False) as npz:   # a plain npz, readable without tinybn
        assert json.loads(npz["__tinybn__"].tobytes())["format"] == checkpoint.FORMAT_VERSION


def test_scalars_and_nan_inf_survive(tmp_path):
    arrays = {"s": 2.5, "i": 7, "v": np.array([np.nan, np.inf, -0.0])}
    save(tmp_path / "c.npz", arrays, {"lr": 0.1, "flags": {"model": "bn", "steps": [1, 2]}})
    got, meta = load(tmp_path / "c.npz")
    assert got["s"].dtype == np.float64 and got["s"] == 2.5 and got["i"] == 7
    assert np.isnan(got["v"][0]) and got["v"][1] == np.inf and np.signbit(got["v"][2])
    assert meta == {"lr": 0.1, "flags": {"model": "bn", "steps": [1, 2]}}


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="meta: not JSON-serialisable"):
        save(tmp_path / "c.npz", {}, {"x": object()})
    with pytest.raises(ValueError, match="meta: expected a dict"):
        save(tmp_path / "c.npz", {}, [1])
    with pytest.raises(ValueError, match=r"arrays\['o'\]: object arrays"):
        save(tmp_path / "c.npz", {"o": np.array([None, 1], dtype=object)})
    with pytest.raises(ValueError, match="arrays: names must be strings"):
        save(tmp_path / "c.npz", {1: np.zeros(2)})
    assert os.listdir(tmp_path) == []
    with pytest.raises(FileNotFoundError):
        load(tmp_path / "missing.npz")


# --- atomicity ----------------------------------------------------------------------
@pytest.mark.parametrize("stage", ["savez", "fsync", "replace"])
def test_failed_write_keeps_old_file_and_leaves_no_temp(tmp_path, monkeypatch, stage):
    path = tmp_path / "model.npz"
    old = sample()
    save(path, old, {"step": 1})
    before = path.read_bytes()

    def half_savez(f, **members):
        f.write(b"PK\x03\x04 half an archive")
        raise OSError("disk full")

    def boom(*a, **k):
        raise OSError("crash")

    target = {"savez": (np, "savez", half_savez), "fsync": (os, "fsync", boom),
              "replace": (os, "replace", boom)}[stage]
    monkeypatch.setattr(*target)
    with pytest.raises(OSError):
        save(path, sample(np.random.default_rng(1)), {"step": 2})
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["model.npz"]
    arrays, meta = load(path)
    assert_same(arrays, old)
    assert meta == {"step": 1}


def test_overwrite_replaces_whole_file(tmp_path):
    save(tmp_path / "c.npz", {"a": np.zeros(1000)}, {"v": 1})
    save(tmp_path / "c.npz", {"b": np.ones(2)}, {"v": 2})
    arrays, meta = load(tmp_path / "c.npz")
    assert list(arrays) == ["b"] and meta == {"v": 2}
    assert os.listdir(tmp_path) == ["c.npz"]


# --- damaged files -------------------------------------------------------------------------
def expect_refused(path, match):
    before = path.read_bytes()
    with pytest.raises(CheckpointError, match=match) as e:
        load(path)
    assert str(path) in str(e.value)
    assert isinstance(e.value, ValueError)
    assert path.read_bytes() == before   # never modified or removed


def test_truncated_files_are_refused(tmp_path):
    path = tmp_path / "c.npz"
    save(path, sample(), {"step": 3})
    data = path.read_bytes()
    for n in list(range(0, len(data), 97)) + [len(data) - 1, len(data) - 22]:
        path.write_bytes(data[:n])
        expect_refused(path, "empty" if n == 0 else "corrupt|not an npz|no header|do not match")


def test_every_single_bit_flip_is_refused_or_harmless(tmp_path):
    # a flip in zip bookkeeping that carries no data (a timestamp) may load; any flip that
    # would change names, order, dtypes, shapes, values or meta must be refused
    path = tmp_path / "c.npz"
    arrays = {"w": np.arange(6, dtype=np.float32).reshape(2, 3), "i": np.array([1, 2], np.int64)}
    save(path, arrays, {"step": 3})
    data = path.read_bytes()
    payload = set()
    for a in arrays.values():
        start = data.find(a.tobytes())
        assert start >= 0
        payload.update(range(start, start + a.nbytes))
    refused = set()
    for i in range(len(data)):
        damaged = bytearray(data)
        damaged[i] ^= 1 << (i % 8)
        path.write_bytes(bytes(damaged))
        try:
            got, meta = load(path)
        except CheckpointError as e:
            assert str(path) in str(e)
            refused.add(i)
            continue
        assert_same(got, arrays)
        assert meta == {"step": 3}
    assert payload <= refused and len(refused) > 0.7 * len(data)


def test_payload_flip_names_the_problem(tmp_path):
    path = tmp_path / "c.npz"
    w = np.full(64, 1.25, dtype=np.float64)
    save(path, {"w": w})
    data = bytearray(path.read_bytes())
    data[data.find(w.tobytes()) + 100] ^= 0x40
    path.write_bytes(bytes(data))
    expect_refused(path, "corrupt")


def test_garbage_empty_npy_and_foreign_npz_are_refused(tmp_path):
    path = tmp_path / "c.npz"
    path.write_bytes(b"")
    expect_refused(path, "file is empty")
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    expect_refused(path, "corrupt")
    with open(path, "wb") as f:
        np.save(f, np.arange(3))
    expect_refused(path, "not an npz archive")
    with open(path, "wb") as f:
        np.savez(f, a=np.arange(3))
    expect_refused(path, "not a tinybn checkpoint")
    path.write_bytes(b"\x80\x04\x95 pickled")
    expect_refused(path, "corrupt")


def _rewrite(path, edit):
    """Re-pack a checkpoint's members after edit(members, header): a well-formed zip that lies."""
    with np.load(path) as npz:
        members = {k: npz[k] for k in npz.files}
    header = json.loads(members["__tinybn__"].tobytes())
    edit(members, header)
    members["__tinybn__"] = np.frombuffer(json.dumps(header).encode(), np.uint8)
    with open(path, "wb") as f:
        np.savez(f, **members)


def test_checksum_and_version_are_verified(tmp_path):
    path = tmp_path / "c.npz"
    save(path, {"a": np.zeros(3), "b": np.ones(3)}, {"step": 1})
    _rewrite(path, lambda m, h: m.update(a0=m["a1"], a1=m["a0"]))   # swapped arrays
    expect_refused(path, "checksum mismatch")
    save(path, {"a": np.zeros(3)}, {"step": 1})
    _rewrite(path, lambda m, h: h.update(meta='{"step": 2}'))
    expect_refused(path, "checksum mismatch")
    save(path, {"a": np.zeros(3)})
    _rewrite(path, lambda m, h: h.update(format=99))
    expect_refused(path, "unknown format version 99")
    save(path, {"a": np.zeros(3)})
    _rewrite(path, lambda m, h: m.pop("a0"))
    expect_refused(path, "do not match the header's 1 arrays")


# --- structured state ---------------------------------------------------------------------------
def test_flatten_unflatten():
    k, m = np.ones((2, 2)), np.zeros((2, 2))
    tree = {"model": {"conv1/kernel": k}, "optimizer": {"conv1/kernel/Momentum": m, "iterations": 3},
            "step": np.int64(5), "data": {"rng": {"state": 1, "inc": 2}}}
    flat = flatten(tree)
    assert list(flat) == ["model::conv1/kernel", "optimizer::conv1/kernel/Momentum", "optimizer::iterations",
                          "step", "data::rng/state", "data::rng/inc"]
    assert flat["model::conv1/kernel"] is k
    back = unflatten(flat)
    assert back["model"] == {"conv1/kernel": k} and back["step"] == 5
    assert back["data"] == {"rng/state": 1, "rng/inc": 2}   # deeper levels come back as TF-style names


def test_flatten_bad_input():
    with pytest.raises(ValueError, match="namespace 'a::b' must be a string without"):
        flatten({"a::b": {"x": 1}})
    with pytest.raises(ValueError, match="two entries flatten to the same name 'm::a/b'"):
        flatten({"m": {"a/b": 1, "a": {"b": 2}}})
    with pytest.raises(ValueError, match="tree: expected a dict"):
        flatten([1])
    with pytest.raises(ValueError, match="'m' is both a namespace and an array"):
        unflatten({"m": 1, "m::a": 2})


def test_structured_state_round_trip(tmp_path):
    tree = {"model": {"conv1/kernel": np.ones((3, 3, 1, 2), np.float32), "bn1/moving_mean": np.zeros(2)},
            "ema": {"conv1/kernel/ExponentialMovingAverage": np.full((3, 3, 1, 2), 0.5, np.float32)}}
    save(tmp_path / "c.npz", flatten(tree), {"step": 10})
    arrays, meta = load(tmp_path / "c.npz")
    back = unflatten(arrays)
    assert list(back) == ["model", "ema"]
    for ns in tree:
        assert_same(back[ns], tree[ns])


# --- the manager ------------------------------------------------------------------------------------
def names(paths):
    return [os.path.basename(p) for p in paths]


def test_manager_keeps_last_n_in_save_order(tmp_path):
    mgr = CheckpointManager(tmp_path, max_to_keep=3)
    assert mgr.latest() is None and mgr.all() == [] and mgr.restore_latest() is None
    for step in range(0, 80, 10):
        path = mgr.save(step, {"w": np.full(2, step)}, {"lr": 0.1})
        assert path == str(tmp_path / f"model.ckpt-{step}.npz") and mgr.latest() == path
    assert names(mgr.all()) == ["model.ckpt-50.npz", "model.ckpt-60.npz", "model.ckpt-70.npz"]
    assert sorted(os.listdir(tmp_path)) == ["checkpoint"] + names(mgr.all())
    path, arrays, meta = mgr.restore_latest()
    assert path == mgr.latest() and arrays["w"][0] == 70 and meta == {"lr": 0.1, "step": 70}
    index = json.loads((tmp_path / "checkpoint").read_text())
    assert index["latest"] == "model.ckpt-70.npz" and index["all"] == names(mgr.all())
    # a run restarted from an older step: latest is what was saved last, not the highest step
    mgr.save(55, {"w": np.zeros(2)})
    assert names(mgr.all()) == ["model.ckpt-60.npz", "model.ckpt-70.npz", "model.ckpt-55.npz"]
    mgr.save(60, {"w": np.ones(2)})   # same step again: replaced and moved to the end
    assert names(mgr.all()) == ["model.ckpt-70.npz", "model.ckpt-55.npz", "model.ckpt-60.npz"]
    assert load(mgr.latest())[0]["w"][0] == 1


def test_manager_keep_all_and_custom_prefix(tmp_path):
    mgr = CheckpointManager(tmp_path / "new" / "dir", max_to_keep=None, prefix="bn")
    for step in range(7):
        mgr.save(step, {})
    assert names(mgr.all()) == [f"bn-{s}.npz" for s in range(7)]


def test_manager_index_missing_or_corrupt_falls_back_to_scan(tmp_path):
    mgr = CheckpointManager(tmp_path, max_to_keep=4)
    for step in (5, 100, 20):
        mgr.save(step, {"s": np.array(step)})
    assert mgr.latest().endswith("model.ckpt-20.npz")
    for bad in (b"", b"{not json", b'{"format": 1, "all": ["../../etc/passwd"]}', b'{"format": 7, "all": []}',
                b'[1, 2]', b'{"format": 1, "all": ["model.ckpt-999.npz"]}'):
        (tmp_path / "checkpoint").write_bytes(bad)
        assert names(mgr.all()) == ["model.ckpt-5.npz", "model.ckpt-20.npz", "model.ckpt-100.npz"], bad
        assert mgr.latest().endswith("model.ckpt-100.npz")
    os.unlink(tmp_path / "checkpoint")
    assert mgr.latest().endswith("model.ckpt-100.npz")
    # temporaries and look-alikes are never taken for checkpoints
    for junk in (".model.ckpt-900.npz.x1y2.tmp", "model.ckpt-901.npz.tmp", "model.ckpt-x.npz", "other-902.npz"):
        (tmp_path / junk).write_bytes(b"junk")
    assert mgr.latest().endswith("model.ckpt-100.npz")
    mgr.save(101, {})   # rebuilds a valid index
    assert json.loads((tmp_path / "checkpoint").read_text())["all"] == names(mgr.all())
    assert names(mgr.all())[-1] == "model.ckpt-101.npz" and len(mgr.all()) == 4


def test_manager_crash_points_keep_previous_good_checkpoint(tmp_path, monkeypatch):
    mgr = CheckpointManager(tmp_path, max_to_keep=2)
    mgr.save(1, {"w": np.array(1.0)})
    mgr.save(2, {"w": np.array(2.0)})
    real_atomic_write = checkpoint.atomic_write

    def crash_on_index(path, write):
        if os.path.basename(path) == "checkpoint":
            raise OSError("killed before the index was written")
        real_atomic_write(path, write)

    monkeypatch.setattr(checkpoint, "atomic_write", crash_on_index)
    with pytest.raises(OSError):
        mgr.save(3, {"w": np.array(3.0)})
    monkeypatch.undo()
    # nothing was deleted; step 3 was written completely before the crash, so it is the newest
    # although the index (still pointing at step 2) does not list it yet
    assert sorted(os.listdir(tmp_path)) == ["checkpoint"] + [f"model.ckpt-{s}.npz" for s in (1, 2, 3)]
    assert json.loads((tmp_path / "checkpoint").read_text())["latest"] == "model.ckpt-2.npz"
    assert mgr.latest().endswith("model.ckpt-3.npz") and load(mgr.latest())[0]["w"] == 3.0

    def crash_on_unlink(path):
        raise OSError("killed while deleting")

    monkeypatch.setattr(os, "unlink", crash_on_unlink)
    with pytest.raises(OSError):
        mgr.save(4, {"w": np.array(4.0)})
    monkeypatch.undo()
    assert names(mgr.all()) == ["model.ckpt-3.npz", "model.ckpt-4.npz"]
    mgr.save(5, {"w": np.array(5.0)})   # leftovers of both crashes are cleaned up now
    assert sorted(os.listdir(tmp_path)) == ["checkpoint", "model.ckpt-4.npz", "model.ckpt-5.npz"]


def test_manager_restore_skips_corrupt_newest(tmp_path):
    mgr = CheckpointManager(tmp_path)
    mgr.save(1, {"w": np.array(1.0)})
    newest = mgr.save(2, {"w": np.array(2.0)})
    with open(newest, "r+b") as f:
        f.truncate(100)
    path, arrays, meta = mgr.restore_latest()
    assert path.endswith("model.ckpt-1.npz") and meta["step"] == 1 and arrays["w"] == 1.0
    assert os.path.getsize(newest) == 100   # left in place for inspection


def test_manager_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="max_to_keep: expected a positive int"):
        CheckpointManager(tmp_path, max_to_keep=0)
    with pytest.raises(ValueError, match="prefix: expected a plain file name"):
        CheckpointManager(tmp_path, prefix="a/b")
    mgr = CheckpointManager(tmp_path)
    for step in (-1, 1.5, True, "3"):
        with pytest.raises(ValueError, match="step: expected a non-negative int"):
            mgr.save(step, {})
    with pytest.raises(ValueError, match="meta: 'step' is 4 but the checkpoint step is 5"):
        mgr.save(5, {}, {"step": 4})
    assert os.listdir(tmp_path) == []


def test_manager_read_only_creates_and_deletes_nothing(tmp_path):
    missing = tmp_path / "typo"
    assert CheckpointManager(missing, read_only=True).latest() is None and not missing.exists()
    CheckpointManager(tmp_path).save(1, {"w": np.array(1.0)})
    stale = tmp_path / ".model.ckpt-2.npz.x7k2m9q1.tmp"      # an older tinybn's leftover: a writer deletes it
    stale.write_bytes(b"x")
    reader = CheckpointManager(tmp_path, read_only=True)
    assert stale.exists() and reader.latest().endswith("model.ckpt-1.npz")
    with pytest.raises(ValueError, match="read_only=True.*cannot save"):
        reader.save(2, {})
    CheckpointManager(tmp_path)
    assert not stale.exists()
