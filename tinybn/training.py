"""The training library under the command lines: a run's state, its loop, its checkpoints and
their restore, the stop flag, and the evaluation loop.

    TrainingRun(args, model, make_optimizer, ema_decay)   model, optimizer, moving averages and
                                                          the checkpoint manager of --train-dir;
                                                          restores the latest checkpoint
    TrainingRun.fit(queue, csv, writer)                   the loop to --max-steps (below)
    StopFlag                                              Ctrl-C / SIGTERM: save, then stop
    load_checkpoint_or_fail(path)                         (arrays, meta), or one line of error
    latest_checkpoint(train_dir)                          the newest checkpoint, read-only
    evaluate_batches(model, batches)                      precision@1 and per-class counts

One step, as TF's tutorial trainers run it:
    loss = model.loss(model(images), labels)        # mean xent + weight decay
    loss.backward(); optimizer.step()               # lr read at the pre-increment global step
    ema.apply(params)                               # num_updates = the incremented global step

The tasks (tinybn.tasks) subclass TrainingRun with their model, optimizer and checkpoint meta.

Training floor: imports core, backend, optim, metrics and the infrastructure (checkpoint,
summary, csv_log via run_dirs, progress); never tasks or the command lines.
"""
import signal
import sys
import threading
import time

import numpy as np

from . import backend, checkpoint, optim
from .checkpoint_manager import CheckpointManager
from .metrics import per_class_counts
from .progress import Progress
from .run_dirs import check_dir, describe_os_error, open_csv
from .summary import SummaryWriter
from .tensor import Tensor, no_grad

TRAIN_CSV_FIELDS = ("step", "loss", "train_accuracy", "learning_rate", "examples_per_sec", "sec_per_batch",
                    "wall_time")


def load_checkpoint_or_fail(path):
    try:
        return checkpoint.load(path)
    except checkpoint.CheckpointError as e:
        raise SystemExit(f"error: cannot resume: {e} (the file was left untouched; move it away "
                         "to resume from an older checkpoint, or use another --train-dir)")


def latest_checkpoint(train_dir):
    """The newest checkpoint in `train_dir`, None if there is none or no such directory (which
    evaluation never creates: a mistyped --train-dir must not appear on disk)."""
    if not check_dir(train_dir, "--train-dir"):
        return None
    return CheckpointManager(train_dir, max_to_keep=None, read_only=True).latest()


