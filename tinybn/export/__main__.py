"""python -m tinybn.export: a training run's weights to TF, Keras or ONNX, and a TF run's into tinybn.

Each export reads --checkpoint, else the newest checkpoint of --train-dir, and never replaces
an existing file. Command-line floor: argparse and calls into tinybn.export.
"""
import argparse
import os

from .. import cli_flags
from ..run_dirs import one_line
from ..training import latest_checkpoint
from . import INPUT_SHAPES, load_run, save_keras, save_onnx, use_shadows
from .tf_checkpoint import import_tf_checkpoint, write_tf_checkpoint

DESCRIPTION = """Weights in and out of tinybn.

  tf-checkpoint  write a TF1 checkpoint (tf.train.load_checkpoint reads it; cifar10_eval.py
                 restores it) with the tutorial's names, the moving averages as
                 "<name>/ExponentialMovingAverage" and global_step
  import-tf      read a checkpoint of TF's cifar10_train.py into a new --train-dir, which
                 `python -m tinybn.eval cifar --train-dir` evaluates
  keras          a Keras 3 ".keras" model; its LRN is tinybn's layer: call
                 tinybn.export.register() before keras.saving.load_model
  onnx           an ONNX model, batch norm folded, NHWC input "images", output "logits"
"""


def source_path(args):
    if args.checkpoint:
        if not os.path.isfile(args.checkpoint):
            raise SystemExit(f"error: --checkpoint {args.checkpoint} is not a file")
        return args.checkpoint
    path = latest_checkpoint(args.train_dir)
    if path is None:
        raise SystemExit(f"error: no checkpoint in {args.train_dir}; train first or give --checkpoint")
    return path


def export_model(args):
    """The run's model, with its moving-average weights unless --no-ema or the run kept none
    (MNIST's); (model, which weights, meta)."""
    model, ema, meta = load_run(source_path(args))
    if args.no_ema or ema is None:
        return model, "raw", meta
    return use_shadows(model, ema), "moving-average", meta


def run_tf_checkpoint(args):
    model, ema, meta = load_run(source_path(args))
    if meta.get("task") != "cifar":
        raise SystemExit("error: tf-checkpoint writes the CIFAR-10 tutorial's names; this is a "
                         f"{meta.get('task')} checkpoint")
    prefix = write_tf_checkpoint(model, args.out, ema=ema, step=meta["step"])
    print(f"wrote {prefix} ({meta['model']}, step {meta['step']}, "
          f"{'with' if ema else 'without'} moving averages)")


def run_import_tf(args):
    saved, name, step, with_ema, left_out = import_tf_checkpoint(args.tf_checkpoint, args.train_dir, args.model)
    print(f"wrote {saved} ({name}, step {step}, {'with' if with_ema else 'without'} moving averages; "
          f"{len(left_out)} other TF variables left out)")
    if not with_ema:
        print("evaluate it with --no-ema: the TF checkpoint has no moving averages of every weight")


def run_file(save):
    def run(args):
        model, weights, meta = export_model(args)
        save(model, args.out, INPUT_SHAPES[meta["task"]])
        print(f"wrote {args.out} ({meta['model']}, step {meta['step']}, {weights} weights)")
    return run


def main(argv=None):
    parser = cli_flags.ArgumentParser(prog="python -m tinybn.export", description=DESCRIPTION,
                                      formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="format", required=True)
    source = argparse.ArgumentParser(add_help=False)
    source.add_argument("--train-dir", default="runs/cifar10_train", help="a training run (its newest checkpoint)")
    source.add_argument("--checkpoint", default=None, help="a tinybn checkpoint file instead of --train-dir's")
    p = sub.add_parser("tf-checkpoint", parents=[source], help="a TF checkpoint with the tutorial's names")
    p.add_argument("--out", required=True, help="a new directory for model.ckpt-<step>.* and 'checkpoint'")
    p.set_defaults(run=run_tf_checkpoint)
    p = sub.add_parser("import-tf", help="a TF cifar10_train.py checkpoint into a new tinybn --train-dir")
    p.add_argument("--tf-checkpoint", required=True, help="a checkpoint prefix, or a directory (its newest)")
    p.add_argument("--train-dir", required=True, help="where to write the tinybn checkpoint (holding none yet)")
    p.add_argument("--model", default=None, help="tutorial, tutorial_bn or bn (default: from the variable names)")
    p.set_defaults(run=run_import_tf)
    for fmt, save, suffix, what in (("keras", save_keras, ".keras", "a Keras 3 model file"),
                                    ("onnx", save_onnx, ".onnx", "an ONNX model file, batch norm folded")):
        p = sub.add_parser(fmt, parents=[source], help=f"{what} ({suffix})")
        p.add_argument("--out", required=True, help=f"the new file (model{suffix})")
        p.add_argument("--no-ema", action="store_true", help="export the raw weights, not their moving averages")
        p.set_defaults(run=run_file(save))
    args = parser.parse_args(argv)
    try:
        return cli_flags.run_command(args)
    except ValueError as e:
        raise SystemExit(f"error: {one_line(e)}") from None


if __name__ == "__main__":
    main()
