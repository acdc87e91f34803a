"""Time ResNet-V2 side by side: tinybn (numpy, numba), TensorFlow and PyTorch (eager, torch.compile).

    python bench/bench_resnet.py [--depth {50,101,152,200}] [--batch-size 32] [--image-size 224]
        [--num-batches 100] [--burn-in 10] [--rounds 5] [--block 1]
        [--frameworks tinybn-numpy,tinybn-numba,tf,torch[,torch-compile]] [--threads N]
        [--markdown] [--json out.json]

The steps and the FLOP count are `python -m tinybn.bench resnet`'s (tinybn/tasks/resnet.py,
after TF's time_tensorflow_run), on one fixed batch of N(0, 0.1) images, batch x S x S x 3,
1000 classes:
    Forward           inference mode (BN on moving statistics), no gradients
    Forward-backward  training mode, loss = mean sparse softmax xent on random labels +
                      1e-4 * l2_loss of every conv kernel, gradients of every parameter

The networks: tinybn.models.resnet_v2.resnet_v2_<depth> (seed 0); for TensorFlow, slim's
network on tf.nn ops from crosscheck/tf_resnet.py (the one test_tf_resnet.py proves equal
to tinybn's), each step one tf.function call returning the logits, or the loss and every
gradient (so none is pruned), BN moving-average updates included; for PyTorch, the same
network restated in bench/_torch_resnet.py, eager or torch.compile'd (default mode). All
load tinybn's weights; the first training-mode loss of every framework must agree (a
WARNING says when not).

The timing is bench_cifar.py's (bench/_rounds.py): one worker process per framework
(same thread count everywhere: bench_cifar.thread_env), started one after the other,
each running `burn_in` untimed steps of both kinds after its first ones; then `rounds`
rounds in which the workers take turns, `block` steps at a time, until each has run
ceil(num_batches / rounds) timed steps of each kind. Reported: sec / batch (the median
of the round means ± the sd of all steps), the median of the per-round ratios to TF's
time and to the fastest peer's (TF, PyTorch, torch.compile) with their min and max, conv
GFLOP/s, the compile time of torch.compile (its first calls less a median step) and the
worker's peak RSS (ru_maxrss) with its growth over the baseline taken after the imports
and the network's initial weights (numpy, in every worker; the peers' growth includes
their own copy of them).
"""
import argparse
import math
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
CROSSCHECK = os.path.join(os.path.dirname(HERE), "crosscheck")
sys.path.insert(0, HERE)
from _report import _render, ratio_cell  # noqa: E402
from _rounds import Worker, compare, emit, interleave, serve  # noqa: E402
from bench_cifar import machine_info, thread_env, tinybn_prepare, worker_or_parent  # noqa: E402