class TrainingRun:
    """A model, its optimizer (and moving averages, if any) and checkpoints, with the
    input position going into and out of each checkpoint alongside them.

    Subclasses give `meta()` (what a checkpoint records of the run) and `resume_keys`
    (the meta entries that must match to resume)."""

    resume_keys = ("task", "model", "batch_size", "seed")

    def __init__(self, args, model, make_optimizer, ema_decay=None):
        self.args, self.model = args, model
        self.model.to_backend(args.backend)
        self.named = list(self.model.named_parameters())
        self.opt = make_optimizer(self.named)
        self.ema = None if ema_decay is None else optim.ExponentialMovingAverage(
            ema_decay, num_updates=lambda: self.opt.iterations)
        self.manager = CheckpointManager(args.train_dir, max_to_keep=args.max_to_keep)
        self.queue_state = None
        latest = self.manager.latest()
        if latest:
            self.restore(latest)
        elif self.ema is not None:
            self.ema.apply(self.named, num_updates=0)       # shadows start as the initial weights

    @property
    def step(self):
        return self.opt.iterations

    def meta(self):
        raise NotImplementedError

    def save(self, queue):
        state = {"model": self.model.state_dict(), "optimizer": self.opt.state_dict(), "queue": queue.state_dict()}
        if self.ema is not None:
            state["ema"] = self.ema.state_dict()
        try:
            return self.manager.save(self.step, checkpoint.flatten(state), self.meta())
        except OSError as e:       # a full disk, a read-only file system: the last checkpoint is intact
            raise SystemExit(f"error: cannot save the checkpoint of step {self.step} in {self.args.train_dir}: "
                             f"{describe_os_error(e)} (the last checkpoint, "
                             f"{self.manager.latest() or 'none'}, is kept)") from None

    def open_csv(self, name, fieldnames):
        """CSVLogger of `name` in --train-dir without the rows of steps after the restored one: a run
        that crashed after its last checkpoint logged them, and this one logs them again."""
        return open_csv(self.args.train_dir, name, fieldnames, "--train-dir", purge_step=self.step + 1)

    def open_events(self):
        """A new event file in --train-dir; TensorBoard drops the earlier files' events of the steps
        after the restored one (purge_step: the first step this run writes)."""
        return SummaryWriter(self.args.train_dir, purge_step=self.step + 1)

    def restore(self, path):
        arrays, meta = load_checkpoint_or_fail(path)
        mine = self.meta()
        for key in self.resume_keys:
            if meta.get(key) != mine[key]:
                raise SystemExit(f"error: {path} was written with {key}={meta.get(key)!r}, this run has "
                                 f"{key}={mine[key]!r}; use the same flags or another --train-dir")
        state = checkpoint.unflatten(arrays)
        try:
            self.model.load_state_dict(state.get("model", {}))
            self.opt.load_state_dict(state.get("optimizer", {}))
            if self.ema is not None:
                self.ema.load_state_dict(state.get("ema", {}), params=self.named)
        except ValueError as e:
            raise SystemExit(f"error: {path} does not match the {mine['model']!r} model: {e}")
        self.queue_state = state.get("queue")
        print(f"resumed from {path} at step {self.step}", flush=True)

    def train_step(self, images, labels):
        images, labels = backend.device_array(images), backend.device_array(labels)
        logits = self.model(Tensor(images))
        loss = self.model.loss(logits, labels)
        self.model.zero_grad()
        loss.backward()
        lr = self.opt.current_learning_rate()
        self.opt.step()
        if self.ema is not None:
            self.ema.apply(self.named)
        accuracy = float(np.mean(np.argmax(logits.numpy(), axis=1) == backend.to_numpy(labels)))
        return float(loss.item()), accuracy, float(lr)

    def progress_line(self, loss, accuracy, duration):
        """The tutorial's log line."""
        return (f"loss = {loss:.2f} ({self.args.batch_size / duration:.1f} examples/sec; "
                f"{duration:.3f} sec/batch)")

    def write_summaries(self, writer, loss, accuracy, lr):
        writer.scalars({"loss": loss, "learning_rate": lr, "train_accuracy": accuracy}, self.step)
        for name, p in self.named:
            writer.histogram(f"weights/{name}", p.numpy(), self.step)
        for name, b in self.model.named_buffers():       # BN's moving statistics: what inference uses
            writer.histogram(f"batch_norm/{name}", b.numpy(), self.step)

    def fit(self, queue, csv, writer, after_step=None):
        """Train to --max-steps from `queue` (next_batch(); the caller closes it): log to `csv`
        (open_csv("train.csv", TRAIN_CSV_FIELDS)), write summaries and checkpoints at their
        intervals, stop cleanly on Ctrl-C or SIGTERM (StopFlag), save at the end.
        after_step(step), if given, runs after each step; returning True says it took time
        that must not count in the next sec/batch."""
        args = self.args
        progress = Progress(args.max_steps, start=self.step)
        last_saved = self.step
        with StopFlag() as stop:
            tick = time.time()
            while self.step < args.max_steps and not stop.requested:
                loss, accuracy, lr = self.train_step(*queue.next_batch())
                if not np.isfinite(loss):
                    raise SystemExit(f"error: the loss diverged (loss = {loss}) at step {self.step}; "
                                     f"the last good checkpoint is {self.manager.latest()}")
                step = self.step
                if step % args.log_every == 0:
                    duration = (time.time() - tick) / args.log_every
                    tick = time.time()
                    csv.log(step=step, loss=loss, train_accuracy=accuracy, learning_rate=lr,
                            examples_per_sec=args.batch_size / duration, sec_per_batch=duration, wall_time=tick)
                    progress.log(step, self.progress_line(loss, accuracy, duration))
                if step % args.summary_every == 0:
                    self.write_summaries(writer, loss, accuracy, lr)
                if step % args.checkpoint_every == 0:
                    self.save(queue)
                    last_saved = step
                if after_step is not None and after_step(step):
                    tick = time.time()
            if self.step != last_saved:
                print(f"saved {self.save(queue)}", flush=True)
        progress.close()


class StopFlag:
    """The first Ctrl-C (SIGINT) or SIGTERM asks the loop to save and stop after the current step;
    a second one aborts (KeyboardInterrupt). The previous handlers are back on exit. Signal
    handlers belong to the main thread: in any other, the flag is never raised."""

    SIGNALS = {signal.SIGINT: "interrupt", signal.SIGTERM: "terminate"}

    def __init__(self):
        self.requested = False
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
        print(f"\n{self.SIGNALS[signum]}: saving a checkpoint after this step (Ctrl-C again to abort)",
              file=sys.stderr, flush=True)

    def __exit__(self, *exc):
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)
        self.previous = {}


class Evaluation:
    """What evaluate_batches counts: hits and examples, in all and by true class."""

    def __init__(self, correct, total):
        self.correct_per_class, self.total_per_class = correct, total
        self.correct, self.total = int(correct.sum()), int(total.sum())

    @property
    def precision(self):
        """precision@1 (tf.nn.in_top_k(logits, labels, 1)); 0.0 when there were no examples."""
        return self.correct / max(self.total, 1)


def evaluate_batches(model, batches, num_classes=None):
    """The model's logits of every (images, labels) of `batches` under no_grad, counted by
    metrics.per_class_counts; the caller sets the mode (eval(): BN on its moving statistics)."""
    correct = total = 0
    with no_grad():
        for images, labels in batches:
            logits = model(Tensor(backend.device_array(images))).numpy()
            c, t = per_class_counts(logits, labels, num_classes or logits.shape[1])
            correct, total = correct + c, total + t
    if isinstance(total, int):          # no batch at all
        correct = total = np.zeros(num_classes or 0, dtype=np.int64)
    return Evaluation(correct, total)
