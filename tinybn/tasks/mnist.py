"""The MNIST task: the two batch-norm models (cnn_bn, fc-bn) trained with their optimizers
(MnistRun), and precision@1 with BN in inference mode on named splits of the data.

cnn_bn trains with Adam(1e-3), fc-bn with SGD(0.5); the learning rate is constant and
the weights have no moving averages (the seeds have none). Evaluation runs the model
in eval() mode under no_grad: BN normalises with its moving statistics and never
changes them.

Tasks floor: imports training, data, models, optim, backend and core; never the command lines.
"""
import sys
import time

import numpy as np

from .. import checkpoint, optim
from ..data import mnist as mnist_data
from ..models import mnist as mnist_models
from ..training import TRAIN_CSV_FIELDS, TrainingRun, evaluate_batches, load_checkpoint_or_fail

RESUME_KEYS = ("task", "model", "batch_size", "seed", "bn_decay", "train_split")
EVAL_CSV_FIELDS = ("step", "set", "split", "examples", "precision_at_1")


def make_optimizer(model_name, named_params):
    if model_name == "cnn_bn":
        return optim.Adam(named_params, learning_rate=1e-3)
    return optim.GradientDescent(named_params, learning_rate=0.5)


def load_flag_split(flag, spec, args):
    """(images, labels, resolved Split) of a split flag; its errors name the flag."""
    try:
        return mnist_data.load_split(mnist_data.parse_split(spec), args.data_dir, download=not args.no_download)
    except (mnist_data.DatasetNotFoundError, PermissionError) as e:    # about the files, not the flag
        raise SystemExit(f"error: {e}")
    except (ValueError, OSError) as e:
        raise SystemExit(f"error: --{flag.replace('_', '-')}: {e}")


def load_sets(args):
    """The sets of --train-split and --eval-split; a warning on stderr if they share examples."""
    train = load_flag_split("train_split", args.train_split, args)
    evaluation = load_flag_split("eval_split", args.eval_split, args)
    shared = train[2].overlap(evaluation[2])
    if shared:
        print(f"warning: --train-split {train[2]} and --eval-split {evaluation[2]} share {shared} examples; "
              "the evaluation is not of held-out data", file=sys.stderr, flush=True)
    return train, evaluation


class MnistRun(TrainingRun):
    """The model and its optimizer (no moving averages of the weights: the seeds have none)."""

    resume_keys = RESUME_KEYS

    def __init__(self, args, train_split, num_examples=None):
        self.train_split = str(train_split)        # before the base class restores: meta() needs it
        model = mnist_models.MODELS[args.model](rng=np.random.default_rng(args.seed), bn_decay=args.bn_decay)
        super().__init__(args, model, lambda named: make_optimizer(args.model, named), num_examples=num_examples)

    def progress_line(self, loss, accuracy, duration):
        return (f"loss = {loss:.4f}, batch accuracy = {accuracy:.3f} "
                f"({self.global_batch_size / duration:.1f} examples/sec; {duration:.3f} sec/batch)")

    def meta(self):
        a = self.args
        return {"task": "mnist", "model": a.model, "batch_size": a.batch_size, "seed": a.seed,
                "bn_decay": a.bn_decay, "train_split": self.train_split, "eval_split": a.eval_split}


def evaluate(model, sets, batch_size, step, writer=None, csv=None, say=print):
    """precision@1 of each (name, (images, labels, split)) with BN in inference mode; {name: precision}.
    say(line) prints the result (a data-parallel job's ranks other than 0 say nothing)."""
    was_training = model.training
    model.eval()
    out = {}
    try:
        for name, (images, labels, split) in sets:
            result = evaluate_batches(model, mnist_data.eval_batches(images, labels, batch_size),
                                      mnist_models.NUM_CLASSES)
            precision, total = result.precision, result.total
            say(f"{time.strftime('%Y-%m-%d %H:%M:%S')}: step {step}: {name} set {split} ({total} examples, "
                f"BN in inference mode): precision @ 1 = {precision:.4f}")
            if writer is not None:
                writer.scalar(f"precision @ 1/{name}", precision, step)
                csv.log(step=step, set=name, split=str(split), examples=total, precision_at_1=precision)
            out[name] = precision
    finally:
        model.train(was_training)
    return out


def train(args, train_set, eval_set):
    """Train an MnistRun of --train-dir on train_set to --max-steps, evaluating both sets every
    --eval-every steps and at the end (run.results: {"eval": precision, "train": precision})."""
    run = MnistRun(args, train_set[2], num_examples=len(train_set[1]))
    sets = [("eval", eval_set), ("train", train_set)]
    with run.open_csv("train.csv", TRAIN_CSV_FIELDS) as csv, run.open_csv("eval.csv", EVAL_CSV_FIELDS) as eval_csv, \
            run.open_events() as writer:
        if run.step >= args.max_steps:
            run.say(f"nothing to train: the checkpoint is at step {run.step} >= --max-steps {args.max_steps}")
        else:
            _train_loop(run, args, train_set, sets, csv, writer, eval_csv)
        run.results = evaluate(run.model, sets, args.batch_size, run.step, writer, eval_csv, say=run.say)
    return run


def _train_loop(run, args, train_set, sets, csv, writer, eval_csv):
    images, labels, _ = train_set
    try:
        queue = mnist_data.train_batches(images, labels, run.global_batch_size, seed=args.seed,
                                         state=run.queue_state, shard=run.shard)
    except ValueError as e:
        raise SystemExit(f"error: cannot resume the input position: {e}")

    def evaluate_now_and_then(step):
        if args.eval_every and step % args.eval_every == 0 and step < args.max_steps:
            evaluate(run.model, sets, args.batch_size, step, writer, eval_csv, say=run.say)
            return True
        return False
    with queue:
        run.fit(queue, csv, writer, after_step=evaluate_now_and_then)


def restore_model(path):
    """(model, meta) of an MNIST training checkpoint; evaluate() puts the model in inference mode."""
    arrays, meta = load_checkpoint_or_fail(path)
    if meta.get("task") != "mnist" or meta.get("model") not in mnist_models.MODELS:
        raise SystemExit(f"error: {path} is not an MNIST training checkpoint (meta: {meta})")
    model = mnist_models.MODELS[meta["model"]](bn_decay=meta["bn_decay"])
    try:
        model.load_state_dict(checkpoint.unflatten(arrays).get("model", {}))
    except ValueError as e:
        raise SystemExit(f"error: {path}: {e}")
    return model.to_backend(), meta


def checkpoint_sets(args, meta):
    """[("eval", set), ("train", set)] of --eval-split and --train-split, else the run's own."""
    return [(name, load_flag_split(flag, getattr(args, flag) or meta[flag], args))
            for name, flag in (("eval", "eval_split"), ("train", "train_split"))]
