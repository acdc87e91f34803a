"""The CIFAR-10 task: the tutorial's models trained with their optimizers and moving averages
(CifarRun), precision@1 of a run's checkpoints (evaluate_checkpoints, with --watch; all of them
with their wall times, evaluate_every_checkpoint, and their curve, plot_time_curve), and the
report of one checkpoint by class, with its pictures (report_checkpoint: --report, --plot).
--model fast (airbench's recipe on 32x32 images) is trained and evaluated by tasks/cifar_fast.py:
train() hands it args, and evaluate() a FastEvalSet (the test images and the TTA level) in
place of the tutorial's eval batches.

Schedules: the tutorial models use plain SGD with lr 0.1 x 0.1 every 350 epochs
(decay_steps = int(50000 / batch_size / K * 350), staircase, K the number of replicas
as cifar10_multi_gpu_train.py's num_gpus, 1 in one process); the seed's BN model uses
Adam with 0.04 x 0.9 every 1000 steps (staircase). The moving averages of the
weights (decay 0.9999) are what evaluation restores by default, as the tutorial's
`variable_averages.variables_to_restore()`.

Tasks floor: imports training, data, models, optim, backend and core; never the command lines.
"""
import os
import sys
import time
from collections import namedtuple

import numpy as np

from .. import checkpoint, optim
from ..data import cifar10 as cifar_data
from ..distributed import world as world_lib
from ..models import cifar10 as cifar_models
from ..run_dirs import open_csv
from ..summary import SummaryWriter
from . import cifar_fast, curve, report
from ..training import (TRAIN_CSV_FIELDS, TrainingRun, evaluate_batches, latest_checkpoint,
                        load_checkpoint_or_fail)

NUM_EXAMPLES_PER_EPOCH_FOR_TRAIN = 50000      # the tutorial's constant, whatever the files hold
EMA_DECAY = 0.9999
EMA_SUFFIX = "/ExponentialMovingAverage"
EVAL_CSV_FIELDS = ("step", "precision_at_1", "examples")


def make_optimizer(model_name, named_params, batch_size, replicas=1):
    """The model's optimizer; batch_size is per replica, replicas the K of a data-parallel job."""
    if model_name == "bn":
        lr = optim.ExponentialDecay(0.04, 1000, 0.9, staircase=True)
        return optim.Adam(named_params, learning_rate=lr)
    num_batches_per_epoch = NUM_EXAMPLES_PER_EPOCH_FOR_TRAIN / batch_size / replicas
    decay_steps = int(num_batches_per_epoch * 350)
    lr = optim.ExponentialDecay(0.1, decay_steps, 0.1, staircase=True)
    return optim.GradientDescent(named_params, learning_rate=lr)


def load_split(split, args):
    """(images, labels) of the "train" or "test" split of --data-dir; its errors in one line."""
    try:
        return cifar_data.load_cifar10(split, args.data_dir, download=not args.no_download)
    except (FileNotFoundError, ValueError, OSError) as e:
        raise SystemExit(f"error: {e}")


class CifarRun(TrainingRun):
    """The tutorial's run: the model, its optimizer and the weights' moving averages (EMA_DECAY)."""

    def __init__(self, args, num_examples=None, world=None):
        model = cifar_models.MODELS[args.model](rng=np.random.default_rng(args.seed))
        world = world or world_lib.world()
        self.clock = curve.RunClock(args)
        super().__init__(args, model, lambda named: make_optimizer(args.model, named, args.batch_size, world.size),
                         ema_decay=EMA_DECAY, num_examples=num_examples, world=world)

    def meta(self):
        a = self.args
        return {"task": "cifar", "model": a.model, "batch_size": a.batch_size, "seed": a.seed}

    def checkpoint_meta(self):
        """meta() and the times of the curve (tasks/curve.py)."""
        return dict(super().checkpoint_meta(), **self.clock.meta(self.step))

    def restore(self, path):
        super().restore(path)
        self.clock.resumed(path)


def train(args, images, labels):
    """Train a CifarRun of --train-dir on the training set (images, labels) to --max-steps
    (--model fast: a FastRun to the end of --epochs, cifar_fast.train_fast)."""
    if args.model == "fast":
        return cifar_fast.train_fast(args, images, labels)
    run = CifarRun(args, num_examples=len(images))
    if run.step >= args.max_steps:
        run.say(f"nothing to do: the checkpoint is at step {run.step} >= --max-steps {args.max_steps}")
        return run
    try:
        queue = cifar_data.training_queue(images, labels, run.global_batch_size, seed=args.seed,
                                          num_threads=args.num_threads, state=run.queue_state, shard=run.shard)
    except ValueError as e:
        raise SystemExit(f"error: {e}")
    with queue, run.open_csv("train.csv", TRAIN_CSV_FIELDS) as csv, run.open_events() as writer:
        run.fit(queue, run.clock.watching(csv), writer)
    return run


