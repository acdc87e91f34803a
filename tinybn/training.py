"""The training library under the command lines: a run's state, its loop, its checkpoints and
their restore, the stop flag, and the evaluation loop.

    TrainingRun(args, model, make_optimizer, ema_decay)   model, optimizer, moving averages and
                                                          the checkpoint manager of --train-dir;
                                                          restores the latest checkpoint
    TrainingRun.fit(queue, csv, writer)                   the loop to --max-steps (below)
    StopFlag (stop_flag.py)                               Ctrl-C / SIGTERM: save, then stop
    load_checkpoint_or_fail(path)                         (arrays, meta), or one line of error
    latest_checkpoint(train_dir)                          the newest checkpoint, read-only
    evaluate_batches(model, batches) (evaluation.py)      precision@1 and per-class counts

In a world of K > 1 processes (mpiexec; tinybn.distributed) the run is one replica of a
synchronous data-parallel job: rank 0 restores and broadcasts the start state, backward
goes through DataParallel (the mean of the tower gradients), the stop flag and the loss
are agreed every step, and only rank 0 writes --train-dir (the other ranks' csv, events
and progress are NullLog).

One step, as TF's tutorial trainers run it:
    loss = model.loss(model(images), labels)        # mean xent + weight decay
    loss.backward(); optimizer.step()               # lr read at the pre-increment global step
    ema.apply(params)                               # num_updates = the incremented global step

The tasks (tinybn.tasks) subclass TrainingRun with their model, optimizer and checkpoint meta.

Training floor: imports core, backend, optim, distributed, metrics and the infrastructure
(checkpoint, summary, csv_log via run_dirs, progress); never tasks or the command lines.
"""
import time

import numpy as np

from . import backend, checkpoint, optim
from .checkpoint_manager import CheckpointManager
from .evaluation import Evaluation, evaluate_batches  # noqa: F401  (the tasks' evaluation loop)
from .distributed import world as world_lib
from .distributed.data_parallel import DataParallel
from .progress import Progress
from .run_dirs import check_dir, describe_os_error, open_csv
from .stop_flag import StopFlag
from .summary import SummaryWriter
from .tensor import Tensor
from .train_summaries import TutorialSummaries

TRAIN_CSV_FIELDS = ("step", "loss", "train_accuracy", "learning_rate", "examples_per_sec", "sec_per_batch",
                    "wall_time")
# what every rank of a job must have alike (tinybn.distributed.world.check_same_flags)
SAME_ON_EVERY_RANK = ("task", "model", "batch_size", "seed", "max_steps", "sync_bn", "check_replicas",
                      "checkpoint_every", "log_every", "summary_every", "backend")


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


class NullLog:
    """What a rank other than 0 writes to: csv, event files and progress that drop everything."""

    def log(self, *args, **kwargs):
        pass

    scalar = scalars = histogram = images = flush = close = log

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        pass


