"""StopFlag: Ctrl-C or SIGTERM asks a training loop to finish its step, save, and stop.

Batch schedulers send SIGTERM some time before SIGKILL; a user presses Ctrl-C. Either one
raises the flag, which the loop reads after each step (in a data-parallel job, the ranks
agree on it by an allreduce, so all stop after the same step); a second signal aborts.

Floor: training (tests/test_layering.py); imports only the standard library.
"""
import signal
import sys
import threading


class StopFlag:
    """The first Ctrl-C (SIGINT) or SIGTERM asks the loop to save and stop after the current step;
    a second one aborts (KeyboardInterrupt). The previous handlers are back on exit. Signal
    handlers belong to the main thread: in any other, the flag is never raised."""

    SIGNALS = {signal.SIGINT: "interrupt", signal.SIGTERM: "terminate"}

    def __init__(self, quiet=False):
        self.requested, self.quiet = False, quiet
        self.previous = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for signum in self.SIGNALS:
                self.previous[signum] = signal.signal(signum, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        if self.quiet:
            return
        print(f"\n{self.SIGNALS[signum]}: saving a checkpoint after this step (Ctrl-C again to abort)",
              file=sys.stderr, flush=True)

    def __exit__(self, *exc):
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)
        self.previous = {}