def restore_model(path, use_ema=True):
    """(model in eval mode, meta) from a training checkpoint; shadow weights unless use_ema=False."""
    arrays, meta = load_checkpoint_or_fail(path)
    if meta.get("task") == "cifar" and meta.get("model") == "fast":
        raise SystemExit(f"error: {path} is a checkpoint of --model fast: evaluate it with --model fast")
    if meta.get("task") != "cifar" or meta.get("model") not in cifar_models.MODELS:
        raise SystemExit(f"error: {path} is not a CIFAR-10 training checkpoint (meta: {meta})")
    model = cifar_models.MODELS[meta["model"]]()
    state = checkpoint.unflatten(arrays)
    weights = dict(state.get("model", {}))
    if use_ema:
        shadows = state.get("ema", {})
        for name, _ in model.named_parameters():
            if name + EMA_SUFFIX not in shadows:
                raise SystemExit(f"error: {path} has no moving average of {name!r}; use --no-ema")
            weights[name] = shadows[name + EMA_SUFFIX]
    try:
        model.load_state_dict(weights)
    except ValueError as e:
        raise SystemExit(f"error: {path}: {e}")
    return model.to_backend().eval(), meta


# --model fast's evaluation set: uint8 (N, 32, 32, 3) images, labels, airbench's TTA level (None: 2)
FastEvalSet = namedtuple("FastEvalSet", "images labels tta_level batch_size")


def evaluate(path, batches, use_ema):
    """(precision@1, examples, step, weights) of the checkpoint at `path` over `batches` (a
    FastEvalSet: the fast checkpoint's, with test-time augmentation); `weights` names the weights
    evaluated and, for fast, the TTA level, as the eval line prints them."""
    if isinstance(batches, FastEvalSet):
        precision, step, weights = cifar_fast.evaluate_fast(path, batches.images, batches.labels,
                                                            batches.tta_level, batch_size=batches.batch_size)
        level = cifar_fast.HYPERPARAMETERS["tta_level"] if batches.tta_level is None else batches.tta_level
        return precision, len(batches.labels), step, f"{weights}, TTA level {level}"
    model, meta = restore_model(path, use_ema)
    result = evaluate_batches(model, batches, cifar_models.NUM_CLASSES)
    return result.precision, result.total, meta["step"], _weights(use_ema)


def _weights(use_ema):
    return "moving-average weights" if use_ema else "raw weights"


def eval_batches(images, labels, batch_size):
    """The tutorial's eval input over (images, labels): centre crop, every example once."""
    return cifar_data.EvalBatches(images, labels, batch_size)


def evaluate_checkpoints(args, batches):
    """precision@1 of --train-dir's newest checkpoint over `batches`, into eval.csv and event files
    of --eval-dir; with --watch, of each newer one as training writes it, until Ctrl-C or
    --stop-at-step. Returns the last precision (None when a watch is interrupted)."""
    try:
        with open_csv(args.eval_dir, "eval.csv", list(EVAL_CSV_FIELDS), "--eval-dir") as csv:
            return watch(args, batches, csv)
    except KeyboardInterrupt:
        if not args.watch:
            raise
        return None     # Ctrl-C is how a watch ends


def evaluate_every_checkpoint(args, batches):
    """--every-checkpoint: precision@1 of each checkpoint of --train-dir over `batches` (as evaluate()),
    with its wall time since the run's start, into --eval-dir's curve.csv (tasks/curve.py)."""
    return curve.evaluate_every_checkpoint(args.train_dir, args.eval_dir,
                                           lambda path: evaluate(path, batches, not args.no_ema)[:3])


