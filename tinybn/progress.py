"""Progress output: a one-line bar with ETA on a terminal, plain log lines otherwise.

Each `log(step, text)` prints the tutorial's line
    2026-11-26 15:40:01.123: step 120, loss = 3.21 (512.0 examples/sec; 0.250 sec/batch)
On a terminal the line is redrawn in place with a bar and the time left,
estimated from the steps done since this process started.

Floor: training (tests/test_layering.py): imports from tinybn only core, backend, ops, nn,
optim, the package root, models, data and training.
"""
import datetime
import sys
import time


class Progress:
    def __init__(self, total, start=0, stream=None, width=24):
        self.total, self.start, self.width = total, start, width
        self.stream = stream or sys.stdout
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.t0 = time.time()

    def eta(self, step):
        done = step - self.start
        if done <= 0:
            return "?"
        left = (time.time() - self.t0) / done * (self.total - step)
        return str(datetime.timedelta(seconds=int(left)))

    def log(self, step, text):
        now = datetime.datetime.now().strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]
        line = f"{now}: step {step}, {text}"
        if self.tty:
            filled = int(self.width * step / max(self.total, 1))
            bar = "#" * filled + "." * (self.width - filled)
            self.stream.write(f"\r[{bar}] {step}/{self.total} ETA {self.eta(step)} | {line}\x1b[K")
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def close(self):
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()
