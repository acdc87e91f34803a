"""python -m tinybn.bench resnet: time ResNet-V2 forward and forward+backward, as TF's benchmarks did.

    python -m tinybn.bench resnet [--depth {50,101,152,200}] [--batch-size 32] [--image-size 224]
        [--num-batches 100] [--burn-in 10] [--backend {numpy,numba,cupy}]
        [--mode {forward,forward-backward,both}] [--num-classes 1000]

The protocol is time_tensorflow_run of TF's old benchmark scripts (tensorflow/models
tutorials/image/alexnet/alexnet_benchmark.py and its siblings): `--burn-in` steps not
counted, then `--num-batches` timed steps; every 10th timed step prints
"<time>: step <i>, duration = <s>", and the end "<time>: Forward across <N> steps,
<mean> +/- <sd> sec / batch", sd the population standard deviation (TF's formula,
computed here in two passes).

    Forward           inference mode (model.eval(): BN on its moving statistics) under
                      no_grad: logits of the batch
    Forward-backward  training mode (batch statistics, moving statistics updated): loss =
                      mean sparse softmax cross-entropy on random labels + weight decay,
                      backward to every parameter, no update (TF's took tf.gradients)
The network is tinybn.models.resnet_v2.resnet_v2_<depth> (seed 0), the images N(0, 0.1)
(N, S, S, 3) float32 as the scripts' random_normal(stddev=1e-1), the labels uniform.

Then GFLOP/s: conv FLOPs / mean seconds, the FLOPs counted exactly from the shapes
(ResNetV2.conv_layers), pooling, BN, relu, adds and the loss left out:
    forward           sum over convs of 2 * N * OH * OW * KH * KW * C * O
    forward-backward  3 x that (forward, filter gradient, input gradient), less the first
                      conv's input gradient: the images need none, and none is computed.
The last line is the process's peak memory, ru_maxrss.
"""
# The command line only (its docstring is its --help): argparse and calls into
# tinybn.tasks.resnet, which holds the protocol, the steps and the FLOP count.
# Command-line floor: imports tasks and cli_flags.
import argparse
import sys

from . import cli_flags
from .tasks.resnet import run_resnet

MODES = ("forward", "forward-backward", "both")


def _positive(text):
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _non_negative(text):
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def build_parser():
    parser = cli_flags.ArgumentParser(prog="python -m tinybn.bench", description=__doc__.split("\n", 1)[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("resnet", help="ResNet-V2 forward and forward+backward (TF's benchmark protocol)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--depth", type=int, default=50, choices=(50, 101, 152, 200))
    p.add_argument("--batch-size", type=_positive, default=32)
    p.add_argument("--image-size", type=_positive, default=224)
    p.add_argument("--num-batches", type=_positive, default=100, help="timed steps (default 100)")
    p.add_argument("--burn-in", type=_non_negative, default=10, help="untimed steps first (default 10)")
    p.add_argument("--num-classes", type=_positive, default=1000)
    cli_flags.add_backend_flag(p)
    p.add_argument("--mode", default="both", choices=MODES)
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    if args.command == "resnet":
        cli_flags.select_backend(args)
        run_resnet(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
