"""python -m tinybn.train mnist (and python -m tinybn.eval mnist): the two MNIST BN models.

One step: a shuffled minibatch (a new permutation each epoch, deterministic for --seed)
-> model in training mode (BN normalises with the batch's statistics and updates its
moving ones) -> mean xent (+ fc-bn's L2) -> backward -> cnn_bn: Adam(1e-3), fc-bn:
SGD(0.5); the learning rate is constant.

Evaluation (every --eval-every steps, and always at the end): the model in eval()
mode under no_grad, so BN normalises with its moving statistics and never changes
them, on the evaluation set and on the training set, printing
    step S: eval set test[8000:10000] (2000 examples, BN in inference mode): precision @ 1 = 0.9850
    step S: train set test[0:8000] (8000 examples, BN in inference mode): precision @ 1 = 0.9950
to stdout and to eval.csv and the event files in --train-dir.

Which examples train and which evaluate: --train-split and --eval-split, each a file
set with an optional Python-style index range, as TFDS writes splits:
    train | test (t10k is a synonym) | NAME[START:STOP], e.g. test[:8000], test[8000:], test[-2000:]
Defaults are the official split (--train-split train --eval-split test). A range
outside the file set, or an empty one, is an error. Overlapping training and
evaluation ranges are allowed, with a warning on stderr that says how many
examples they share (the evaluation is then not of held-out data).

State in --train-dir: model.ckpt-<step>.npz (model with BN moving statistics,
optimizer slots, input position; the last --max-to-keep kept), events files,
train.csv and eval.csv. The same --train-dir resumes exactly where it stopped (the
rows and events of steps after its checkpoint are dropped); Ctrl-C or SIGTERM saves
a checkpoint and exits, as `python -m tinybn.train cifar`.
"""
import argparse
import sys
import time

import numpy as np

from . import checkpoint, cli_flags, optim
from .data import mnist as mnist_data
from .eval import latest_checkpoint, precision_at_1
from .models import mnist as mnist_models
from .train import TRAIN_CSV_FIELDS, TrainingRun, check_train_flags, load_checkpoint_or_fail

RESUME_KEYS = ("task", "model", "batch_size", "seed", "bn_decay", "train_split")
EVAL_CSV_FIELDS = ("step", "set", "split", "examples", "precision_at_1")


def _common_flags(p):
    p.add_argument("--data-dir", default=None, help="holds the MNIST idx files (default: $TINYBN_DATA/mnist "
                   "or ~/.cache/tinybn/mnist); missing ones are downloaded there")
    p.add_argument("--batch-size", type=int, default=128)
    cli_flags.add_backend_flag(p)
    p.add_argument("--no-download", action="store_true", help="fail instead of downloading missing files")


def mnist_parser(sub):
    p = sub.add_parser("mnist", help="MNIST: the BN CNN or the BN fully-connected network",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="cnn_bn", choices=list(mnist_models.MODELS))
    p.add_argument("--max-steps", type=int, default=3000)
    p.add_argument("--train-dir", default="runs/mnist_train")
    p.add_argument("--train-split", default="train", help="examples to train on (default: train)")
    p.add_argument("--eval-split", default="test", help="examples to evaluate on (default: test)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--bn-decay", type=float, default=mnist_models.BN_DECAY, help="BN moving-average decay")
    p.add_argument("--log-every", type=int, default=10)
    p.add_argument("--summary-every", type=int, default=100)
    p.add_argument("--checkpoint-every", type=int, default=1000)
    p.add_argument("--eval-every", type=int, default=0, help="evaluate every N steps too (0: only at the end)")
    p.add_argument("--max-to-keep", type=int, default=5)
    _common_flags(p)
    return p


def mnist_eval_parser(sub):
    p = sub.add_parser("mnist", help="MNIST precision@1 of a training run's latest checkpoint (BN in inference)")
    p.add_argument("--train-dir", default="runs/mnist_train", help="where training writes checkpoints")
    p.add_argument("--eval-split", default=None, help="default: the run's --eval-split")
    p.add_argument("--train-split", default=None, help="default: the run's --train-split")
    _common_flags(p)
    return p


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

    def __init__(self, args, train_split):
        self.train_split = str(train_split)        # before the base class restores: meta() needs it
        model = mnist_models.MODELS[args.model](rng=np.random.default_rng(args.seed), bn_decay=args.bn_decay)
        super().__init__(args, model, lambda named: make_optimizer(args.model, named))

    def progress_line(self, loss, accuracy, duration):
        return (f"loss = {loss:.4f}, batch accuracy = {accuracy:.3f} "
                f"({self.args.batch_size / duration:.1f} examples/sec; {duration:.3f} sec/batch)")

    def meta(self):
        a = self.args
        return {"task": "mnist", "model": a.model, "batch_size": a.batch_size, "seed": a.seed,
                "bn_decay": a.bn_decay, "train_split": self.train_split, "eval_split": a.eval_split}