PEERS = ("tf", "torch", "torch-compile")
FRAMEWORKS = ("tinybn-numpy", "tinybn-numba") + PEERS
# torch.compile took 9 minutes to compile resnet_v2_50's forward-backward on 2 busy cores: by request only
DEFAULT_FRAMEWORKS = FRAMEWORKS[:-1]
KINDS = ("fwd", "fb")
TARGETS = {"fwd": 1.0, "fb": 0.8}                  # the issue's, for tinybn-numba against TF
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
    """Build the framework's network, time its first calls, burn in, then serve the parent's blocks."""
    import numpy as np
    from tinybn.tasks.resnet import conv_flops, make_inputs, peak_rss_mb, resnet_steps
    from tinybn.models.resnet_v2 import resnet_v2, slim_names
    fw = args.worker
    images, labels = make_inputs(args.batch_size, args.image_size, NUM_CLASSES)
    model = resnet_v2(args.depth, NUM_CLASSES, rng=np.random.default_rng(0))
    flops = conv_flops(model, args.batch_size, args.image_size, args.image_size)
    try:
        if fw in PEERS:
            import _peers
            version = _peers.PREPARE[fw](args.threads)
        else:
            version = tinybn_prepare(fw.split("-", 1)[1], args.threads)
    except ImportError as e:
        return emit({"status": "not installed" if fw in PEERS else "unavailable", "reason": str(e)})
    base_mb = peak_rss_mb()
    if fw in PEERS:
        names = slim_names(model)                    # the arrays themselves: the peers copy them
        variables = {names[k]: t.data for k, t in list(model.named_parameters()) + list(model.named_buffers())}
        if fw == "tf":
            forward, forward_backward = tf_steps(args.depth, variables, images, labels)
        else:
            from _torch_resnet import torch_steps
            forward, forward_backward = torch_steps(args.depth, variables, images, labels,
                                                    compile=fw == "torch-compile")
        del model, variables
    else:
        forward, forward_backward = resnet_steps(model, images, labels)

    hello = {"status": "ok", "version": version, "fwd_flops": flops[0], "fb_flops": flops[1]}
    t = time.perf_counter()
    hello["loss0"] = forward_backward()                 # compiling included
    hello["first_fb_s"] = time.perf_counter() - t
    t = time.perf_counter()
    forward()
    hello["first_fwd_s"] = time.perf_counter() - t
    for _ in range(args.burn_in):
        forward_backward()
        forward()

    def final():
        peak = peak_rss_mb()
        return {"status": "ok", "peak_rss_mb": peak, "delta_rss_mb": peak - base_mb}
    serve(hello, {"fwd": forward, "fb": forward_backward}, final)


# ---- parent -----------------------------------------------------------------------------------

def worker_cmd(args, worker):
    return [sys.executable, os.path.abspath(__file__), "--worker", worker, "--depth", str(args.depth),
            "--batch-size", str(args.batch_size), "--image-size", str(args.image_size),
            "--burn-in", str(args.burn_in), "--threads", str(args.threads)]


def run_all(args, log=print):
    workers = []
    for fw in args.frameworks:                          # one at a time: first calls are timed alone
        log(f"{fw}: start, first steps, burn-in ...")
        workers.append(Worker(fw, worker_cmd(args, fw), thread_env(args.threads), args.worker_timeout))
    steps = math.ceil(args.num_batches / args.rounds)
    times, failures = interleave([w for w in workers if w.alive], KINDS, args.rounds, steps, args.block, log)
    rows = []
    for w in workers:
        row = dict(w.hello, framework=w.name, model=f"resnet_v2_{args.depth}")
        if w.hello["status"] == "ok":
            final = failures.get(w.name) or w.close()          # a failure: its reply; else memory
            row.update(final, **({f"{k}_rounds": times[w.name][k] for k in KINDS}
                                 if final.get("status") == "ok" else {}))
        rows.append(row)
    compare(rows, KINDS, reference="tf", peers=PEERS)
    return {"machine": machine_info(), "threads": args.threads, "depth": args.depth,
            "batch_size": args.batch_size, "image_size": args.image_size, "num_batches": args.num_batches,
            "rounds": args.rounds, "steps": steps, "block": args.block, "burn_in": args.burn_in, "rows": rows}


def table_rows(report):
    header = ["framework", "fwd s/batch", "fwd ×TF", "fwd ×best peer", "fwd GFLOP/s", "fwd+bwd s/batch",
              "fwd+bwd ×TF", "fwd+bwd ×best peer", "fwd+bwd GFLOP/s", "compile s", "peak MB (Δ)"]
    out = [header]
    for r in report["rows"]:
        if r["status"] != "ok":
            out.append([r["framework"], r["status"], "(see below)"] + [""] * (len(header) - 3))
            continue
        compile_s = (f"{r['first_fb_s'] - r['fb_s']:.1f} + {r['first_fwd_s'] - r['fwd_s']:.1f}"
                     if r["framework"] == "torch-compile" else "")
        out.append([r["framework"]] + [cell for kind in KINDS for cell in (
                    f"{r[f'{kind}_s']:.3f} ± {r[f'{kind}_sd']:.3f}", ratio_cell(r.get(f"{kind}_vs_tf")),
                    ratio_cell(r.get(f"{kind}_vs_best")), f"{r[f'{kind}_flops'] / r[f'{kind}_s'] / 1e9:.1f}")]
                   + [compile_s, f"{r['peak_rss_mb']:.0f} ({r['delta_rss_mb']:+.0f})"])
    return out


