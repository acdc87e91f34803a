"""Atomic checkpoints: named numpy arrays plus JSON metadata in one .npz, no pickle.

File format (FORMAT_VERSION 1): an ordinary numpy .npz archive (np.load(path,
allow_pickle=False) opens it) holding
    "__tinybn__"        uint8 array: UTF-8 JSON {"format": 1, "names": [...],
                        "meta": "<JSON text of meta>", "sha256": "<hex>"}
    "a0", "a1", ...     the arrays, in the order of "names"
Arrays are stored under positional member names so that any string may name an
array ("model::conv1/kernel", names with dots or spaces). The sha256 covers the
meta text, then for each array in order its name, dtype, shape and C-order
bytes, so a file whose members were swapped, renamed or damaged is refused even
where the zip CRCs would not notice.

Writing never leaves a half-written file under the final name: the archive is
written to a hidden temporary file in the same directory, flushed and fsynced,
then os.replace()d onto the name (atomic on POSIX and Windows), and the
directory is fsynced. A previous checkpoint of the same name stays intact until
the new one is complete.

Structured trainer state goes through flatten()/unflatten(): top-level
namespaces are joined to names with "::" ("model::conv1/kernel",
"optimizer::conv1/kernel/Momentum", "step"), because state_dict() names already
contain "/".

CheckpointManager keeps the last `max_to_keep` checkpoints
"<prefix>-<step>.npz" and a JSON index file "checkpoint" listing them oldest
first. Order of a save: new checkpoint (atomic), index (atomic), then deletion
of the oldest. A crash at any point leaves the previous good checkpoint on disk
and reachable through the index or, if the index is missing or corrupt, through
a scan of the directory.
"""
import hashlib
import io
import json
import os
import re
import tempfile
import zipfile

import numpy as np

FORMAT_VERSION = 1
NAMESPACE_SEP = "::"
_HEADER = "__tinybn__"
_INDEX_FORMAT = 1


class CheckpointError(ValueError):
    """A checkpoint file that cannot be trusted: truncated, corrupt, not ours, or a newer format."""


