"""CheckpointManager: a directory of numbered checkpoints and the index that lists them.

Imported by tinybn.checkpoint, whose public API it belongs to
(`tinybn.checkpoint.CheckpointManager`); kept in its own file so each stays short
enough to read at once.

It keeps the last `max_to_keep` checkpoints "<prefix>-<step>.npz" and a JSON
index file "checkpoint" listing them oldest first. Order of a save: new
checkpoint (atomic), index (atomic), then deletion of the oldest. A crash at any
point leaves the previous good checkpoint on disk and reachable through the
index or, if the index is missing or corrupt, through a scan of the directory.
A crash between the checkpoint and the index write leaves a complete checkpoint
that the index does not list yet: its step is above every indexed one, and it
counts as the newest. A crash while deleting leaves older unlisted files: the
next save deletes them. A crash while writing (kill -9) leaves a temporary file:
the next manager on the directory deletes it once its writer is gone.

Floor: training (tests/test_layering.py): imports from tinybn only core, backend, ops, nn,
optim, the package root, models, data and training.
"""
import json
import os
import re
import sys

import numpy as np

from . import checkpoint as _files   # atomic_write, save, load looked up at each call (tests replace them)
from .checkpoint import CheckpointError

_INDEX_FORMAT = 1


def _temporary_pattern(names):
    """The temporary files atomic_write makes for `names` (a regex alternation): (name, host, pid).
    Also matched: those of tinybn before host and pid were in the name (".<name>.<random>.tmp")."""
    return re.compile(rf"\.({names})(?:\.([A-Za-z0-9-]+)\.(\d+))?\.[a-z0-9_]{{8}}\.tmp")


def _writer_gone(host, pid):
    """Whether the process that wrote a temporary file has ended: only knowable on its own host."""
    if host is None:            # named by tinybn before names carried the writer: taken as stale
        return True
    if host != _files._host() or sys.platform == "win32":     # Windows' os.kill(pid, 0) would kill it
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except (PermissionError, OverflowError, OSError):   # alive (someone else's), or not a pid at all
        return False
    return False


