"""Time ResNet-V2 side by side: tinybn (numpy, numba) and TensorFlow, with TF's benchmark protocol.

    python bench/bench_resnet.py [--depth {50,101,152,200}] [--batch-size 32] [--image-size 224]
        [--num-batches 100] [--burn-in 10] [--frameworks tinybn-numpy,tinybn-numba,tf]
        [--threads N] [--markdown] [--json out.json]

The protocol and the FLOP count are `python -m tinybn.bench resnet`'s (tinybn/tasks/resnet.py,
TF's time_tensorflow_run): `burn_in` untimed then `num_batches` timed steps of
    Forward           inference mode (BN on moving statistics), no gradients
    Forward-backward  training mode, loss = mean sparse softmax xent on random labels +
                      1e-4 * l2_loss of every conv kernel, gradients of every parameter
on one fixed batch of N(0, 0.1) images, batch x S x S x 3, 1000 classes.

The networks: tinybn.models.resnet_v2.resnet_v2_<depth> (seed 0) and, for TensorFlow,
slim's network on tf.nn ops from crosscheck/tf_resnet.py (the one test_tf_resnet.py
proves equal to tinybn's) loaded with the same weights, each step one tf.function call:
the forward returns the logits, the training step the loss and every gradient (so
none is pruned), its BN moving-average updates included. The first training-mode loss
of every framework must agree (a WARNING says when not).

Every framework runs in its own subprocess, one after the other, with the same
thread count (bench_cifar.thread_env: OMP/OPENBLAS/MKL/NUMBA threads in the
environment before numpy loads, tf.config.threading for TF). Reported: sec / batch
(mean ± population sd), the ratio to TF's time (2.00x = twice as slow), conv GFLOP/s,
and the worker's peak RSS (ru_maxrss) with its growth over the baseline taken after
the imports and the network's initial weights (numpy, in every worker; TF's growth
includes its own copy of them, in its variables).
"""
import argparse
import json
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
CROSSCHECK = os.path.join(os.path.dirname(HERE), "crosscheck")
sys.path.insert(0, HERE)
from _report import _render, _seconds  # noqa: E402
from bench_cifar import MARK, machine_info, thread_env, tinybn_prepare, worker_or_parent  # noqa: E402

FRAMEWORKS = ("tinybn-numpy", "tinybn-numba", "tf")
NUM_CLASSES = 1000


# ---- workers (one per subprocess) ------------------------------------------------------------

def tf_steps(depth, variables, images, labels):
    """(forward, forward-backward) of slim's network in TF on one batch, each a tf.function call."""
    import numpy as np
    import tensorflow as tf
    sys.path.insert(0, CROSSCHECK)
    from tf_resnet import TFResNetV2
    model = TFResNetV2(depth, NUM_CLASSES).load(variables)
    x, y = tf.constant(images), tf.constant(labels.astype(np.int64))
    trainables = [v for _, v in model.trainable()]

    @tf.function
    def forward_graph():
        return model(x, training=False)[0]

    @tf.function
    def train_graph():
        with tf.GradientTape() as tape:
            loss = model.loss(model(x, training=True)[0], y)
        return loss, tape.gradient(loss, trainables)

    return (lambda: forward_graph().numpy()), (lambda: float(train_graph()[0].numpy()))


def run_worker(args):
    import numpy as np
    from tinybn.tasks.resnet import conv_flops, make_inputs, peak_rss_mb, resnet_steps, time_run
    from tinybn.models.resnet_v2 import resnet_v2, slim_names
    fw = args.worker
    images, labels = make_inputs(args.batch_size, args.image_size, NUM_CLASSES)
    model = resnet_v2(args.depth, NUM_CLASSES, rng=np.random.default_rng(0))
    flops = conv_flops(model, args.batch_size, args.image_size, args.image_size)
    try:
        if fw == "tf":
            import _peers
            version = _peers.tf_prepare(args.threads)
        else:
            version = tinybn_prepare(fw.split("-", 1)[1], args.threads)
    except ImportError as e:
        return {"status": "not installed" if fw == "tf" else "unavailable", "reason": str(e)}
    base_mb = peak_rss_mb()
    if fw == "tf":
        names = slim_names(model)                    # the arrays themselves: TF's variables copy them
        variables = {names[k]: t.data for k, t in list(model.named_parameters()) + list(model.named_buffers())}
        forward, forward_backward = tf_steps(args.depth, variables, images, labels)
        del model, variables
    else:
        forward, forward_backward = resnet_steps(model, images, labels)

    def log(line):
        print(f"[{fw}] {line}", file=sys.stderr, flush=True)
    fwd_s, fwd_sd, _ = time_run(forward, "Forward", args.num_batches, args.burn_in, log)
    loss0 = forward_backward()
    fb_s, fb_sd, _ = time_run(forward_backward, "Forward-backward", args.num_batches, args.burn_in, log)
    peak = peak_rss_mb()
    return {"status": "ok", "version": version, "loss0": loss0, "fwd_s": fwd_s, "fwd_sd": fwd_sd,
            "fb_s": fb_s, "fb_sd": fb_sd, "fwd_flops": flops[0], "fb_flops": flops[1],
            "peak_rss_mb": peak, "delta_rss_mb": peak - base_mb}