def verdicts(report, framework="tinybn-numba"):
    row = next((r for r in report["rows"] if r["framework"] == framework), None)
    if row is None or row["status"] != "ok" or "fwd_vs_tf" not in row:
        return [f"{framework} or tf not in this run: no verdict."]
    return [f"{framework}, {kind}: {row[f'{kind}_vs_tf']['median']:.2f}x TF (min {row[f'{kind}_vs_tf']['min']:.2f}, "
            f"max {row[f'{kind}_vs_tf']['max']:.2f}), target <= {limit:.2f}x: "
            f"{'MET' if row[f'{kind}_vs_tf']['median'] <= limit else 'NOT MET'}." for kind, limit in TARGETS.items()]


def format_table(report, markdown=False):
    lines = [f"Machine: {report['machine']}",
             f"resnet_v2_{report['depth']}, batch {report['batch_size']}, {report['image_size']}x"
             f"{report['image_size']}, {NUM_CLASSES} classes; {report['threads']} threads for every framework; "
             f"{report['burn_in']} burn-in steps, then {report['rounds']} round(s) of {report['steps']} timed steps "
             f"of each kind per framework, in blocks of {report['block']} taken in turns."]
    versions = dict.fromkeys(r["version"] for r in report["rows"] if r.get("version"))
    if versions:
        lines.append("Versions: " + ", ".join(versions) + ".")
    lines += ["", _render(table_rows(report), markdown), ""]
    lines += [f"- {r['framework']}: {r['status']}: {r.get('reason', '')}".replace("|", "/")
              for r in report["rows"] if r["status"] != "ok"]
    lines += [f"Verdict: {v}" for v in verdicts(report)] + [""]
    lines.append("s/batch: the median of the round means ± the sd of all timed steps. ×TF, ×best peer: the "
                 "median of the per-round ratios (min-max), time / TensorFlow's, and / the fastest peer's (TF, "
                 "PyTorch, torch.compile) in the same round. GFLOP/s: conv work only, counted from the shapes "
                 "(forward-backward = 3x forward less the first conv's input gradient). compile s: torch.compile's "
                 "first forward-backward and forward calls less a median step. peak MB: the worker's peak RSS; "
                 "Δ: its growth after the imports and the initial weights.")
    return "\n".join(lines)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--depth", type=int, default=50, choices=(50, 101, 152, 200))
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--num-batches", type=int, default=100, help="timed steps of each kind per framework, "
                   "split over the rounds (default 100)")
    p.add_argument("--burn-in", type=int, default=10, help="untimed steps of each kind first (default 10)")
    p.add_argument("--rounds", type=int, default=5, help="rounds; the verdict is the median of the per-round "
                   "ratios (default 5)")
    p.add_argument("--block", type=int, default=1, help="steps a framework runs before the next takes its turn "
                   "(default 1)")
    p.add_argument("--frameworks", default=",".join(DEFAULT_FRAMEWORKS),
                   help=f"comma list from {','.join(FRAMEWORKS)} (default: all but torch-compile)")
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
    for name in ("batch_size", "image_size", "num_batches", "rounds", "block", "threads"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.burn_in < 0:
        p.error(f"--burn-in must be >= 0, got {args.burn_in}")
    return args


def main(argv=None):
    return worker_or_parent(parse_args(argv), run_worker, run_all, format_table)


if __name__ == "__main__":
    sys.exit(main())
