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
written to a hidden temporary file in the same directory
(".<name>.<host>.<pid>.<random>.tmp"), flushed and fsynced, then os.replace()d
onto the name (atomic on POSIX and Windows), and the directory is fsynced. A
previous checkpoint of the same name stays intact until the new one is complete.
A failed write removes its temporary file; one left by a killed process (kill -9)
is removed by the next CheckpointManager on that directory, once the host and
process id in its name show that its writer is gone.

Structured trainer state goes through flatten()/unflatten(): top-level
namespaces are joined to names with "::" ("model::conv1/kernel",
"optimizer::conv1/kernel/Momentum", "step"), because state_dict() names already
contain "/".

CheckpointManager (tinybn/checkpoint_manager.py, which builds on this module) keeps a
directory of numbered checkpoints and their index.

Floor: training (tests/test_layering.py): imports from tinybn only core, backend, ops, nn,
optim, the package root, models, data and training.
"""
import hashlib
import io
import json
import os
import re
import socket
import tempfile
import zipfile

import numpy as np

FORMAT_VERSION = 1
NAMESPACE_SEP = "::"
_HEADER = "__tinybn__"


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


def _host():
    """This machine's name as it can appear in a file name."""
    return re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname()) or "host"


def atomic_write(path, write):
    """Call write(binary file) on a temporary file next to `path`, then move it onto `path`.

    On any exception (a full disk: OSError ENOSPC; Ctrl-C) the temporary file is removed,
    `path` is untouched, and the exception is re-raised."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(path)}.{_host()}.{os.getpid()}.",
                               suffix=".tmp")
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

    The file is only read, never modified; nothing in it is unpickled. A missing file is
    FileNotFoundError."""
    path = os.fspath(path)

    def fail(problem):
        return CheckpointError(f"checkpoint {path!r}: {problem}")

    if os.path.isdir(path):
        raise fail("is a directory, not a checkpoint file")
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise
    except OSError as e:
        raise fail(f"cannot be read ({e.strerror or e})") from None
    if not data:
        raise fail("file is empty")
    try:
        npz = np.load(io.BytesIO(data), allow_pickle=False)
        if not isinstance(npz, np.lib.npyio.NpzFile):   # a plain .npy file loads as one array
            raise fail("not an npz archive")
        with npz:
            def member(key):
                value = npz[key]    # a member that is not a .npy file comes back as raw bytes
                if not isinstance(value, np.ndarray):
                    raise fail(f"member {key!r} is not a numpy array")
                return value

            if _HEADER not in npz.files:
                raise fail("not a tinybn checkpoint (no header member)")
            raw = member(_HEADER)
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
            if not isinstance(meta_text, str) or not isinstance(digest, str):
                raise fail("malformed header meta or checksum")
            expected = {_HEADER} | {f"a{i}" for i in range(len(names))}
            if set(npz.files) != expected:
                raise fail(f"members {sorted(npz.files)} do not match the header's {len(names)} arrays")
            values = [member(f"a{i}") for i in range(len(names))]
    except CheckpointError:
        raise
    except (zipfile.BadZipFile, EOFError, OSError, ValueError, KeyError, TypeError, IndexError,
            NotImplementedError, RuntimeError, MemoryError) as e:   # whatever a damaged zip or .npy raises
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
