"""python -m tinybn.bench resnet: time ResNet-V2 forward and forward+backward, as TF's benchmarks did
(and `python -m tinybn.bench profile {cifar,resnet}`: a step op by op, see its --help).

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
# tinybn.tasks.resnet, which holds the protocol, the steps and the FLOP count, and into
# tinybn.profiler, which times a training step op by op.
# Command-line floor: imports tasks, models, profiler, moving_averages and cli_flags.
import argparse
import sys

import numpy as np

from . import cli_flags
from .models import cifar10 as cifar_models
from .moving_averages import ExponentialMovingAverage
from .profiler import profile_training
from .tasks.cifar import EMA_DECAY, make_optimizer
from .tasks.cifar_fast import profile_fast
from .tasks.resnet import profile_resnet, run_resnet

PROFILE_DOC = """python -m tinybn.bench profile: where the time of a step goes, op by op.

    python -m tinybn.bench profile cifar [--model {tutorial,tutorial_bn,bn,fast}] [--backend {numpy,numba,cupy}]
        [--batch-size 128 (fast: 1024)] [--steps 10] [--warmup 3] [--seed 0]
        [--whitening-bias {frozen,trains}] (fast only)
    python -m tinybn.bench profile resnet [--depth {50,101,152,200}] [--image-size 224]
        [--mode {forward,forward-backward,both}] [--num-classes 1000] [--backend ...]
        [--batch-size 8] [--steps 10] [--warmup 3] [--seed 0]

cifar:

The step is the trainer's (python -m tinybn.train cifar): forward, the loss (mean sparse
softmax cross-entropy plus the tutorial's weight decay), backward, the model's optimizer
(SGD for the tutorial models, Adam for bn, as tinybn.tasks.cifar) and the moving averages of
the weights (decay 0.9999), on one fixed batch of N(0, 1) images (N, 24, 24, 3) float32 and
uniform labels (seed --seed). After --warmup untimed steps, --steps steps run with the
profiler on (tinybn.profiler), then as many with it off, whose mean is printed too.

--model fast (tinybn.tasks.cifar_fast.profile_fast): the fast recipe's step instead, on
(N, 32, 32, 3) images: the label-smoothed summed loss and Nesterov SGD in airbench's two
groups, no EMA. --whitening-bias frozen (default) is the step of epochs 3 on, whose backward
stops at block1's first conv; trains is that of epochs 0-2. The Lookahead update, made every
5th step of a run, is timed alone after the tables and printed with its share of a step.

Printed per op (Function class), then per layer and op: the forward and backward time per
step in ms, their share of the profiled step, the calls per step (forward/backward) and, for
the GEMM-shaped ops (Conv2D, MatMul), GFLOP/s with the FLOPs counted from the shapes
(2 * N * OH * OW * KH * KW * C * O for a conv, 2 * M * K * N for a matmul; backward: that
count for each operand that needs a gradient). Then the optimizer, the EMA and "other", the
step less everything timed (Python: the graph walk, gradient accumulation, zero_grad, the
profiler's bookkeeping); the shares add up to 100%.

resnet: the steps of `python -m tinybn.bench resnet` (tinybn.tasks.resnet): forward in
inference mode under no_grad, or forward-backward in training mode (the loss with weight
decay, every gradient, no update), on the benchmark's N(0, 0.1) images. The same tables, the
layers being the network's stages (conv1, pool1, block1 ... block4, postnorm, logits, loss)
and each Conv2D row named by its geometry: "Conv2D 1x1/1", "Conv2D 3x3/1", "Conv2D 3x3/2",
"Conv2D 7x7/2" (the root), "Conv2D logits (dense)" (the 1x1 conv on the pooled features).
The FLOPs summed over the Conv2D rows are the benchmark's conv count.
"""

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
    p = sub.add_parser("profile", help="a CIFAR-10 training step or ResNet-V2's steps, op by op "
                       "(forward, backward, share, GFLOP/s)",
                       description=PROFILE_DOC, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("task", choices=("cifar", "resnet"), help="what to profile")
    p.add_argument("--model", default="bn", choices=tuple(cifar_models.MODELS) + ("fast",), help="cifar: the model")
    p.add_argument("--whitening-bias", default=None, choices=("frozen", "trains"),
                   help="cifar --model fast: the step of epochs 3 on (frozen, default) or 0-2 (trains)")
    p.add_argument("--depth", type=int, default=50, choices=(50, 101, 152, 200), help="resnet: the depth")
    p.add_argument("--image-size", type=_positive, default=224, help="resnet: S of the S x S images")
    p.add_argument("--mode", default="both", choices=MODES, help="resnet: which steps (default both)")
    p.add_argument("--num-classes", type=_positive, default=1000, help="resnet: the logits")
    p.add_argument("--batch-size", type=_positive, default=None,
                   help="default 128 (cifar), 1024 (cifar --model fast), 8 (resnet)")
    p.add_argument("--steps", type=_positive, default=10, help="profiled steps (default 10)")
    p.add_argument("--warmup", type=_non_negative, default=3, help="untimed steps first (default 3)")
    p.add_argument("--seed", type=_non_negative, default=0)
    cli_flags.add_backend_flag(p)
    return parser


def profile_cifar(args, log=print):
    """Profile args.steps training steps of the CIFAR-10 model args.model; returns the Profile."""
    model = cifar_models.MODELS[args.model](rng=np.random.default_rng(args.seed)).to_backend(args.backend)
    named = list(model.named_parameters())
    optimizer = make_optimizer(args.model, named, args.batch_size)
    ema = ExponentialMovingAverage(EMA_DECAY, num_updates=lambda: optimizer.iterations)
    ema.apply(named, num_updates=0)
    rng = np.random.default_rng(args.seed)
    images = rng.standard_normal((args.batch_size, cifar_models.IMAGE_SIZE, cifar_models.IMAGE_SIZE, 3),
                                 dtype=np.float32)
    labels = rng.integers(0, cifar_models.NUM_CLASSES, args.batch_size).astype(np.int32)
    log(f"cifar {args.model}: batch {args.batch_size}, backend {args.backend}, {args.warmup} warm-up steps, "
        f"{args.steps} profiled")
    profile = profile_training(model, optimizer, ema, images, labels, steps=args.steps, warmup=args.warmup)
    log(profile.format())
    return profile


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "whitening_bias", None) is not None and (args.task, args.model) != ("cifar", "fast"):
        parser.error("--whitening-bias is a flag of profile cifar --model fast")
    cli_flags.select_backend(args)
    if args.command == "resnet":
        run_resnet(args)
    elif args.command == "profile" and args.task == "resnet":
        args.batch_size = args.batch_size or 8
        profile_resnet(args)
    elif args.command == "profile" and args.model == "fast":
        args.batch_size = args.batch_size or 1024
        args.whitening_bias = args.whitening_bias or "frozen"
        profile_fast(args)
    elif args.command == "profile":
        args.batch_size = args.batch_size or 128
        profile_cifar(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
