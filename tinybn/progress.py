"""Progress output: the tutorial's log lines, under a tqdm bar on a terminal.

Each `log(step, text)` prints the tutorial's line
    2026-11-26 15:40:01.123: step 120, loss = 3.21 (512.0 examples/sec; 0.250 sec/batch)
On a terminal the lines scroll above a tqdm bar of the steps to --max-steps, with its rate
and time left estimated from the steps done since this process started (a resumed run's
bar starts at its restored step). Anywhere else (a file, a pipe, a CI log) only the lines
are written, as before: a bar redrawn with carriage returns is noise there.

Floor: training (tests/test_layering.py): imports from tinybn only core, backend, ops, nn,
optim, the package root, models, data and training.
"""
import datetime
import sys

from tqdm import tqdm


def log_line(step, text):
    """The tutorial's line: local time to the millisecond, the step, then `text`."""
    now = datetime.datetime.now().strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]
    return f"{now}: step {step}, {text}"


class Progress:
    """Log lines to `stream` (stdout); with a bar when `stream` is a terminal."""

    def __init__(self, total, start=0, stream=None):
        self.total, self.start = total, start
        self.stream = stream or sys.stdout
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.bar = (tqdm(total=total, initial=start, file=self.stream, unit="step", dynamic_ncols=True,
                         leave=True) if self.tty else None)

    def log(self, step, text):
        line = log_line(step, text)
        if self.bar is None:
            self.stream.write(line + "\n")
            self.stream.flush()
            return
        self.bar.write(line, file=self.stream)     # above the bar, which tqdm redraws below it
        self.bar.update(step - self.bar.n)

    def close(self):
        if self.bar is not None:
            self.bar.close()
            self.bar = None
