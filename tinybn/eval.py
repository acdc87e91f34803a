"""python -m tinybn.eval cifar|mnist: the command line of evaluation, argparse and calls.

The flags are checked (cli_flags) and the data read; tinybn.tasks.cifar and
tinybn.tasks.mnist restore the checkpoints and count precision@1 (tinybn.training).
Evaluation never creates --train-dir.

Command-line floor: imports tasks, cli_flags and the floors below; nothing imports it.
"""
import argparse
import os

from . import cli_flags
from .run_dirs import check_dir
from .tasks import cifar, mnist, report
from .training import latest_checkpoint

CIFAR_DESCRIPTION = """python -m tinybn.eval cifar: precision@1 of a training run's checkpoint, as cifar10_eval.py.

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

--report looks closer at the newest checkpoint: after precision@1, the precision and
recall of each class and the confusion matrix (rows: true class, columns: predicted),
with the class names of batches.meta.txt beside the batch files (CIFAR-10's standard
names, with a note, when it is absent). --plot DIR adds PNGs: confusion_matrix.png,
misclassified.png (the first misclassified test images with their true and predicted
classes) and curves.png (loss and precision@1 against the step, from --train-dir's
train.csv and --eval-dir's eval.csv when there is one). These write nothing into
--eval-dir. matplotlib comes with pip install -e '.[plot]'.

--every-checkpoint evaluates every checkpoint of --train-dir (oldest first; those already in
curve.csv are skipped) into --eval-dir's curve.csv: step, wall_time_secs (the seconds from the
training command's start, data loading included, to that step's end), precision_at_1, examples.
--time-curve PNG plots precision@1 against that time for one or several runs on the same axes,
each --curve-run [LABEL=]EVAL_DIR a line (default: --eval-dir). For the points of the fast run,
train it with --checkpoint-every-epoch; for the tutorial's, with a --max-to-keep that keeps them.

--model fast evaluates a checkpoint of `python -m tinybn.train cifar --model fast` on the full
32x32 test images with airbench's test-time augmentation (--tta-level: 0 none, 1 the mean of
the image's and its mirror's logits, 2, the default, also over 1 px translations). Its checkpoint
holds one set of weights, the Lookahead average from epoch 3 on (the eval line says which): it
takes neither --no-ema nor --report and --plot (yet).
"""

# the flags --model fast does not take, and why
FAST_REFUSES = {"no_ema": "its checkpoint holds one set of weights, there is no other",
                "report": "the report is of the tutorial models only, for now",
                "plot": "the report is of the tutorial models only, for now"}


def cifar_parser(sub):
    p = sub.add_parser("cifar", help="CIFAR-10 precision@1", description=CIFAR_DESCRIPTION,
                       formatter_class=argparse.RawDescriptionHelpFormatter, parents=[cli_flags.input_flags()])
    p.add_argument("--train-dir", default="runs/cifar10_train", help="where training writes checkpoints")
    p.add_argument("--eval-dir", default="runs/cifar10_eval")
    p.add_argument("--num-examples", type=int, default=0, help="evaluate only the first N (default: all)")
    p.add_argument("--no-ema", action="store_true", help="use the raw weights, not their moving averages")
    p.add_argument("--watch", action="store_true", help="evaluate each new checkpoint as it appears")
    p.add_argument("--eval-interval-secs", type=float, default=300.0)
    p.add_argument("--stop-at-step", type=int, default=0, help="with --watch: stop after this step")
    p.add_argument("--report", action="store_true",
                   help="also print per-class precision and recall and the confusion matrix")
    p.add_argument("--plot", metavar="DIR", default=None,
                   help="with the report, write PNGs into DIR (created if need be; plots of the same names "
                        "are replaced): confusion_matrix.png, misclassified.png, curves.png (needs matplotlib)")
    p.add_argument("--model", default=None, choices=["fast"],
                   help="fast: a checkpoint of --model fast, on 32x32 images with TTA (default: a tutorial model)")
    p.add_argument("--tta-level", type=int, default=None, choices=[0, 1, 2],
                   help="--model fast: test-time augmentation (default 2)")
    p.add_argument("--every-checkpoint", action="store_true",
                   help="evaluate each checkpoint of --train-dir (not yet in curve.csv) into --eval-dir's "
                        "curve.csv, with its wall time since the run's start")
    p.add_argument("--time-curve", metavar="PNG", default=None,
                   help="write the plot of precision@1 against wall time of the --curve-run dirs' curve.csv")
    p.add_argument("--curve-run", metavar="[LABEL=]EVAL_DIR", action="append", default=None,
                   help="with --time-curve: a run to plot (repeat for several; default: --eval-dir; "
                        "label: the folder's name)")
    return p


