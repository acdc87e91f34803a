"""What the command lines (train, eval, bench) share: their one-line errors, the flags they
have in common as argparse parent parsers, and one validation of the flags' values and of
the directories they name.

    input_flags(...)      --data-dir, --batch-size, --backend, --no-download (every train and eval)
    select_backend(args)  --backend, else $TINYBN_BACKEND, else auto; the first line names the choice
    mnist_input_flags()   input_flags with the MNIST files' help (train mnist, eval mnist)
    training_flags(...)   --max-steps, --train-dir, --seed, the intervals, --max-to-keep (train)
    check_flags(args)     --backend selected, then every int and seconds flag the command has
    check_train_flags     check_flags, and --train-dir not a file
    refuse_flags(...)     a flag a model does not take, refused in one line

Every error a command line gives is one line on stderr starting "error:", with a
non-zero exit status: argparse's own errors (exit 2) as much as the ones of the
checks here and of the commands (SystemExit("error: ..."), exit 1).

Command-line floor: imports anything below (backend, distributed.world, run_dirs); only train,
eval and bench import it.
"""
import argparse
import math
import os
import sys

from . import backend
from .distributed import world as world_lib
from .run_dirs import check_dir, describe_os_error, one_line

# the flags check_flags refuses below 1 / below 0 / unless a positive finite number,
# whichever of them the command has
POSITIVE_FLAGS = ("batch_size", "max_steps", "log_every", "summary_every", "checkpoint_every", "max_to_keep",
                  "num_threads")
NON_NEGATIVE_FLAGS = ("seed", "num_examples", "stop_at_step", "check_replicas")
SECONDS_FLAGS = ("eval_interval_secs",)


class ArgumentParser(argparse.ArgumentParser):
    """argparse's parser, its usage errors as one line (the usage itself is in --help).
    Subcommand parsers are of the class of their parent, so they answer alike."""

    def error(self, message):
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


def add_backend_flag(parser):
    parser.add_argument("--backend", default=None, choices=backend.CHOICES,
                        help="array backend (default: $TINYBN_BACKEND, else auto: cupy when CuPy sees a CUDA "
                             "GPU, else numba when installed, else numpy)")


def select_backend(args):
    """Switch to --backend, else to the one TINYBN_BACKEND names, else to auto's choice (cupy, numba
    or numpy: backend.use_auto_backend); args.backend becomes the name of the backend selected.
    Unless --backend named one, the first line of output says which and why, e.g.
        backend: numba (auto: no CUDA GPU; numba 0.60.0 installed)
    and a backend that auto passed over (its kernels failed to load) is a warning line on stderr.
    --backend is taken as given: a bad TINYBN_BACKEND does not stop `--backend numpy`."""
    given = args.backend
    try:
        name = given or backend.environment_backend(default=backend.AUTO)
    except ValueError as e:
        raise SystemExit(f"error: {one_line(e)}; or choose one with --backend") from None
    source = f"--backend {name}" if given else f"TINYBN_BACKEND={name}" if os.environ.get("TINYBN_BACKEND") else ""
    try:
        if name == backend.AUTO:
            chosen, why, passed_over = backend.use_auto_backend()
        else:
            backend.use_backend(name)
            chosen, why, passed_over = name, "", ()
    except ImportError as e:
        where = "--backend" if given else f"TINYBN_BACKEND={name!r}"
        raise SystemExit(f"error: {where}: {one_line(e)}" + ("" if given else "; or choose one with --backend"))
    args.backend = chosen
    if not _is_root_process():
        return
    for problem in passed_over:
        print(f"warning: {problem}", file=sys.stderr, flush=True)
    if name == backend.AUTO:
        print(f"backend: {chosen} ({source or 'auto'}: {why})", flush=True)
    elif not given:
        print(f"backend: {chosen} ({source})", flush=True)


def _is_root_process():
    """Whether this process speaks for its job: always, unless it is rank > 0 of an MPI launch."""
    return not world_lib.launched_under_mpi() or world_lib.world().is_root


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


def refuse_flags(args, who, unsupported):
    """One-line error for the first flag of `unsupported` ({attribute: why}) that was given, i.e.
    whose value is not None, False or 0, the "not given" defaults of those flags."""
    for flag, why in unsupported.items():
        if getattr(args, flag, None) not in (None, False, 0):
            raise SystemExit(f"error: {who} does not take {flag_name(flag)}: {why}")


def _parent():
    return argparse.ArgumentParser(add_help=False)


def input_flags(data_help=None, download_help=None):
    """Parent parser of the flags of what a command reads: where the data is, the batch, the backend."""
    p = _parent()
    p.add_argument("--data-dir", default=None, help=data_help)
    p.add_argument("--batch-size", type=int, default=128)
    add_backend_flag(p)
    p.add_argument("--no-download", action="store_true", help=download_help)
    return p


def mnist_input_flags():
    """input_flags of train mnist and eval mnist: where the MNIST idx files are."""
    return input_flags("holds the MNIST idx files (default: $TINYBN_DATA/mnist "
                       "or ~/.cache/tinybn/mnist); missing ones are downloaded there",
                       "fail instead of downloading missing files")


def training_flags(train_dir, max_steps):
    """Parent parser of a trainer's flags: how long, where its state goes, how often it logs and saves."""
    p = _parent()
    p.add_argument("--max-steps", type=int, default=max_steps)
    p.add_argument("--train-dir", default=train_dir)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--log-every", type=int, default=10)
    p.add_argument("--summary-every", type=int, default=100)
    p.add_argument("--checkpoint-every", type=int, default=1000)
    p.add_argument("--max-to-keep", type=int, default=5)
    # data parallelism (mpiexec -n K; tinybn.distributed): no effect in one process
    p.add_argument("--sync-bn", action="store_true",
                   help="under mpiexec: batch norm with cross-replica statistics (default: each replica's own)")
    p.add_argument("--check-replicas", type=int, default=0, metavar="N",
                   help="under mpiexec: check every N steps that the replicas' state is bitwise equal (0: never)")
    return p


def check_flags(args):
    """The checks every command makes before it reads or writes anything: --backend (select_backend),
    then each of POSITIVE_FLAGS, NON_NEGATIVE_FLAGS and SECONDS_FLAGS that `args` has."""
    select_backend(args)
    def has(flag):      # a flag the command has, with a value (None: one its model does not use)
        return getattr(args, flag, None) is not None
    check_ints(args, [f for f in POSITIVE_FLAGS if has(f)], [f for f in NON_NEGATIVE_FLAGS if has(f)])
    for flag in SECONDS_FLAGS:
        if hasattr(args, flag):
            check_seconds(args, flag)


def check_train_flags(args):
    """check_flags, and --train-dir refused if a file is in its place (it is created later)."""
    check_flags(args)
    check_dir(args.train_dir, "--train-dir")


def run_command(args):
    """args.run(args), a file system's refusal (disk full, read-only) answered in one line and
    the abort of a second Ctrl-C (or SIGTERM) by exit status 130 without a traceback. The backend
    the command selects is unselected after it (a command run in-process changes no later op)."""
    try:
        with backend.restored_backend():
            return args.run(args)
    except KeyboardInterrupt:
        print("aborted", file=sys.stderr, flush=True)
        raise SystemExit(130) from None
    except OSError as e:
        raise SystemExit(f"error: {describe_os_error(e)}") from None
