"""What the command lines (train, eval, bench) share: their one-line errors, the --backend
flag, and the checks of flag values and of the directories the flags name.

Every error a command line gives is one line on stderr starting "error:", with a
non-zero exit status: argparse's own errors (exit 2) as much as the ones of the
checks here and of the commands (SystemExit("error: ..."), exit 1).
"""
import argparse
import math
import os
import sys

from . import backend
from .csv_log import CSVHeaderError, CSVLogger


class ArgumentParser(argparse.ArgumentParser):
    """argparse's parser, its usage errors as one line (the usage itself is in --help).
    Subcommand parsers are of the class of their parent, so they answer alike."""

    def error(self, message):
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


def add_backend_flag(parser):
    parser.add_argument("--backend", default=None, choices=backend.BACKENDS,
                        help="array backend (default: $TINYBN_BACKEND, else numpy)")


def one_line(error):
    return " ".join(str(error).split())


def select_backend(args):
    """Switch to --backend, else to the one TINYBN_BACKEND names, else numpy; args.backend becomes
    that name. --backend is taken as given: a bad TINYBN_BACKEND does not stop `--backend numpy`."""
    try:
        name = args.backend or backend.environment_backend()
    except ValueError as e:
        raise SystemExit(f"error: {one_line(e)}; or choose one with --backend") from None
    try:
        backend.use_backend(name)
    except ImportError as e:
        source = "--backend" if args.backend else f"TINYBN_BACKEND={name!r}"
        raise SystemExit(f"error: {source}: {one_line(e)}" + ("" if args.backend else "; or choose one with --backend"))
    args.backend = name


def check_ints(args, positive=(), non_negative=()):
    """--flag values that must be >= 1 (positive) or >= 0 (non_negative); flags as attribute names."""
    for flags, low, wanted in ((positive, 1, "positive"), (non_negative, 0, ">= 0")):
        for flag in flags:
            value = getattr(args, flag)
            if value < low:
                raise SystemExit(f"error: {flag_name(flag)} must be {wanted}, got {value}")


def check_seconds(args, flag):
    """A --flag of seconds: a positive, finite number (0 would poll without pause)."""
    value = getattr(args, flag)
    if not (math.isfinite(value) and value > 0):
        raise SystemExit(f"error: {flag_name(flag)} must be a positive number of seconds, got {value}")


def check_batch_size(batch_size, num_examples, examples):
    """Refuse a batch larger than the data set: every batch would hold some examples twice
    (training) or the one batch would not be of the size asked for (evaluation)."""
    if batch_size > num_examples:
        raise SystemExit(f"error: --batch-size {batch_size} is larger than the {num_examples} examples of "
                         f"{examples}; use a --batch-size of at most {num_examples}")


def flag_name(attribute):
    return "--" + attribute.replace("_", "-")


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


def describe_os_error(e):
    """'FILE: reason' of an OSError (disk full, read-only file system, permission denied)."""
    reason = e.strerror or one_line(e)
    return f"{e.filename}: {reason}" if e.filename else reason


def run_command(args):
    """args.run(args), a file system's refusal (disk full, read-only) answered in one line and
    the abort of a second Ctrl-C (or SIGTERM) by exit status 130 without a traceback."""
    try:
        return args.run(args)
    except KeyboardInterrupt:
        print("aborted", file=sys.stderr, flush=True)
        raise SystemExit(130) from None
    except OSError as e:
        raise SystemExit(f"error: {describe_os_error(e)}") from None