class CheckpointManager:
    """Numbered checkpoints "<prefix>-<step>.npz" in `directory`, keeping the newest `max_to_keep`
    (None keeps all), with a JSON index "checkpoint" listing them in save order, oldest first.

    At construction the directory is created, and temporary files that a killed writer left
    behind (only atomic_write's names for this prefix and the index) are removed.
    read_only=True (a reader such as eval) does neither: nothing in the directory changes,
    and a missing directory simply holds no checkpoint."""

    INDEX = "checkpoint"

    def __init__(self, directory, max_to_keep=5, prefix="model.ckpt", read_only=False):
        if max_to_keep is not None and (isinstance(max_to_keep, bool) or not isinstance(max_to_keep, int)
                                        or max_to_keep < 1):
            raise ValueError(f"max_to_keep: expected a positive int or None, got {max_to_keep!r}")
        if not prefix or os.sep in prefix or "/" in prefix or prefix.startswith("."):
            raise ValueError(f"prefix: expected a plain file name prefix, got {prefix!r}")
        self.directory = os.fspath(directory)
        self.max_to_keep = max_to_keep
        self.prefix = prefix
        self._pattern = re.compile(re.escape(prefix) + r"-(\d+)\.npz")
        self._temporary = _temporary_pattern(re.escape(prefix) + r"-\d+\.npz|" + re.escape(self.INDEX))
        self.read_only = bool(read_only)
        if not self.read_only:
            os.makedirs(self.directory, exist_ok=True)
            self.remove_stale_temporaries()

    def _path(self, name):
        return os.path.join(self.directory, name)

    def _listdir(self):
        try:
            return os.listdir(self.directory)
        except FileNotFoundError:
            return []

    def _step(self, name):
        return int(self._pattern.fullmatch(name).group(1))

    def remove_stale_temporaries(self):
        """Delete the temporary files of writers that have ended (kill -9 mid-save); returns their paths."""
        removed = []
        for name in self._listdir():
            m = self._temporary.fullmatch(name)
            if m and _writer_gone(m.group(2), m.group(3)) and os.path.isfile(self._path(name)):
                try:
                    os.unlink(self._path(name))
                    removed.append(self._path(name))
                except OSError:     # gone already, or a read-only dir: a leftover is harmless
                    pass
        return removed

    def _scan(self):
        """Our checkpoint files on disk (temporaries excluded), by step."""
        found = [(self._step(n), n) for n in self._listdir()
                 if self._pattern.fullmatch(n) and os.path.isfile(self._path(n))]
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

    def _kept_and_leftovers(self):
        """(kept, leftovers): our checkpoint names on disk, kept ones in save order.

        The index gives the order. A file it does not list is either a save that crashed
        before its index write (its step is above every indexed one: kept, newest) or a
        file that a crash while deleting the oldest left behind (a leftover)."""
        on_disk = self._scan()
        indexed = [n for n in dict.fromkeys(self._read_index() or []) if n in on_disk]
        if not indexed:
            return on_disk, []
        top = max(self._step(n) for n in indexed)
        unlisted = [n for n in on_disk if n not in indexed]
        return indexed + [n for n in unlisted if self._step(n) > top], [n for n in unlisted if self._step(n) <= top]

    def all(self):
        """Paths of the kept checkpoints that exist, oldest first (index order, else by step)."""
        return [self._path(n) for n in self._kept_and_leftovers()[0]]

    def latest(self):
        """Path of the most recently saved checkpoint, or None."""
        paths = self.all()
        return paths[-1] if paths else None

    def restore_latest(self, warn=None):
        """(path, arrays, meta) of the newest checkpoint that loads; None when there is none.

        A newer one that does not load is skipped with a one-line warning naming it and why
        (warn(message); default: printed to stderr) and left in place; when none of them
        loads, CheckpointError names the newest."""
        warn = warn or (lambda message: print(message, file=sys.stderr, flush=True))
        first_error = None
        for path in reversed(self.all()):
            try:
                return (path,) + _files.load(path)
            except (CheckpointError, FileNotFoundError) as e:
                first_error = first_error or e
                warn(f"warning: skipping {path}: {e}; trying the next newest checkpoint")
        if first_error is not None:
            raise CheckpointError(f"no checkpoint in {self.directory!r} loads; the newest: {first_error}")
        return None

    def save(self, step, arrays, meta=None):
        """Write "<prefix>-<step>.npz" (meta gains "step"), update the index, drop the oldest."""
        if isinstance(step, (bool, np.bool_)) or not isinstance(step, (int, np.integer)) or step < 0:
            raise ValueError(f"step: expected a non-negative int, got {step!r}")
        if self.read_only:
            raise ValueError(f"CheckpointManager({self.directory!r}, read_only=True) cannot save")
        step = int(step)
        meta = dict(meta or {})
        if meta.setdefault("step", step) != step:
            raise ValueError(f"meta: 'step' is {meta['step']!r} but the checkpoint step is {step}")
        name = f"{self.prefix}-{step}.npz"
        _files.save(self._path(name), arrays, meta)

        kept, leftovers = self._kept_and_leftovers()
        # leftovers of a crash while deleting go first, to be deleted now
        order = [n for n in leftovers + kept if n != name] + [name]
        keep = order if self.max_to_keep is None else order[-self.max_to_keep:]
        index = {"format": _INDEX_FORMAT, "latest": name, "all": keep}
        _files.atomic_write(self._path(self.INDEX), lambda f: f.write(json.dumps(index, indent=1).encode("utf-8")))
        for old in order[:len(order) - len(keep)]:
            try:
                os.unlink(self._path(old))
            except FileNotFoundError:
                pass
        return self._path(name)
