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
from . import summary as summary_lib
from .checkpoint_manager import CheckpointManager
from .evaluation import Evaluation, evaluate_batches  # noqa: F401  (the tasks' evaluation loop)
from .distributed import world as world_lib
from .distributed.data_parallel import DataParallel
from .models.export import tf_name
from .nn.batchnorm import BatchNorm
from .nn.layers import ReLU
from .ops.basic import reduce_mean
from .ops.losses import l2_loss, sparse_softmax_cross_entropy_with_logits
from .progress import Progress
from .run_dirs import check_dir, describe_os_error, open_csv
from .stop_flag import StopFlag
from .summary import SummaryWriter
from .tensor import Tensor

TRAIN_CSV_FIELDS = ("step", "loss", "train_accuracy", "learning_rate", "examples_per_sec", "sec_per_batch",
                    "wall_time")
LOSS_AVERAGE_DECAY = 0.9      # _add_loss_summaries: ExponentialMovingAverage(0.9) of each loss term
IMAGE_SUMMARIES = 3           # tf.summary.image's max_outputs for the distorted training images
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
        self.loss_terms, self.loss_averages = {}, {}    # summaries' (write_summaries); rank 0 only
        self.summary_images, self.summary_clock = None, None
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
        return state

    def load_run_state(self, state):
        self.model.load_state_dict(state.get("model", {}))
        self.opt.load_state_dict(state.get("optimizer", {}))
        if self.ema is not None:
            self.ema.load_state_dict(state.get("ema", {}), params=self.named)
        self.queue_state = state.get("queue")

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
        summarize = self.summary_due()
        if summarize:
            self.summary_images = np.array(backend.to_numpy(images[:IMAGE_SUMMARIES]))
        if self.summary_clock is None:
            self.summary_clock = (time.time(), self.step)
        if hasattr(self.model, "record_activations"):
            self.model.record_activations = summarize
        images, labels = backend.device_array(images), backend.device_array(labels)
        logits = self.model(Tensor(images))
        loss = self.model.loss(logits, labels)
        if self.is_root:
            self.average_loss_terms(logits, labels, loss)
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
        """[(name, array)] of what must be bitwise equal on every rank (--check-replicas)."""
        return list(checkpoint.flatten(self.run_state()).items())

    def progress_line(self, loss, accuracy, duration):
        """The tutorial's log line."""
        return (f"loss = {loss:.2f} ({self.global_batch_size / duration:.1f} examples/sec; "
                f"{duration:.3f} sec/batch)")

    def average_loss_terms(self, logits, labels, loss):
        """Each loss term of this step (before the update) and its moving average, by TF's op
        names: total_loss, cross_entropy and each <layer>/weight_loss (wd * l2_loss of its
        weights). Every step, as the tutorial's loss_averages_op runs with each train_op; the
        averages start at 0, as TF's shadow of a tensor does. In a data-parallel job: rank 0's
        tower, as the multi-GPU tutorial summarizes one tower."""
        terms = {"total_loss": float(loss.item())}
        decay = getattr(self.model, "weight_decay", None)
        if decay is not None:
            no_grad = Tensor(logits.data)
            terms["cross_entropy"] = float(reduce_mean(sparse_softmax_cross_entropy_with_logits(labels, no_grad)).item())
            names = {id(p): name for name, p in self.named}
            for param, wd in decay:
                terms[f"{summary_tag(names[id(param)]).rpartition('/')[0]}/weight_loss"] = float(
                    (l2_loss(Tensor(param.data)) * wd).item())
        for name, value in terms.items():
            self.loss_averages[name] = (LOSS_AVERAGE_DECAY * self.loss_averages.get(name, 0.0)
                                        + (1 - LOSS_AVERAGE_DECAY) * value)
        self.loss_terms = terms

    def write_summaries(self, writer, loss, accuracy, lr):
        """What the tutorial's cifar10.py and cifar10_train.py write, under TF's tags (see
        summary_tag): each loss term raw ("cross_entropy__raw_": TF's summary ops turn the
        " (raw)" of its name into "__raw_") and averaged ("cross_entropy"), learning_rate,
        examples/sec and global_step/sec since the last summary, each layer's activations
        and sparsity (the fraction of zeros), every weight and its gradient (conv1/weights,
        conv1/weights/gradients), BN's moving statistics, and the first IMAGE_SUMMARIES
        distorted training images (images/image/i; skipped without Pillow)."""
        step = self.step
        scalars = {}
        for name, value in self.loss_terms.items():
            scalars[f"{name}__raw_"] = value
            scalars[name] = self.loss_averages[name]
        scalars["learning_rate"] = lr
        now, (then, then_step) = time.time(), self.summary_clock
        if step > then_step and now > then:
            scalars["global_step/sec"] = (step - then_step) / (now - then)
            scalars["examples/sec"] = scalars["global_step/sec"] * self.global_batch_size
        self.summary_clock = (now, step)
        for layer, x in activation_summaries(self.model).items():
            values = backend.to_numpy(x.data)
            writer.histogram(f"{layer}/activations", values, step)
            scalars[f"{layer}/sparsity"] = float(np.mean(values == 0))
        writer.scalars(scalars, step)
        for name, p in self.named:
            writer.histogram(summary_tag(name), p.numpy(), step)
            if p.grad is not None:
                writer.histogram(f"{summary_tag(name)}/gradients", backend.to_numpy(p.grad), step)
        for name, b in self.model.named_buffers():       # BN's moving statistics: what inference uses
            writer.histogram(summary_tag(name), b.numpy(), step)
        if self.summary_images is not None and summary_lib.HAVE_PILLOW:
            writer.images("images", self.summary_images, step, max_outputs=IMAGE_SUMMARIES)
        self.summary_images = None
        if hasattr(self.model, "activations"):
            self.model.activations = {}      # the step's tensors go with the graph they belong to

    def fit(self, queue, csv, writer, after_step=None):
        """Train to --max-steps from `queue` (next_batch(); the caller closes it): log to `csv`
        (open_csv("train.csv", TRAIN_CSV_FIELDS)), write summaries and checkpoints at their
        intervals, stop cleanly on Ctrl-C or SIGTERM (StopFlag), save at the end.
        after_step(step), if given, runs after each step; returning True says it took time
        that must not count in the next sec/batch."""
        args = self.args
        progress = Progress(args.max_steps, start=self.step) if self.is_root else NullLog()
        last_saved = self.step
        with StopFlag(quiet=not self.is_root) as stop:
            tick = time.time()
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
                    duration = (time.time() - tick) / args.log_every
                    tick = time.time()
                    csv.log(step=step, loss=loss, train_accuracy=accuracy, learning_rate=lr,
                            examples_per_sec=self.global_batch_size / duration, sec_per_batch=duration,
                            wall_time=tick)
                    progress.log(step, self.progress_line(loss, accuracy, duration))
                if step % args.summary_every == 0:
                    self.write_summaries(writer, loss, accuracy, lr)
                if step % args.checkpoint_every == 0:
                    self.save(queue)
                    last_saved = step
                if after_step is not None and after_step(step):
                    tick = time.time()
            if self.step != last_saved:
                saved = self.save(queue)
                self.say(f"saved {saved}")
        progress.close()


def summary_tag(name):
    """The TF variable name of a state_dict name ("net/conv1/kernel" -> "conv1/weights"), the
    name itself for a model outside the tutorial's naming."""
    try:
        return tf_name(name)
    except ValueError:
        return name


def activation_summaries(model):
    """{layer: output} for the layers with a kernel of a model that recorded its activations,
    each output taken after the BatchNorm and ReLU that follow the layer: TF's "conv1" is
    the relu's output (empty when nothing was recorded)."""
    outputs, current = {}, None
    layers = dict(model.net.named_children()) if hasattr(model, "net") else {}
    for name, x in getattr(model, "activations", {}).items():
        layer = layers[name]
        if "kernel" in layer._parameters:
            current = name
        elif not isinstance(layer, (BatchNorm, ReLU)):
            current = None
        if current is not None:
            outputs[current] = x
    return outputs