# --- atomic files -------------------------------------------------------------
def _fsync_dir(directory):
    if not hasattr(os, "O_DIRECTORY"):  # Windows cannot open a directory; os.replace is enough there
        return
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path, write):
    """Call write(binary file) on a temporary file next to `path`, then move it onto `path`.

    On any exception the temporary file is removed and `path` is untouched."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=directory, prefix="." + os.path.basename(path) + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    _fsync_dir(directory)


# --- one checkpoint file ----------------------------------------------------------
def _digest(meta_text, names, arrays):
    h = hashlib.sha256()
    h.update(meta_text.encode("utf-8"))
    for name, a in zip(names, arrays):
        # lengths frame every field so that no two different contents hash the same bytes
        for part in (name.encode("utf-8"), a.dtype.str.encode(), repr(a.shape).encode()):
            h.update(len(part).to_bytes(8, "little") + part)
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


def _as_arrays(arrays):
    if not isinstance(arrays, dict):
        raise ValueError(f"arrays: expected a dict of name -> array, got {type(arrays).__name__}")
    names, values = [], []
    for name, value in arrays.items():
        if not isinstance(name, str):
            raise ValueError(f"arrays: names must be strings, got {name!r}")
        a = np.asarray(value)
        if a.dtype.hasobject:
            raise ValueError(f"arrays[{name!r}]: object arrays cannot be stored without pickle")
        names.append(name)
        values.append(a)
    return names, values


def save(path, arrays, meta=None):
    """Write {name: array} and a JSON-serialisable `meta` dict atomically to `path` (.npz)."""
    names, values = _as_arrays(arrays)
    meta = {} if meta is None else meta
    if not isinstance(meta, dict):
        raise ValueError(f"meta: expected a dict, got {type(meta).__name__}")
    try:
        meta_text = json.dumps(meta)
    except (TypeError, ValueError) as e:
        raise ValueError(f"meta: not JSON-serialisable ({e})") from None
    header = {"format": FORMAT_VERSION, "names": names, "meta": meta_text,
              "sha256": _digest(meta_text, names, values)}
    members = {_HEADER: np.frombuffer(json.dumps(header).encode("utf-8"), dtype=np.uint8)}
    members.update((f"a{i}", a) for i, a in enumerate(values))
    atomic_write(path, lambda f: np.savez(f, **members))
    return os.fspath(path)


def load(path):
    """(arrays, meta) from a file written by save(); CheckpointError if it cannot be trusted.

    The file is only read, never modified. A missing file is FileNotFoundError."""
    path = os.fspath(path)
    with open(path, "rb") as f:
        data = f.read()

    def fail(problem):
        return CheckpointError(f"checkpoint {path!r}: {problem}")

    if not data:
        raise fail("file is empty")
    try:
        npz = np.load(io.BytesIO(data), allow_pickle=False)
        if not isinstance(npz, np.lib.npyio.NpzFile):   # a plain .npy file loads as one array
            raise fail("not an npz archive")
        with npz:
            if _HEADER not in npz.files:
                raise fail("not a tinybn checkpoint (no header member)")
            raw = npz[_HEADER]
            if raw.dtype != np.uint8 or raw.ndim != 1:
                raise fail("malformed header member")
            header = json.loads(raw.tobytes().decode("utf-8"))
            if not isinstance(header, dict) or "format" not in header:
                raise fail("malformed header")
            if header["format"] != FORMAT_VERSION:
                raise fail(f"unknown format version {header['format']!r} (this tinybn reads {FORMAT_VERSION})")
            names, meta_text, digest = header["names"], header["meta"], header["sha256"]
            if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
                raise fail("malformed header names")
            expected = {_HEADER} | {f"a{i}" for i in range(len(names))}
            if set(npz.files) != expected:
                raise fail(f"members {sorted(npz.files)} do not match the header's {len(names)} arrays")
            values = [npz[f"a{i}"] for i in range(len(names))]
    except CheckpointError:
        raise
    except (zipfile.BadZipFile, EOFError, OSError, ValueError, KeyError, TypeError, IndexError,
            NotImplementedError, RuntimeError) as e:   # whatever a damaged zip or .npy header raises
        raise fail(f"unreadable or corrupt ({type(e).__name__}: {e})") from None
    if _digest(meta_text, names, values) != digest:
        raise fail("checksum mismatch: contents differ from what was saved")
    try:
        meta = json.loads(meta_text)
    except ValueError as e:
        raise fail(f"malformed meta ({e})") from None
    return dict(zip(names, values)), meta


# --- structured state -----------------------------------------------------------------
def flatten(tree):
    """{"model": {"conv1/kernel": a}, "step": s} -> {"model::conv1/kernel": a, "step": s}.

    Top-level keys are namespaces joined with "::" (they must not contain it);
    deeper dict levels are joined with "/" (TF's checkpoint naming). Leaves are
    anything np.asarray accepts. unflatten() inverts this for namespaces whose
    values are flat {name: array} dicts, as every state_dict() is."""
    if not isinstance(tree, dict):
        raise ValueError(f"tree: expected a dict, got {type(tree).__name__}")
    flat = {}

    def put(key, value):
        if key in flat:
            raise ValueError(f"tree: two entries flatten to the same name {key!r}")
        flat[key] = value

    def walk(prefix, node, sep="/"):
        for k, v in node.items():
            if not isinstance(k, str):
                raise ValueError(f"tree[{prefix!r}]: keys must be strings, got {k!r}")
            name = f"{prefix}{sep}{k}"
            walk(name, v) if isinstance(v, dict) else put(name, v)

    for ns, value in tree.items():
        if not isinstance(ns, str) or NAMESPACE_SEP in ns:
            raise ValueError(f"tree: namespace {ns!r} must be a string without {NAMESPACE_SEP!r}")
        walk(ns, value, NAMESPACE_SEP) if isinstance(value, dict) else put(ns, value)
    return flat


def unflatten(flat):
    """{"model::conv1/kernel": a, "step": s} -> {"model": {"conv1/kernel": a}, "step": s}."""
    tree = {}
    for key, value in flat.items():
        ns, sep, name = key.partition(NAMESPACE_SEP)
        if not sep:
            if isinstance(tree.get(key), dict):
                raise ValueError(f"flat: {key!r} is both a namespace and an array")
            tree[key] = value
            continue
        group = tree.setdefault(ns, {})
        if not isinstance(group, dict):
            raise ValueError(f"flat: {ns!r} is both a namespace and an array")
        group[name] = value
    return tree


# --- a directory of checkpoints -------------------------------------------------------------
class CheckpointManager:
    """Numbered checkpoints "<prefix>-<step>.npz" in `directory`, keeping the newest `max_to_keep`
    (None keeps all), with a JSON index "checkpoint" listing them in save order, oldest first."""

    INDEX = "checkpoint"

    def __init__(self, directory, max_to_keep=5, prefix="model.ckpt"):
        if max_to_keep is not None and (not isinstance(max_to_keep, int) or max_to_keep < 1):
            raise ValueError(f"max_to_keep: expected a positive int or None, got {max_to_keep!r}")
        if not prefix or os.sep in prefix or "/" in prefix or prefix.startswith("."):
            raise ValueError(f"prefix: expected a plain file name prefix, got {prefix!r}")
        self.directory = os.fspath(directory)
        self.max_to_keep = max_to_keep
        self.prefix = prefix
        self._pattern = re.compile(re.escape(prefix) + r"-(\d+)\.npz")
        os.makedirs(self.directory, exist_ok=True)

    def _path(self, name):
        return os.path.join(self.directory, name)

    def _scan(self):
        """Our checkpoint files on disk (temporaries excluded), by step."""
        found = [(int(m.group(1)), n) for n in os.listdir(self.directory)
                 if (m := self._pattern.fullmatch(n)) and os.path.isfile(self._path(n))]
        return [n for _, n in sorted(found)]

    def _read_index(self):
        """The index's names, or None if it is missing or not a valid index."""
        try:
            with open(self._path(self.INDEX), "rb") as f:
                index = json.loads(f.read().decode("utf-8"))
            names = index["all"]
            if index.get("format") != _INDEX_FORMAT or not isinstance(names, list):
                return None
            if not all(isinstance(n, str) and self._pattern.fullmatch(n) for n in names):
                return None
            return names
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return None

    def all(self):
        """Paths of the kept checkpoints that exist, oldest first (index order, else by step)."""
        names = self._read_index()
        on_disk = set(self._scan())
        if names is None or not any(n in on_disk for n in names):
            names = sorted(on_disk, key=lambda n: int(self._pattern.fullmatch(n).group(1)))
        return [self._path(n) for n in dict.fromkeys(names) if n in on_disk]

    def latest(self):
        """Path of the most recently saved checkpoint, or None."""
        paths = self.all()
        return paths[-1] if paths else None

    def restore_latest(self):
        """(path, arrays, meta) of the newest checkpoint that loads, trying older ones when the
        newest is corrupt; None when there is none. Corrupt files are left in place."""
        for path in reversed(self.all()):
            try:
                return (path,) + load(path)
            except (CheckpointError, FileNotFoundError):
                continue
        return None

    def save(self, step, arrays, meta=None):
        """Write "<prefix>-<step>.npz" (meta gains "step"), update the index, drop the oldest."""
        if isinstance(step, (bool, np.bool_)) or not isinstance(step, (int, np.integer)) or step < 0:
            raise ValueError(f"step: expected a non-negative int, got {step!r}")
        step = int(step)
        meta = dict(meta or {})
        if meta.setdefault("step", step) != step:
            raise ValueError(f"meta: 'step' is {meta['step']!r} but the checkpoint step is {step}")
        name = f"{self.prefix}-{step}.npz"
        save(self._path(name), arrays, meta)

        indexed = self._read_index() or []
        on_disk = self._scan()
        # files on disk but not in the index are leftovers of a crash before an index write: oldest
        orphans = [n for n in on_disk if n not in indexed]
        order = [n for n in dict.fromkeys(orphans + indexed) if n != name and n in on_disk] + [name]
        keep = order if self.max_to_keep is None else order[-self.max_to_keep:]
        index = {"format": _INDEX_FORMAT, "latest": name, "all": keep}
        atomic_write(self._path(self.INDEX), lambda f: f.write(json.dumps(index, indent=1).encode("utf-8")))
        for old in order[:len(order) - len(keep)]:
            try:
                os.unlink(self._path(old))
            except FileNotFoundError:
                pass
        return self._path(name)