# ---- parent -----------------------------------------------------------------------------------

def spawn(args, worker):
    """One worker subprocess; its result dict (status "error"/"timeout" when it fails)."""
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", worker, "--depth", str(args.depth),
           "--batch-size", str(args.batch_size), "--image-size", str(args.image_size),
           "--num-batches", str(args.num_batches), "--burn-in", str(args.burn_in), "--threads", str(args.threads)]
    try:
        proc = subprocess.run(cmd, env=thread_env(args.threads), stdout=subprocess.PIPE, stderr=None,
                              text=True, timeout=args.worker_timeout)
    except subprocess.TimeoutExpired:
        return {"status": "timeout", "reason": f"no result within {args.worker_timeout} s"}
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(MARK):
            return json.loads(line[len(MARK):])
    return {"status": "error", "reason": f"exit code {proc.returncode} (its stderr is above)"}


def table_rows(report):
    header = ["framework", "fwd s/batch", "fwd ×TF", "fwd GFLOP/s", "fwd+bwd s/batch", "fwd+bwd ×TF",
              "fwd+bwd GFLOP/s", "peak MB (Δ)"]
    tf = next((r for r in report["rows"] if r["framework"] == "tf" and r["status"] == "ok"), None)
    out = [header]
    for r in report["rows"]:
        if r["status"] != "ok":
            out.append([r["framework"], r["status"], "(see below)"] + [""] * (len(header) - 3))
            continue

        def ratio(key):
            return f"{r[key] / tf[key]:.2f}x" if tf else "n/a"
        out.append([r["framework"], _seconds(r["fwd_s"], r["fwd_sd"]), ratio("fwd_s"),
                    f"{r['fwd_flops'] / r['fwd_s'] / 1e9:.1f}", _seconds(r["fb_s"], r["fb_sd"]), ratio("fb_s"),
                    f"{r['fb_flops'] / r['fb_s'] / 1e9:.1f}", f"{r['peak_rss_mb']:.0f} ({r['delta_rss_mb']:+.0f})"])
    return out


def format_table(report, markdown=False):
    lines = [f"Machine: {report['machine']}",
             f"resnet_v2_{report['depth']}, batch {report['batch_size']}, {report['image_size']}x"
             f"{report['image_size']}, {NUM_CLASSES} classes; {report['threads']} threads for every framework; "
             f"{report['burn_in']} burn-in + {report['num_batches']} timed steps (mean ± sd)."]
    versions = dict.fromkeys(r["version"] for r in report["rows"] if r.get("version"))
    if versions:
        lines.append("Versions: " + ", ".join(versions) + ".")
    lines += ["", _render(table_rows(report), markdown), ""]
    lines += [f"- {r['framework']}: {r['status']}: {r.get('reason', '')}".replace("|", "/")
              for r in report["rows"] if r["status"] != "ok"]
    lines.append("×TF: time / TensorFlow's time. GFLOP/s: conv work only, counted from the shapes "
                 "(forward-backward = 3x forward less the first conv's input gradient). peak MB: the worker's "
                 "peak RSS; Δ: its growth after the imports and the initial weights.")
    return "\n".join(lines)


def run_all(args, log=print):
    rows = []
    for fw in args.frameworks:
        log(f"{fw} ...")
        rows.append(dict(spawn(args, fw), framework=fw, model=f"resnet_v2_{args.depth}"))
    return {"machine": machine_info(), "threads": args.threads, "depth": args.depth,
            "batch_size": args.batch_size, "image_size": args.image_size, "num_batches": args.num_batches,
            "burn_in": args.burn_in, "rows": rows}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--depth", type=int, default=50, choices=(50, 101, 152, 200))
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--num-batches", type=int, default=100, help="timed steps (default 100)")
    p.add_argument("--burn-in", type=int, default=10, help="untimed steps first (default 10)")
    p.add_argument("--frameworks", default=",".join(FRAMEWORKS), help=f"comma list from {','.join(FRAMEWORKS)}")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="threads for every framework")
    p.add_argument("--worker-timeout", type=float, default=7200.0, help="seconds before a worker is abandoned")
    p.add_argument("--markdown", action="store_true", help="print the table as markdown")
    p.add_argument("--json", metavar="PATH", help="also write the raw results as JSON")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.frameworks = [s for s in args.frameworks.split(",") if s]
    bad = [f for f in args.frameworks if f not in FRAMEWORKS]
    if bad or not args.frameworks:
        p.error(f"--frameworks: unknown or empty {bad or args.frameworks}; choose from {','.join(FRAMEWORKS)}")
    for name in ("batch_size", "image_size", "num_batches", "threads"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.burn_in < 0:
        p.error(f"--burn-in must be >= 0, got {args.burn_in}")
    return args


def main(argv=None):
    return worker_or_parent(parse_args(argv), run_worker, run_all, format_table)


if __name__ == "__main__":
    sys.exit(main())