class TrainingRun:
    """A model, its optimizer (and moving averages, if any) and checkpoints, with the
    input position going into and out of each checkpoint alongside them.

    Subclasses give `meta()` (what a checkpoint records of the run) and `resume_keys`
    (the meta entries that must match to resume). `num_examples`, the training set's
    size, is compared across the ranks of a data-parallel job with the flags."""

    resume_keys = ("task", "model", "batch_size", "seed")

    def __init__(self, args, model, make_optimizer, ema_decay=None, num_examples=None, world=None):
        self.args, self.model = args, model
        self.world = world or world_lib.world()
        self.is_root = self.world.is_root
        self.replicas = self.world.size
        world_lib.use_local_gpu(self.world, args.backend)     # before the model's arrays go to a GPU
        self.model.to_backend(args.backend)
        self.named = list(self.model.named_parameters())
        self.opt = make_optimizer(self.named)
        self.ema = None if ema_decay is None else optim.ExponentialMovingAverage(
            ema_decay, num_updates=lambda: self.opt.iterations)
        self.parallel = None
        if self.replicas > 1:
            self.check_same_flags(num_examples)
            self.parallel = DataParallel(self.world, model, self.named, sync_bn=getattr(args, "sync_bn", False),
                                         check_every=getattr(args, "check_replicas", 0))
            self.say(self.parallel.describe(args.backend, args.batch_size))
        self.manager = CheckpointManager(args.train_dir, max_to_keep=args.max_to_keep) if self.is_root else None
        self.queue_state = None
        self.summaries = TutorialSummaries(model, self.named, self.global_batch_size)    # rank 0's
        error = None
        if self.is_root:
            try:
                latest = self.manager.latest()
                if latest:
                    self.restore(latest)
                elif self.ema is not None:
                    self.ema.apply(self.named, num_updates=0)       # shadows start as the initial weights
            except SystemExit as e:     # told to every rank, which all stop (no rank waits for rank 0)
                error = e.code
        if self.parallel is not None:
            error = self.parallel.broadcast(error)
        if error is not None:
            raise world_lib.JobExit(self.world, error)
        if self.parallel is not None:
            self.load_run_state(self.parallel.broadcast(self.run_state() if self.is_root else None))

    @property
    def global_batch_size(self):
        """The images of one step over all replicas (K * --batch-size)."""
        return self.replicas * self.args.batch_size

    @property
    def shard(self):
        """(rank, K) of the input slices, None in one process."""
        return (self.world.rank, self.replicas) if self.replicas > 1 else None

    def say(self, line):
        """Print on rank 0 only (every rank of a job has the same story to tell)."""
        if self.is_root:
            print(line, flush=True)

    def check_same_flags(self, num_examples):
        flags = {f: getattr(self.args, f) for f in SAME_ON_EVERY_RANK if hasattr(self.args, f)}
        flags.update(self.meta())
        if num_examples is not None:
            flags["the training set's size"] = int(num_examples)
        world_lib.check_same_flags(self.world, flags)

    @property
    def step(self):
        return self.opt.iterations

    def meta(self):
        raise NotImplementedError

    def checkpoint_meta(self):
        """meta() and what a data-parallel job adds: its number of replicas and BN mode."""
        return dict(self.meta(), replicas=self.replicas, sync_bn=bool(getattr(self.args, "sync_bn", False)))

    def run_state(self, queue_state=None):
        """Everything a checkpoint holds: model, optimizer slots, EMA shadows, input position."""
        state = {"model": self.model.state_dict(), "optimizer": self.opt.state_dict()}
        queue_state = self.queue_state if queue_state is None else queue_state
        if queue_state is not None:
            state["queue"] = queue_state
        if self.ema is not None:
            state["ema"] = self.ema.state_dict()
        if self.is_root and self.summaries.loss_averages:
            state["loss_averages"] = self.summaries.state_dict()
        return state

    def load_run_state(self, state):
        self.model.load_state_dict(state.get("model", {}))
        self.opt.load_state_dict(state.get("optimizer", {}))
        if self.ema is not None:
            self.ema.load_state_dict(state.get("ema", {}), params=self.named)
        self.queue_state = state.get("queue")
        if self.is_root:
            self.summaries.load_state_dict(state.get("loss_averages", {}))

    def save(self, queue):
        """rank 0: write a checkpoint of the run at this step (its path); other ranks: None."""
        if not self.is_root:
            return None
        state = self.run_state(queue.state_dict())
        try:
            return self.manager.save(self.step, checkpoint.flatten(state), self.checkpoint_meta())
        except OSError as e:       # a full disk, a read-only file system: the last checkpoint is intact
            raise SystemExit(f"error: cannot save the checkpoint of step {self.step} in {self.args.train_dir}: "
                             f"{describe_os_error(e)} (the last checkpoint, "
                             f"{self.manager.latest() or 'none'}, is kept)") from None

    def open_csv(self, name, fieldnames):
        """CSVLogger of `name` in --train-dir without the rows of steps after the restored one: a run
        that crashed after its last checkpoint logged them, and this one logs them again."""
        if not self.is_root:
            return NullLog()
        return open_csv(self.args.train_dir, name, fieldnames, "--train-dir", purge_step=self.step + 1)

    def open_events(self):
        """A new event file in --train-dir; TensorBoard drops the earlier files' events of the steps
        after the restored one (purge_step: the first step this run writes)."""
        if not self.is_root:
            return NullLog()
        return SummaryWriter(self.args.train_dir, purge_step=self.step + 1)

    def restore(self, path):
        arrays, meta = load_checkpoint_or_fail(path)
        mine = self.meta()
        for key in self.resume_keys:
            if meta.get(key) != mine[key]:
                raise SystemExit(f"error: {path} was written with {key}={meta.get(key)!r}, this run has "
                                 f"{key}={mine[key]!r}; use the same flags or another --train-dir")
        written_by = meta.get("replicas", 1)     # checkpoints from before data parallelism: one process
        if written_by != self.replicas:
            raise SystemExit(
                f"error: {path} was written by a job of {written_by} replica(s), this one has {self.replicas}: "
                f"the global batch ({written_by} x {self.args.batch_size}), the learning-rate schedule and "
                f"the input order depend on it; resume with "
                f"{'mpiexec -n %d ' % written_by if written_by > 1 else 'one process (no mpiexec) '}"
                "and the same flags, or use another --train-dir")
        try:
            self.load_run_state(checkpoint.unflatten(arrays))
        except ValueError as e:
            raise SystemExit(f"error: {path} does not match the {mine['model']!r} model: {e}")
        print(f"resumed from {path} at step {self.step}", flush=True)

    def summary_due(self):
        """Whether the step about to run is one write_summaries writes (rank 0, --summary-every)."""
        every = getattr(self.args, "summary_every", 0)
        return self.is_root and bool(every) and (self.step + 1) % every == 0

    def train_step(self, images, labels):
        self.summaries.before_step(self.step, images, self.summary_due())
        images, labels = backend.device_array(images), backend.device_array(labels)
        logits = self.model(Tensor(images))
        loss = self.model.loss(logits, labels)
        if self.is_root:
            self.summaries.after_loss(logits, labels, loss)
        self.model.zero_grad()
        if self.parallel is None:
            loss.backward()
        else:
            self.parallel.backward(loss)        # every .grad: the mean of the K towers'
        lr = self.opt.current_learning_rate()
        self.opt.step()
        if self.ema is not None:
            self.ema.apply(self.named)
        if self.parallel is not None:
            self.parallel.after_update(self.step, self.replica_tensors)
        accuracy = float(np.mean(np.argmax(logits.numpy(), axis=1) == backend.to_numpy(labels)))
        return float(loss.item()), accuracy, float(lr)

    def replica_tensors(self):
        """[(name, array)] of what must be bitwise equal on every rank (--check-replicas): the
        run's state but rank 0's loss averages for the summaries."""
        state = self.run_state()
        state.pop("loss_averages", None)
        return list(checkpoint.flatten(state).items())

    def progress_line(self, loss, accuracy, duration):
        """The tutorial's log line."""
        return (f"loss = {loss:.2f} ({self.global_batch_size / duration:.1f} examples/sec; "
                f"{duration:.3f} sec/batch)")

    def write_summaries(self, writer, loss, accuracy, lr):
        """The tutorial's TensorBoard summaries of this step (train_summaries.TutorialSummaries)."""
        self.summaries.write(writer, self.step, lr)

    def fit(self, queue, csv, writer, after_step=None):
        """Train to --max-steps from `queue` (next_batch(); the caller closes it): log to `csv`
        (open_csv("train.csv", TRAIN_CSV_FIELDS)), write summaries and checkpoints at their
        intervals, stop cleanly on Ctrl-C or SIGTERM (StopFlag), save at the end.
        after_step(step), if given, runs after each step; returning True says it took time
        that must not count in sec/batch. sec/batch is the steps' own time: the time of the
        checkpoints written inside a logging window (by fit or after_step) is taken out of it."""
        args = self.args
        progress = Progress(args.max_steps, start=self.step) if self.is_root else NullLog()
        last_saved = self.step
        with StopFlag(quiet=not self.is_root) as stop:
            tick, saving = time.time(), 0.0     # saving: checkpoint seconds inside this window
            stopping = False
            while self.step < args.max_steps and not stopping:
                loss, accuracy, lr = self.train_step(*queue.next_batch())
                stopping = stop.requested
                if self.parallel is not None:   # every rank stops after the same step
                    stopping, loss, accuracy = self.parallel.agree(stopping, loss, accuracy)
                if not np.isfinite(loss):
                    latest = self.manager.latest() if self.is_root else None
                    raise world_lib.JobExit(self.world, f"error: the loss diverged (loss = {loss}) at step "
                                                        f"{self.step}; the last good checkpoint is {latest}")
                step = self.step
                if step % args.log_every == 0:
                    duration = (time.time() - tick - saving) / args.log_every
                    tick, saving = time.time(), 0.0
                    csv.log(step=step, loss=loss, train_accuracy=accuracy, learning_rate=lr,
                            examples_per_sec=self.global_batch_size / duration, sec_per_batch=duration,
                            wall_time=tick)
                    progress.log(step, self.progress_line(loss, accuracy, duration))
                if step % args.summary_every == 0:
                    self.write_summaries(writer, loss, accuracy, lr)
                if step % args.checkpoint_every == 0:
                    started = time.time()
                    self.save(queue)
                    last_saved = step
                    saving += time.time() - started
                started = time.time()
                if after_step is not None and after_step(step):
                    saving += time.time() - started
            if self.step != last_saved:
                saved = self.save(queue)
                self.say(f"saved {saved}")
        progress.close()