def mnist_parser(sub):
    p = sub.add_parser("mnist", help="MNIST precision@1 of a training run's latest checkpoint (BN in inference)",
                       parents=[cli_flags.mnist_input_flags()])
    p.add_argument("--train-dir", default="runs/mnist_train", help="where training writes checkpoints")
    p.add_argument("--eval-split", default=None, help="default: the run's --eval-split")
    p.add_argument("--train-split", default=None, help="default: the run's --train-split")
    return p


def eval_cifar(args):
    if args.curve_run and not args.time_curve:
        raise SystemExit("error: --curve-run names a run of --time-curve's plot; give --time-curve PNG")
    if args.every_checkpoint and (args.watch or args.report or args.plot):
        raise SystemExit("error: --every-checkpoint evaluates the checkpoints there are, once; drop "
                         f"{'--watch' if args.watch else '--report' if args.report else '--plot'}")
    if args.time_curve:
        if args.watch or args.report or args.plot:
            raise SystemExit("error: --time-curve plots curve.csv files; it takes neither --watch, --report "
                             "nor --plot")
        check_dir(os.path.dirname(args.time_curve) or ".", "--time-curve")
        try:
            report.figure_class()
        except ImportError as e:
            raise SystemExit(f"error: {e}") from None
        if not args.every_checkpoint:
            return cifar.plot_time_curve(args)
    if args.model == "fast":
        cli_flags.refuse_flags(args, "--model fast", FAST_REFUSES)
    elif args.tta_level is not None:      # 0 is a level: refuse_flags would take it for "not given"
        raise SystemExit("error: --tta-level is --model fast's test-time augmentation; the tutorial models have none")
    cli_flags.check_flags(args)
    if (args.report or args.plot) and args.watch:
        raise SystemExit("error: --report and --plot look at one checkpoint, the newest; drop --watch")
    if args.plot:
        check_dir(args.plot, "--plot")
        try:
            report.figure_class()
        except ImportError as e:
            raise SystemExit(f"error: {e}") from None
    if not check_dir(args.train_dir, "--train-dir") and not args.watch:
        raise SystemExit(f"error: no checkpoint in {args.train_dir} (no such directory); train first "
                         "(python -m tinybn.train cifar --train-dir ...)")
    check_dir(args.eval_dir, "--eval-dir")
    images, labels = cifar.load_split("test", args)
    examples = "the CIFAR-10 test set"
    if args.num_examples:
        if args.num_examples > len(images):
            raise SystemExit(f"error: --num-examples {args.num_examples} is more than the {len(images)} "
                             f"examples of {examples}")
        images, labels = images[:args.num_examples], labels[:args.num_examples]
        examples = f"--num-examples {args.num_examples}"
    cli_flags.check_batch_size(args.batch_size, len(images), examples)
    if args.model == "fast":
        batches = cifar.FastEvalSet(images, labels, args.tta_level, args.batch_size)
    else:
        batches = cifar.eval_batches(images, labels, args.batch_size)
    if args.every_checkpoint:
        rows = cifar.evaluate_every_checkpoint(args, batches)
        return cifar.plot_time_curve(args) if args.time_curve else rows
    if args.report or args.plot:
        return cifar.report_checkpoint(args, images, batches)
    return cifar.evaluate_checkpoints(args, batches)


def eval_mnist(args):
    """python -m tinybn.eval mnist: the latest checkpoint of --train-dir, BN in inference mode."""
    cli_flags.check_flags(args)
    path = latest_checkpoint(args.train_dir)
    if path is None:
        raise SystemExit(f"error: no checkpoint in {args.train_dir}; train first (python -m tinybn.train mnist)")
    model, meta = mnist.restore_model(path)
    sets = mnist.checkpoint_sets(args, meta)
    for name, (images, labels, split) in sets:
        cli_flags.check_batch_size(args.batch_size, len(labels), f"the {name} set {split}")
    return mnist.evaluate(model, sets, args.batch_size, meta["step"])


def main(argv=None):
    parser = cli_flags.ArgumentParser(prog="python -m tinybn.eval", description="Evaluate a tinybn model.")
    sub = parser.add_subparsers(dest="task", required=True)
    cifar_parser(sub).set_defaults(run=eval_cifar)
    mnist_parser(sub).set_defaults(run=eval_mnist)
    args = parser.parse_args(argv)
    return cli_flags.run_command(args)


if __name__ == "__main__":
    main()
