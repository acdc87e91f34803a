"""python -m tinybn.eval cifar: precision@1 of a training run's checkpoint, as cifar10_eval.py.

By default the model is restored with the moving-average (shadow) weights that
training kept (the tutorial's `variable_averages.variables_to_restore()`);
--no-ema uses the raw weights. Batch norm runs in inference mode (moving
statistics). Every test example is counted exactly once.

--watch evaluates each new checkpoint as training writes it (run it beside
`python -m tinybn.train cifar`, two processes as the tutorial does), writing
precision@1 to event files and eval.csv in --eval-dir. Until the first checkpoint
appears it says "waiting for a checkpoint in DIR" (it never creates --train-dir);
a checkpoint that rotation deletes before it is read is skipped for the newest
one; Ctrl-C ends the watch quietly.
"""
import argparse
import time

import numpy as np

from . import backend, checkpoint, cli_flags
from .data import cifar10 as cifar_data
from .models import cifar10 as cifar_models
from .summary import SummaryWriter
from .tensor import Tensor, no_grad
from .train import load_checkpoint_or_fail

EMA_SUFFIX = "/ExponentialMovingAverage"


def restore_model(path, use_ema=True):
    """(model in eval mode, meta) from a training checkpoint; shadow weights unless use_ema=False."""
    arrays, meta = load_checkpoint_or_fail(path)
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


def precision_at_1(model, batches):
    """Fraction of examples whose top logit is the label (tf.nn.in_top_k(logits, labels, 1))."""
    correct = total = 0
    with no_grad():
        for images, labels in batches:
            logits = model(Tensor(backend.device_array(images))).numpy()
            # in_top_k counts a tie for the top as a hit; argmax picks one of the tied
            top = logits.max(axis=1)
            correct += int(np.sum(logits[np.arange(len(labels)), labels] >= top))
            total += len(labels)
    return correct / max(total, 1), total


def evaluate(path, batches, use_ema):
    model, meta = restore_model(path, use_ema)
    precision, total = precision_at_1(model, batches)
    return precision, total, meta["step"]


def latest_checkpoint(train_dir):
    """The newest checkpoint in `train_dir`, None if there is none or no such directory (which
    evaluation never creates: a mistyped --train-dir must not appear on disk)."""
    if not cli_flags.check_dir(train_dir, "--train-dir"):
        return None
    return checkpoint.CheckpointManager(train_dir, max_to_keep=None, read_only=True).latest()


def check_eval_flags(args):
    cli_flags.select_backend(args)
    cli_flags.check_ints(args, positive=("batch_size",), non_negative=("num_examples", "stop_at_step"))
    cli_flags.check_seconds(args, "eval_interval_secs")
    if not cli_flags.check_dir(args.train_dir, "--train-dir") and not args.watch:
        raise SystemExit(f"error: no checkpoint in {args.train_dir} (no such directory); train first "
                         "(python -m tinybn.train cifar --train-dir ...)")
    cli_flags.check_dir(args.eval_dir, "--eval-dir")


def eval_cifar(args):
    check_eval_flags(args)
    try:
        images, labels = cifar_data.load_cifar10("test", args.data_dir, download=not args.no_download)
    except (FileNotFoundError, ValueError, OSError) as e:
        raise SystemExit(f"error: {e}")
    examples = "the CIFAR-10 test set"
    if args.num_examples:
        if args.num_examples > len(images):
            raise SystemExit(f"error: --num-examples {args.num_examples} is more than the {len(images)} "
                             f"examples of {examples}")
        images, labels = images[:args.num_examples], labels[:args.num_examples]
        examples = f"--num-examples {args.num_examples}"
    cli_flags.check_batch_size(args.batch_size, len(images), examples)
    batches = cifar_data.EvalBatches(images, labels, args.batch_size)
    try:
        with cli_flags.open_csv(args.eval_dir, "eval.csv", ["step", "precision_at_1", "examples"], "--eval-dir") as csv:
            return watch(args, batches, csv)
    except KeyboardInterrupt:
        if not args.watch:
            raise
        return None     # Ctrl-C is how a watch ends


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
                    precision, total, step = evaluate(path, batches, not args.no_ema)
                except FileNotFoundError:       # rotated away since latest(): on to the newest one
                    continue
                print(f"{time.strftime('%Y-%m-%d %H:%M:%S')}: step {step}: precision @ 1 = {precision:.4f} "
                      f"({total} examples, {'raw' if args.no_ema else 'moving-average'} weights)", flush=True)
                if writer is None:
                    writer = SummaryWriter(args.eval_dir)
                writer.scalar("precision @ 1", precision, step)
                writer.flush()
                csv.log(step=step, precision_at_1=precision, examples=total)
                seen = path
                if not args.watch or (args.stop_at_step and step >= args.stop_at_step):
                    return precision
            time.sleep(args.eval_interval_secs)
    finally:
        if writer is not None:
            writer.close()


def main(argv=None):
    from .train_mnist import eval_mnist, mnist_eval_parser   # not at the top: train_mnist imports this module
    parser = cli_flags.ArgumentParser(prog="python -m tinybn.eval", description="Evaluate a tinybn model.")
    sub = parser.add_subparsers(dest="task", required=True)
    p = sub.add_parser("cifar", help="CIFAR-10 precision@1", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--train-dir", default="runs/cifar10_train", help="where training writes checkpoints")
    p.add_argument("--eval-dir", default="runs/cifar10_eval")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--num-examples", type=int, default=0, help="evaluate only the first N (default: all)")
    p.add_argument("--no-ema", action="store_true", help="use the raw weights, not their moving averages")
    p.add_argument("--watch", action="store_true", help="evaluate each new checkpoint as it appears")
    p.add_argument("--eval-interval-secs", type=float, default=300.0)
    p.add_argument("--stop-at-step", type=int, default=0, help="with --watch: stop after this step")
    cli_flags.add_backend_flag(p)
    p.add_argument("--no-download", action="store_true")
    p.set_defaults(run=eval_cifar)
    mnist_eval_parser(sub).set_defaults(run=eval_mnist)
    args = parser.parse_args(argv)
    return cli_flags.run_command(args)


if __name__ == "__main__":
    main()
