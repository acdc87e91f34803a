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
import argparse
import datetime
import os
import resource
import statistics
import sys
import time

import numpy as np

from . import backend, cli_flags
from .tensor import Tensor, no_grad

MODES = ("forward", "forward-backward", "both")


def time_run(step, info, num_batches, burn_in=10, log=print):
    """TF's time_tensorflow_run: step() burn_in + num_batches times; (mean, sd, durations) of the timed ones."""
    durations = []
    for i in range(burn_in + num_batches):
        start = time.perf_counter()
        step()
        duration = time.perf_counter() - start
        if i >= burn_in:
            if (i - burn_in) % 10 == 0:
                log("%s: step %d, duration = %.3f" % (datetime.datetime.now(), i - burn_in, duration))
            durations.append(duration)
    mean, sd = statistics.fmean(durations), statistics.pstdev(durations)
    log("%s: %s across %d steps, %.3f +/- %.3f sec / batch" % (datetime.datetime.now(), info, num_batches, mean, sd))
    return mean, sd, durations


def conv_flops(model, batch, height, width):
    """(forward, forward-backward) conv FLOPs of `model` (a ResNetV2) at batch x height x width."""
    per_conv = [2 * batch * oh * ow * kh * kw * c * o
                for _, conv, _, (oh, ow) in model.conv_layers(height, width)
                for kh, kw, c, o in [conv.kernel.shape]]
    forward = sum(per_conv)
    return forward, 3 * forward - per_conv[0]


def peak_rss_mb():
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / (1024.0 * 1024.0) if sys.platform == "darwin" else rss / 1024.0   # bytes on macOS, KiB on Linux


def make_inputs(batch, image_size, num_classes, seed=0):
    """The benchmark batch: N(0, 0.1) float32 images (N, S, S, 3) and int32 labels in [0, num_classes)."""
    rng = np.random.default_rng(seed)
    images = (rng.standard_normal((batch, image_size, image_size, 3), dtype=np.float32) * np.float32(0.1))
    return images, rng.integers(0, num_classes, batch).astype(np.int32)


def resnet_steps(model, images, labels):
    """(forward step, forward-backward step) on one fixed batch; the second returns the loss."""
    x, labels = backend.device_array(images), backend.device_array(labels)

    def forward():
        model.eval()
        with no_grad():
            return model(Tensor(x))[0].data

    def forward_backward():
        model.train()
        model.zero_grad()
        loss = model.loss(model(Tensor(x))[0], labels)
        loss.backward()
        return float(loss.item())
    return forward, forward_backward


def run_resnet(args, log=print):
    """Build, time and report; returns {"forward"/"forward-backward": (mean, sd), "flops": ..., "peak_rss_mb": ...}."""
    from .models.resnet_v2 import resnet_v2

    cli_flags.select_backend(args)
    model = resnet_v2(args.depth, num_classes=args.num_classes, rng=np.random.default_rng(0)).to_backend()
    images, labels = make_inputs(args.batch_size, args.image_size, args.num_classes)
    flops = conv_flops(model, args.batch_size, args.image_size, args.image_size)
    log(f"resnet_v2_{args.depth}: batch {args.batch_size}, {args.image_size}x{args.image_size}x3 float32, "
        f"{args.num_classes} classes, backend {args.backend}, {os.cpu_count()} CPUs")
    log(f"conv FLOPs per batch: forward {flops[0] / 1e9:.2f} GFLOP, forward-backward {flops[1] / 1e9:.2f} GFLOP")
    forward, forward_backward = resnet_steps(model, images, labels)
    result = {"flops": flops}
    for mode, step, info, count in (("forward", forward, "Forward", flops[0]),
                                    ("forward-backward", forward_backward, "Forward-backward", flops[1])):
        if args.mode in (mode, "both"):
            mean, sd, _ = time_run(step, info, args.num_batches, args.burn_in, log)
            log(f"{info}: {count / mean / 1e9:.2f} GFLOP/s")
            result[mode] = (mean, sd)
    result["peak_rss_mb"] = peak_rss_mb()
    log(f"Peak memory (ru_maxrss): {result['peak_rss_mb']:.0f} MB")
    return result


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
        run_resnet(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
