"""python -m tinybn.train cifar: the TensorFlow CIFAR-10 tutorial's training, on tinybn.

One step, as cifar10_train.py runs it:
    images, labels = shuffle queue (worker threads, already preprocessed)
    loss = mean(sparse_softmax_cross_entropy(model(images), labels)) + weight decay
    loss.backward(); optimizer.step()        # lr read at the pre-increment global step
    ema.apply(params)                        # num_updates = the incremented global step

Schedules: the tutorial models use plain SGD with lr 0.1 x 0.1 every 350 epochs
(decay_steps = int(50000 / batch_size * 350), staircase); the seed's BN model uses
Adam with 0.04 x 0.9 every 1000 steps (staircase).

State in --train-dir: model.ckpt-<step>.npz (model, optimizer slots, EMA shadows,
input-queue position; written atomically, the last --max-to-keep kept), events
files for TensorBoard, and train.csv. Running again with the same --train-dir
resumes at the saved step with the same optimizer, EMA and data-order state;
the steps after that checkpoint that a crashed run had logged are dropped from
train.csv and, by a SessionLog START event, from TensorBoard's view.
Ctrl-C or SIGTERM (what batch schedulers send before SIGKILL) finishes the step
in flight, saves a checkpoint and exits with status 0; a second one aborts at once.
"""
import argparse
import signal
import sys
import threading
import time

import numpy as np

from . import backend, checkpoint, cli_flags, optim
from .data import cifar10 as cifar_data
from .models import cifar10 as cifar_models
from .progress import Progress
from .summary import SummaryWriter
from .tensor import Tensor

NUM_EXAMPLES_PER_EPOCH_FOR_TRAIN = 50000      # the tutorial's constant, whatever the files hold
EMA_DECAY = 0.9999
TRAIN_CSV_FIELDS = ("step", "loss", "train_accuracy", "learning_rate", "examples_per_sec", "sec_per_batch",
                    "wall_time")
# what each trainer refuses below 1 / below 0 (cli_flags.check_ints)
POSITIVE_FLAGS = ("batch_size", "max_steps", "log_every", "summary_every", "checkpoint_every", "max_to_keep")
NON_NEGATIVE_FLAGS = ("seed",)


def cifar_parser(sub):
    p = sub.add_parser("cifar", help="CIFAR-10 (the TensorFlow tutorial)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="tutorial", choices=sorted(cifar_models.MODELS))
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--max-steps", type=int, default=1000000)
    p.add_argument("--train-dir", default="runs/cifar10_train")
    p.add_argument("--data-dir", default=None, help="holds cifar-10-batches-bin/ (default: $TINYBN_DATA "
                   "or ~/.cache/tinybn); downloaded there when absent")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--log-every", type=int, default=10)
    p.add_argument("--summary-every", type=int, default=100)
    p.add_argument("--checkpoint-every", type=int, default=1000)
    p.add_argument("--max-to-keep", type=int, default=5)
    p.add_argument("--num-threads", type=int, default=2, help="preprocessing worker threads")
    cli_flags.add_backend_flag(p)
    p.add_argument("--no-download", action="store_true", help="fail instead of downloading missing data")
    return p


def make_optimizer(model_name, named_params, batch_size):
    if model_name == "bn":
        lr = optim.ExponentialDecay(0.04, 1000, 0.9, staircase=True)
        return optim.Adam(named_params, learning_rate=lr)
    decay_steps = int(NUM_EXAMPLES_PER_EPOCH_FOR_TRAIN / batch_size * 350)
    lr = optim.ExponentialDecay(0.1, decay_steps, 0.1, staircase=True)
    return optim.GradientDescent(named_params, learning_rate=lr)


def load_checkpoint_or_fail(path):
    try:
        return checkpoint.load(path)
    except checkpoint.CheckpointError as e:
        raise SystemExit(f"error: cannot resume: {e} (the file was left untouched; move it away "
                         "to resume from an older checkpoint, or use another --train-dir)")


def check_train_flags(args):
    """The checks every trainer makes before it reads or writes anything."""
    cli_flags.select_backend(args)
    cli_flags.check_ints(args, POSITIVE_FLAGS, NON_NEGATIVE_FLAGS)
    cli_flags.check_dir(args.train_dir, "--train-dir")


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
        self.manager = checkpoint.CheckpointManager(args.train_dir, max_to_keep=args.max_to_keep)
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
                             f"{cli_flags.describe_os_error(e)} (the last checkpoint, "
                             f"{self.manager.latest() or 'none'}, is kept)") from None

    def open_csv(self, name, fieldnames):
        """CSVLogger of `name` in --train-dir without the rows of steps after the restored one: a run
        that crashed after its last checkpoint logged them, and this one logs them again."""
        return cli_flags.open_csv(self.args.train_dir, name, fieldnames, "--train-dir", purge_step=self.step + 1)

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


class CifarRun(TrainingRun):
    """The tutorial's run: the model, its optimizer and the weights' moving averages (EMA_DECAY)."""

    def __init__(self, args):
        model = cifar_models.MODELS[args.model](rng=np.random.default_rng(args.seed))
        super().__init__(args, model, lambda named: make_optimizer(args.model, named, args.batch_size),
                         ema_decay=EMA_DECAY)

    def meta(self):
        a = self.args
        return {"task": "cifar", "model": a.model, "batch_size": a.batch_size, "seed": a.seed}


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


def train_cifar(args):
    check_train_flags(args)
    cli_flags.check_ints(args, positive=("num_threads",))
    try:        # the data first: a data error must not leave a new, empty --train-dir behind
        images, labels = cifar_data.load_cifar10("train", args.data_dir, download=not args.no_download)
    except (FileNotFoundError, ValueError, OSError) as e:
        raise SystemExit(f"error: {e}")
    cli_flags.check_batch_size(args.batch_size, len(images), "the CIFAR-10 training set")
    run = CifarRun(args)
    if run.step >= args.max_steps:
        print(f"nothing to do: the checkpoint is at step {run.step} >= --max-steps {args.max_steps}")
        return run
    try:
        queue = cifar_data.training_queue(images, labels, args.batch_size, seed=args.seed,
                                          num_threads=args.num_threads, state=run.queue_state)
    except ValueError as e:
        raise SystemExit(f"error: {e}")
    with queue, run.open_csv("train.csv", TRAIN_CSV_FIELDS) as csv, run.open_events() as writer:
        run.fit(queue, csv, writer)
    return run


def main(argv=None):
    from .train_mnist import mnist_parser, train_mnist   # not at the top: train_mnist imports this module
    parser = cli_flags.ArgumentParser(prog="python -m tinybn.train", description="Train a tinybn model.")
    sub = parser.add_subparsers(dest="task", required=True)
    cifar_parser(sub).set_defaults(run=train_cifar)
    mnist_parser(sub).set_defaults(run=train_mnist)
    args = parser.parse_args(argv)
    cli_flags.run_command(args)


if __name__ == "__main__":
    main()
