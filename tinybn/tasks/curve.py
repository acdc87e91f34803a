"""Precision@1 against wall time: what training records for the curve, and the evaluation of
every checkpoint of a finished run into its points.

    RunClock(args)                     the run's start ("started", seconds since the epoch, taken
                                       by the command line before it reads the data) and each
                                       checkpoint's "wall_time", both in the checkpoint's meta
    evaluate_every_checkpoint(...)     each checkpoint of --train-dir, oldest first, into the rows
                                       (step, wall_time_secs, precision_at_1, examples) of
                                       --eval-dir's curve.csv
    read_curve(eval_dir)               those rows as arrays, for report.plot_time_curves

A point's time is wall_time - started: the seconds from the command's start (data loading, the
model's construction, every step and every checkpoint written before it) to the end of the step
the checkpoint holds. A checkpoint of a logged step has the wall time of that step's train.csv
row, to the digit: RunClock.watching(csv) keeps the last row's. A resumed run keeps the first
start, so the time it was stopped counts: curves are of uninterrupted runs.

Tasks floor: imports the training floor (checkpoints, run_dirs) and tasks/report.py.
"""
import contextlib
import os
import time

from ..checkpoint_manager import CheckpointManager
from ..run_dirs import open_csv
from ..training import load_checkpoint_or_fail
from .report import read_csv_columns

CURVE_CSV = "curve.csv"
CURVE_CSV_FIELDS = ("step", "wall_time_secs", "precision_at_1", "examples")


class _WatchedCSV:
    """A CSV log that remembers its last row's step and wall_time (the rest passes through)."""

    def __init__(self, csv, clock):
        self._csv, self._clock = csv, clock

    def log(self, row=None, **fields):
        row = dict(row or {}, **fields)
        if "wall_time" in row:
            self._clock.last_row = (row["step"], row["wall_time"])
        return self._csv.log(row)

    def __getattr__(self, name):
        return getattr(self._csv, name)


class RunClock:
    """The times a run's checkpoints record for the curve: meta "started" and "wall_time"."""

    def __init__(self, args):
        self.started = getattr(args, "started", None) or time.time()
        self.last_row = None

    def watching(self, csv):
        """`csv` (train.csv's log), remembering each row's wall time for the checkpoint of its step."""
        return _WatchedCSV(csv, self)

    def resumed(self, path):
        """Keep the start of the run the checkpoint at `path` belongs to."""
        _, meta = load_checkpoint_or_fail(path)
        self.started = meta.get("started", self.started)

    def meta(self, step):
        """{"started", "wall_time"} of a checkpoint of `step`: train.csv's time for a logged step."""
        logged = self.last_row is not None and self.last_row[0] == step
        return {"started": self.started, "wall_time": self.last_row[1] if logged else time.time()}


def evaluate_every_checkpoint(train_dir, eval_dir, evaluate):
    """Rows of curve.csv in `eval_dir` for each checkpoint of `train_dir` not already there, oldest
    first: evaluate(path) -> (precision@1, examples, step). Returns the rows written."""
    paths = CheckpointManager(train_dir, max_to_keep=None, read_only=True).all()
    if not paths:
        raise SystemExit(f"error: no checkpoint in {train_dir}; train first (python -m tinybn.train cifar "
                         "--train-dir ...)")
    done = read_curve(eval_dir)
    done = set() if done is None else {int(s) for s in done["step"]}
    rows = []
    with contextlib.ExitStack() as stack:
        csv = None      # opened with the first row: a refused checkpoint leaves no file behind
        for path in paths:
            _, meta = load_checkpoint_or_fail(path)
            if meta.get("step") in done:
                continue
            if "wall_time" not in meta or "started" not in meta:
                raise SystemExit(f"error: {path} records no wall time (a checkpoint written before the curve "
                                 "was; train the run again to plot it)")
            precision, total, step = evaluate(path)
            row = {"step": step, "wall_time_secs": meta["wall_time"] - meta["started"],
                   "precision_at_1": precision, "examples": total}
            print(f"step {step}: {row['wall_time_secs']:.1f} s after the start: precision @ 1 = {precision:.4f} "
                  f"({total} examples)", flush=True)
            if csv is None:
                csv = stack.enter_context(open_csv(eval_dir, CURVE_CSV, list(CURVE_CSV_FIELDS), "--eval-dir"))
            csv.log(row)
            rows.append(row)
    return rows


def read_curve(eval_dir):
    """{column: array} of `eval_dir`'s curve.csv, None when it has none."""
    return read_csv_columns(os.path.join(eval_dir, CURVE_CSV), CURVE_CSV_FIELDS)