def evaluate(model, sets, batch_size, step, writer=None, csv=None):
    """precision@1 of each (name, (images, labels, split)) with BN in inference mode; {name: precision}."""
    was_training = model.training
    model.eval()
    out = {}
    try:
        for name, (images, labels, split) in sets:
            precision, total = precision_at_1(model, mnist_data.eval_batches(images, labels, batch_size))
            print(f"{time.strftime('%Y-%m-%d %H:%M:%S')}: step {step}: {name} set {split} ({total} examples, "
                  f"BN in inference mode): precision @ 1 = {precision:.4f}", flush=True)
            if writer is not None:
                writer.scalar(f"precision @ 1/{name}", precision, step)
                csv.log(step=step, set=name, split=str(split), examples=total, precision_at_1=precision)
            out[name] = precision
    finally:
        model.train(was_training)
    return out


def check_flags(args):
    check_train_flags(args)
    if args.eval_every < 0:
        raise SystemExit("error: --eval-every must be >= 0 (0: only at the end)")
    if not 0.0 <= args.bn_decay <= 1.0:
        raise SystemExit(f"error: --bn-decay must be in [0, 1], got {args.bn_decay}")


def train_mnist(args):
    check_flags(args)
    train_set, eval_set = load_sets(args)
    cli_flags.check_batch_size(args.batch_size, len(train_set[1]), f"--train-split {train_set[2]}")
    run = MnistRun(args, train_set[2])
    sets = [("eval", eval_set), ("train", train_set)]
    with run.open_csv("train.csv", TRAIN_CSV_FIELDS) as csv, run.open_csv("eval.csv", EVAL_CSV_FIELDS) as eval_csv, \
            run.open_events() as writer:
        if run.step >= args.max_steps:
            print(f"nothing to train: the checkpoint is at step {run.step} >= --max-steps {args.max_steps}")
        else:
            _train_loop(run, args, train_set, sets, csv, writer, eval_csv)
        run.results = evaluate(run.model, sets, args.batch_size, run.step, writer, eval_csv)
    return run


def _train_loop(run, args, train_set, sets, csv, writer, eval_csv):
    images, labels, _ = train_set
    try:
        queue = mnist_data.train_batches(images, labels, args.batch_size, seed=args.seed, state=run.queue_state)
    except ValueError as e:
        raise SystemExit(f"error: cannot resume the input position: {e}")

    def evaluate_now_and_then(step):
        if args.eval_every and step % args.eval_every == 0 and step < args.max_steps:
            evaluate(run.model, sets, args.batch_size, step, writer, eval_csv)
            return True
        return False
    with queue:
        run.fit(queue, csv, writer, after_step=evaluate_now_and_then)


def eval_mnist(args):
    """python -m tinybn.eval mnist: the latest checkpoint of --train-dir, BN in inference mode."""
    cli_flags.select_backend(args)
    cli_flags.check_ints(args, positive=("batch_size",))
    path = latest_checkpoint(args.train_dir)
    if path is None:
        raise SystemExit(f"error: no checkpoint in {args.train_dir}; train first (python -m tinybn.train mnist)")
    arrays, meta = load_checkpoint_or_fail(path)
    if meta.get("task") != "mnist" or meta.get("model") not in mnist_models.MODELS:
        raise SystemExit(f"error: {path} is not an MNIST training checkpoint (meta: {meta})")
    model = mnist_models.MODELS[meta["model"]](bn_decay=meta["bn_decay"])
    try:
        model.load_state_dict(checkpoint.unflatten(arrays).get("model", {}))
    except ValueError as e:
        raise SystemExit(f"error: {path}: {e}")
    model.to_backend()
    sets = [(name, load_flag_split(flag, getattr(args, flag) or meta[flag], args))
            for name, flag in (("eval", "eval_split"), ("train", "train_split"))]
    for name, (images, labels, split) in sets:
        cli_flags.check_batch_size(args.batch_size, len(labels), f"the {name} set {split}")
    return evaluate(model, sets, args.batch_size, meta["step"])
