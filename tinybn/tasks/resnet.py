"""The ResNet-V2 benchmark task: TF's time_tensorflow_run protocol, the benchmark batch, the two
timed steps and the exact conv FLOP count, as python -m tinybn.bench resnet runs them.

    time_run(step, info, num_batches, burn_in)   (mean, sd, durations): burn_in untimed steps,
                                                 then num_batches timed; sd the population one
    conv_flops(model, batch, height, width)      (forward, forward-backward) conv FLOPs
    make_inputs(batch, image_size, num_classes)  N(0, 0.1) images and uniform labels
    resnet_steps(model, images, labels)          (forward step, forward-backward step), each
                                                 step(prof=None), the stages filed under prof
    run_resnet(args, log)                        build, time and report
    profile_resnet(args, log)                    the steps op by op (tinybn.profiler)

bench/bench_resnet.py times TF and the tinybn backends with the same pieces.

Tasks floor: imports models, backend and core; never the command lines.
"""
import datetime
import os
import resource
import statistics
import sys
import time
from contextlib import nullcontext

import numpy as np

from .. import backend
from ..models.resnet_v2 import resnet_v2
from ..profiler import conv_kind, profile_steps
from ..tensor import Tensor, no_grad


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
    """(forward step, forward-backward step) on one fixed batch; the second returns the loss.
    Called as step(prof) with an active OpProfiler, each stage of the network (conv1, pool1,
    block1 ... logits) and the loss are filed under their names."""
    x, labels = backend.device_array(images), backend.device_array(labels)

    def forward(prof=None):
        model.eval()
        with no_grad():
            return model(Tensor(x), stage=prof and prof.layer)[0].data

    def forward_backward(prof=None):
        model.train()
        model.zero_grad()
        logits = model(Tensor(x), stage=prof and prof.layer)[0]
        with prof.layer("loss") if prof is not None else nullcontext():
            loss = model.loss(logits, labels)
        loss.backward()
        return float(loss.item())
    return forward, forward_backward


def run_resnet(args, log=print):
    """Build, time and report on the current backend (args.backend names it); returns
    {"forward"/"forward-backward": (mean, sd), "flops": ..., "peak_rss_mb": ...}."""
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


def resnet_op_kind(fn, arrays, layer):
    """The profile's op names: a Conv2D by its geometry (profiler.conv_kind), the logits' 1x1
    conv on the pooled features as "Conv2D logits (dense)"."""
    name = conv_kind(fn, arrays)
    return "Conv2D logits (dense)" if layer == "logits" and name.startswith("Conv2D") else name


def profile_resnet(args, log=print):
    """Profile args.steps steps of each mode of args.mode ("forward", "forward-backward" or
    "both") of resnet_v2_<args.depth>; returns {mode: Profile}, every Conv2D named by its
    geometry (resnet_op_kind)."""
    model = resnet_v2(args.depth, num_classes=args.num_classes, rng=np.random.default_rng(args.seed)).to_backend()
    images, labels = make_inputs(args.batch_size, args.image_size, args.num_classes, seed=args.seed)
    flops = conv_flops(model, args.batch_size, args.image_size, args.image_size)
    steps = dict(zip(("forward", "forward-backward"), resnet_steps(model, images, labels)))
    profiles = {}
    for mode, step in steps.items():
        if args.mode not in (mode, "both"):
            continue
        log(f"resnet_v2_{args.depth} {mode}: batch {args.batch_size}, {args.image_size}x{args.image_size}x3, "
            f"backend {args.backend}, {args.warmup} warm-up steps, {args.steps} profiled; conv work "
            f"{flops[mode == 'forward-backward'] / 1e9:.2f} GFLOP per step")
        profiles[mode] = profile_steps(step, args.steps, args.warmup, op_name=resnet_op_kind, caller="profile resnet")
        log(profiles[mode].format())
    return profiles