def plot_time_curve(args):
    """--time-curve PNG: precision@1 against wall time of each --curve-run [LABEL=]EVAL_DIR (default:
    --eval-dir), from their curve.csv, on one pair of axes."""
    runs = []
    for spec in args.curve_run or [args.eval_dir]:
        label, _, folder = spec.partition("=") if "=" in spec else (os.path.basename(os.path.normpath(spec)), "", spec)
        try:
            points = curve.read_curve(folder)
        except ValueError as e:
            raise SystemExit(f"error: {e}") from None
        if points is None or not len(points["step"]):
            raise SystemExit(f"error: no points in {os.path.join(folder, curve.CURVE_CSV)}; make them first "
                             "(python -m tinybn.eval cifar --every-checkpoint --train-dir ... --eval-dir "
                             f"{folder})")
        runs.append((label, points))
    report.plot_time_curves(runs, args.time_curve)
    print(f"wrote {args.time_curve}", flush=True)
    return runs


def watch(args, batches, csv):
    """Evaluate the newest checkpoint; with --watch, each newer one as it appears (see the docstring)."""
    seen = writer = None
    said_waiting = False
    try:
        while True:
            path = latest_checkpoint(args.train_dir)
            if path is None and not args.watch:
                raise SystemExit(f"error: no checkpoint in {args.train_dir}; train first "
                                 "(python -m tinybn.train cifar --train-dir ...)")
            if path is None and not said_waiting:
                print(f"waiting for a checkpoint in {args.train_dir}", flush=True)
                said_waiting = True
            if path is not None and path != seen:
                try:
                    precision, total, step, weights = evaluate(path, batches, not args.no_ema)
                except FileNotFoundError:       # rotated away since latest(): on to the newest one
                    continue
                print(f"{time.strftime('%Y-%m-%d %H:%M:%S')}: step {step}: precision @ 1 = {precision:.4f} "
                      f"({total} examples, {weights})", flush=True)
                if writer is None:
                    writer = SummaryWriter(args.eval_dir)
                writer.scalar("Precision @ 1", precision, step)   # cifar10_eval.py's tag
                writer.flush()
                csv.log(step=step, precision_at_1=precision, examples=total)
                seen = path
                if not args.watch or (args.stop_at_step and step >= args.stop_at_step):
                    return precision
            time.sleep(args.eval_interval_secs)
    finally:
        if writer is not None:
            writer.close()


def report_checkpoint(args, images, batches):
    """--report and --plot DIR: precision@1, then per-class precision and recall and the confusion
    matrix (tinybn.tasks.report) of --train-dir's newest checkpoint over `batches`; with --plot, the
    PNGs of the confusion matrix, of misclassified `images` (the examples of `batches` as read) and
    of the curves of train.csv (and --eval-dir's eval.csv). Writes nothing into --eval-dir."""
    path = latest_checkpoint(args.train_dir)
    if path is None:
        raise SystemExit(f"error: no checkpoint in {args.train_dir}; train first "
                         "(python -m tinybn.train cifar --train-dir ...)")
    model, meta = restore_model(path, not args.no_ema)
    labels, predicted = report.predictions(model, batches)
    names, note = report.class_names(_batches_folder(args), cifar_models.NUM_CLASSES)
    if note:
        print(note, file=sys.stderr, flush=True)
    result = report.ClassReport(labels, predicted, names)
    headline = f"step {meta['step']}: precision @ 1 = {result.precision_at_1:.4f}"
    print(f"{time.strftime('%Y-%m-%d %H:%M:%S')}: {headline} ({result.total} examples, "
          f"{_weights(not args.no_ema)})", flush=True)
    print(result.format(), flush=True)
    if args.plot:
        _write_plots(args, result, images, labels, predicted, headline)
    return result.precision_at_1


def _batches_folder(args):
    """The folder the test split was read from (its batches.meta.txt names the classes), or None."""
    try:
        return cifar_data.batches_folder(args.data_dir, download=False)
    except Exception:       # an archive as --data-dir, say: report.class_names falls back, saying so
        return None


def _write_plots(args, result, images, labels, predicted, headline):
    os.makedirs(args.plot, exist_ok=True)
    out = [os.path.join(args.plot, name) for name in report.PLOT_FILES]
    report.plot_confusion(result, out[0], title=headline)
    report.plot_misclassified(images, labels, predicted, result.names, out[1])
    print(f"wrote {out[0]} and {out[1]}", flush=True)
    try:
        report.plot_curves(os.path.join(args.train_dir, "train.csv"), os.path.join(args.eval_dir, "eval.csv"), out[2])
        print(f"wrote {out[2]}", flush=True)
    except FileNotFoundError as e:
        print(f"note: no curves: {e}", file=sys.stderr, flush=True)
    except ValueError as e:
        raise SystemExit(f"error: {e}") from None
