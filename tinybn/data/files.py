"""Looking at data files: absent, present, or not ours to read, each said in one line.

os.path.isfile and friends answer False when a folder cannot be searched, so a
folder without read permission looked like a missing data set ("not found").
These helpers tell the cases apart: absence is None, a permission problem is a
DataPermissionError (a PermissionError) whose message names the path, and when
the path itself cannot even be looked at, the folder that stops it.

    path_kind(path)    "dir", "file", "other" or None (absent)
    read_bytes(path)   the content of a file
    open_binary(path)  the file opened "rb"

Floor: data (tests/test_layering.py): imports from tinybn only core, backend, ops, nn,
optim, the package root, models and data.
"""
import errno
import os
import stat


class DataPermissionError(PermissionError):
    """A data path we may not read (or write); str() is one line naming it."""

    def __init__(self, path, action="read", blocked_by=None):
        super().__init__(errno.EACCES, os.strerror(errno.EACCES), path)
        self.action, self.blocked_by = action, blocked_by

    def __str__(self):
        if self.blocked_by:
            return (f"permission denied: cannot {self.action} {self.filename}: no permission to look inside "
                    f"the folder {self.blocked_by}")
        return f"permission denied: cannot {self.action} {self.filename}"


def _blocking_folder(path):
    """The nearest folder above `path` that exists but cannot be searched, or None."""
    folder = os.path.dirname(os.path.abspath(path))
    while True:
        try:
            os.stat(folder)
            return folder           # it can be stat'ed, its child cannot: this folder is closed to us
        except PermissionError:
            parent = os.path.dirname(folder)
            if parent == folder:
                return None
            folder = parent
        except OSError:
            return None


def path_kind(path):
    """"dir", "file" (regular), "other" or None when absent; DataPermissionError when it cannot be looked at."""
    try:
        mode = os.stat(path).st_mode
    except (FileNotFoundError, NotADirectoryError):
        return None
    except PermissionError:
        raise DataPermissionError(path, "read", _blocking_folder(path)) from None
    if stat.S_ISDIR(mode):
        return "dir"
    return "file" if stat.S_ISREG(mode) else "other"


def open_binary(path):
    """open(path, "rb"), a permission problem raised as DataPermissionError naming the path."""
    try:
        return open(path, "rb")
    except PermissionError:
        raise DataPermissionError(path) from None


def read_bytes(path):
    with open_binary(path) as f:
        return f.read()
