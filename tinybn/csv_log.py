"""A CSV log that a resumed run continues: a fixed header, a row flushed at a time.

A run resumed from a checkpoint at step S repeats the steps after S that the crashed
run had logged; CSVLogger(purge_step=S + 1) drops those rows first, as the event
files' SessionLog START (tinybn/summary.py) drops their events from TensorBoard's view.

Floor: training (tests/test_layering.py): imports from tinybn only core, backend, ops, nn,
optim, the package root, models, data and training.
"""
import csv
import io
import os

import numpy as np

from .checkpoint import atomic_write


def _naming(e, path):
    """The OSError `e` of a write to `path`, naming the file (a failed write or flush names none)."""
    return e if e.filename else OSError(e.errno, e.strerror, path)


class CSVHeaderError(ValueError):
    """An existing CSV file whose header is not the logger's: another program's file."""

    def __init__(self, path, found, expected):
        super().__init__(f"fieldnames: {path!r} has header {found}, not {expected}")
        self.path, self.found, self.expected = path, found, expected


class CSVLogger:
    """Appends rows to a CSV file with a fixed header, flushing every row.

    An existing file must have the same header and is appended to (a resumed run
    continues its log); an incomplete last line, left by a crash mid-row, is cut off.
    purge_step: rows whose "step" is >= purge_step are dropped first (the file is
    rewritten atomically), as summary.SummaryWriter's purge_step drops those events."""

    def __init__(self, path, fieldnames, purge_step=None):
        self.path = os.fspath(path)
        self.fieldnames = [str(f) for f in fieldnames]
        if not self.fieldnames or len(set(self.fieldnames)) != len(self.fieldnames):
            raise ValueError(f"fieldnames: expected distinct names, got {list(fieldnames)!r}")
        if purge_step is not None:
            if isinstance(purge_step, (bool, np.bool_)) or not isinstance(purge_step, (int, np.integer)):
                raise ValueError(f"purge_step: expected an int, got {purge_step!r}")
            if "step" not in self.fieldnames:
                raise ValueError(f"purge_step: the fieldnames {self.fieldnames} have no 'step'")
        exists = os.path.exists(self.path) and os.path.getsize(self.path) > 0
        if exists:
            with open(self.path, "rb") as f:
                data = f.read()
            header = next(csv.reader([data.split(b"\n", 1)[0].decode("utf-8").rstrip("\r")]), [])
            if header != self.fieldnames:
                raise CSVHeaderError(self.path, header, self.fieldnames)
            complete = data[:data.rfind(b"\n") + 1]
            kept = None if purge_step is None else self._rows_before(complete, purge_step)
            if kept is not None:
                atomic_write(self.path, lambda f: f.write(kept.encode("utf-8")))
            elif len(complete) != len(data):
                with open(self.path, "r+b") as f:
                    f.truncate(len(complete))
        self._file = open(self.path, "a", newline="", encoding="utf-8")
        self._writer = csv.DictWriter(self._file, self.fieldnames, lineterminator="\n")
        if not exists:
            try:
                self._writer.writeheader()
                self._file.flush()
            except OSError as e:
                try:
                    self.close()
                except OSError:
                    pass
                raise _naming(e, self.path) from None

    def _rows_before(self, data, purge_step):
        """The CSV lines of `data` (header first) but the rows whose step is >= purge_step;
        None when no row is dropped. A row whose step is not an integer is kept."""
        records = list(csv.reader(io.StringIO(data.decode("utf-8"), newline="")))
        column = self.fieldnames.index("step")
        out, dropped = io.StringIO(), False
        writer = csv.writer(out, lineterminator="\n")
        for i, record in enumerate(records):
            try:
                late = i > 0 and int(record[column]) >= purge_step
            except (IndexError, ValueError):
                late = False
            dropped |= late
            if not late:
                writer.writerow(record)
        return out.getvalue() if dropped else None

    def log(self, row=None, **fields):
        """Append one row from a dict and/or keywords; absent fields are left empty."""
        if self._file is None:
            raise ValueError(f"CSVLogger for {self.path!r} is closed")
        row = dict(row or {}, **fields)
        unknown = [k for k in row if k not in self.fieldnames]
        if unknown:
            raise ValueError(f"row: unknown fields {unknown} (fieldnames are {self.fieldnames})")
        try:
            self._writer.writerow(row)
            self._file.flush()
        except OSError as e:
            raise _naming(e, self.path) from None

    def close(self):
        file, self._file = self._file, None
        if file is not None:
            try:
                file.close()
            except OSError as e:
                raise _naming(e, self.path) from None

    def __enter__(self):
        return self

    def __exit__(self, exc_type, *exc):
        try:
            self.close()
        except OSError:
            if exc_type is None:    # else the error already on its way says it first
                raise
