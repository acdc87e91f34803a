"""The directories a run reads and writes (--train-dir, --eval-dir): a file where a
directory should be is refused, the CSV logs in them are opened, and an OSError of
theirs (a full disk, a read-only file system) is said in one line.

Infrastructure below training: imports csv_log only (with numpy and the standard library);
never training, tasks or the command lines, which all use it.
"""
import os

from .csv_log import CSVHeaderError, CSVLogger


def one_line(error):
    return " ".join(str(error).split())


def describe_os_error(e):
    """'FILE: reason' of an OSError (disk full, read-only file system, permission denied)."""
    reason = e.strerror or one_line(e)
    return f"{e.filename}: {reason}" if e.filename else reason


def check_dir(path, flag):
    """True if `path` is a directory, False if nothing is there; a file (or anything else) in
    its place is refused. Never creates anything."""
    if os.path.isdir(path):
        return True
    if os.path.lexists(path):
        raise SystemExit(f"error: {flag} {path} is not a directory; use another {flag}")
    return False


def open_csv(directory, name, fieldnames, flag, purge_step=None):
    """CSVLogger of `name` in `directory` (the value of `flag`); another program's file of that
    name (a different header) is refused and left as it is. Creates `directory` if need be."""
    os.makedirs(directory, exist_ok=True)
    try:
        return CSVLogger(os.path.join(directory, name), fieldnames, purge_step=purge_step)
    except CSVHeaderError as e:
        raise SystemExit(f"error: {name} in {directory} has columns {','.join(e.found)}, "
                         f"not {','.join(e.expected)}; use another {flag}") from None
