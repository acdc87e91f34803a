"""Time the CIFAR-10 models side by side: tinybn (numpy, numba) against TF, TF-XLA, PyTorch, torch.compile.

    python bench/bench_cifar.py [--rounds 5] [--steps 10] [--block 2] [--warmup 3]
        [--models tutorial,bn] [--frameworks tinybn-numpy,tinybn-numba,tf,tf-xla,torch,torch-compile]
        [--batch-size 128] [--threads N] [--markdown] [--json out.json]

What is measured, per framework and model (tinybn.models.cifar10 tutorial and bn,
the same networks rebuilt in bench/_peers.py from the same initial weights):

    train   one step: forward + loss (mean sparse xent + the tutorial's weight
            decay) + backward + update (SGD lr 0.1 for tutorial, Adam lr 0.04 for
            bn), on one fixed random batch (N, 24, 24, 3) float32.
    fwd     the forward pass alone, in inference mode (no gradient recording,
            batch norm on its moving statistics).
    rounds  one worker process per framework, alive for all of a model's rounds
            (bench/_rounds.py). After `warmup` uncounted calls of each kind, each
            round gives every framework `steps` timed calls of each kind, in blocks
            of `block` taken in turns, so a slow spell of the machine hits them all.
            Per round: each framework's mean step, its ratio to TF's and to the
            fastest peer's (TF, TF-XLA, PyTorch, torch.compile) of that round; the
            table gives the median of those ratios, with min and max.
    first   the first training step of a fresh process. For tinybn it comes from a
            second fresh process started after the rounds, so numba's on-disk
            cache is warm ("JIT included, cache warm"); `proc` is that whole
            process, interpreter start to the end of the first step. For the peers
            it is the worker's first step (tf.function tracing, XLA or inductor
            compiling included; the compiled peers' compile time is reported apart).
    memory  peak RSS of the worker process (ru_maxrss) and its growth over the
            baseline taken after the imports, the batch and the initial weights
            (numpy arrays, in every worker), before the framework's model,
            optimizer state, activations and gradients.

The workers start one after the other and get the same thread count: OMP/OPENBLAS/
MKL/NUMBA_NUM_THREADS in the environment before numpy is imported, tf.config.threading
intra/inter-op, torch.set_num_threads; and OPENBLAS_THREAD_TIMEOUT=4 as tinybn sets it
on import (tinybn/__init__.py), so an idle worker's BLAS threads sleep. Each framework keeps
its own memory allocator policy, as a user would run it: the numba backend sets glibc's
(kernels/numba_setup.py, mallopt) in its worker when it loads; the peers run with glibc's
defaults. (The MALLOC_* variables were given to every worker alike in one run: TF's ResNet
steps at batch 16 moved by less than the noise, 7.7 vs 8.0 and 11.1 vs 9.5 s in two pairs.)

GFLOP/s counts only the GEMM-shaped work, analytically (pooling, LRN, BN, relu and
the optimizer are memory-bound and left out):
    conv forward   2 * N * OH * OW * KH * KW * C * O
    dense forward  2 * N * IN * OUT
    training step  forward + the weight gradient (same count) + the input gradient
                   (same count) for every layer but the first, whose input needs none.
The ceiling is the best float32 rate numpy's BLAS reaches here, measured on the
models' own GEMM shapes and on a square S^3 product; "% ceil" = achieved / ceiling.
Ratios are time / the other's time: 2.0 means twice as slow.
"""
import argparse
import json
import math
import os
import platform
import resource
import sys
import time

_T_START = time.perf_counter()
HERE = os.path.dirname(os.path.abspath(__file__))
PEERS = ("tf", "tf-xla", "torch", "torch-compile")
FRAMEWORKS = ("tinybn-numpy", "tinybn-numba") + PEERS
MODELS = ("tutorial", "bn")
KINDS = ("train", "fwd")
# the targets for tinybn-numba, on the medians of the per-round ratios
TARGETS = {"train": ("best peer", 0.75), "fwd": ("tf", 1.0)}
sys.path.insert(0, HERE)                             # _peers, _rounds and _report sit beside this file
from _report import check_losses, format_table  # noqa: E402
import _rounds  # noqa: E402
from _rounds import Worker, compare, emit, interleave, serve  # noqa: E402
MARK = _rounds.MARK                                  # bench_data_parallel.py takes it from here
IMAGE = (24, 24, 3)

# (H, W, C, O) of each 5x5 SAME stride-1 conv, and (IN, OUT) of each dense layer.
LAYERS = {
    "tutorial": ([(24, 24, 3, 64), (12, 12, 64, 64)], [(2304, 384), (384, 192), (192, 10)]),
    "bn": ([(24, 24, 3, 64), (12, 12, 64, 64), (6, 6, 64, 10)], []),
}


def model_flops(model, n):
    """(forward FLOPs, training-step FLOPs) of the GEMM work of `model` at batch `n`."""
    convs, dense = LAYERS[model]
    per_layer = [2 * n * h * w * 5 * 5 * c * o for h, w, c, o in convs] + [2 * n * i * o for i, o in dense]
    forward = sum(per_layer)
    return forward, forward + sum(per_layer) + sum(per_layer[1:])


def gemm_shapes(n, square):
    """(label, M, K, N) of the models' biggest GEMMs at batch n, and one square product."""
    return [("conv1 im2col", n * 576, 75, 64), ("conv2 im2col", n * 144, 1600, 64),
            ("conv2 dW", 1600, n * 144, 64), ("local3", n, 2304, 384),
            (f"square {square}", square, square, square)]


def peak_rss_mb():
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / (1024.0 * 1024.0) if sys.platform == "darwin" else rss / 1024.0   # bytes on macOS, KiB on Linux


# ---- workers (one per subprocess) ------------------------------------------------------------

def gemm_worker(args):
    import numpy as np
    rng = np.random.default_rng(0)
    rows = []
    for label, m, k, n in gemm_shapes(args.batch_size, args.gemm_square):
        a = rng.standard_normal((m, k), dtype=np.float32)
        b = rng.standard_normal((k, n), dtype=np.float32)
        a @ b                                            # warm-up: thread pool start, page faults
        best, total, reps = math.inf, 0.0, 0
        while reps < 3 or (total < 0.5 and reps < 50):
            t = time.perf_counter()
            a @ b
            t = time.perf_counter() - t
            best, total, reps = min(best, t), total + t, reps + 1
        rows.append({"shape": label, "m": m, "k": k, "n": n, "sec": best, "gflops": 2.0 * m * k * n / best / 1e9})
    return {"status": "ok", "numpy": np.__version__, "gemm": rows,
            "ceiling_gflops": max(r["gflops"] for r in rows)}


def initial_state(model):
    """The tinybn model (seed 0) and numpy copies of its parameters and buffers, by name."""
    import numpy as np
    from tinybn.models import cifar10
    net = cifar10.MODELS[model](rng=np.random.default_rng(0))
    params = {k: np.array(p.numpy()) for k, p in net.named_parameters()}
    buffers = {k: np.array(b.numpy()) for k, b in net.named_buffers()}
    return net, params, buffers


def tinybn_prepare(backend_name, threads):
    """Import tinybn on `backend_name`; the thread count reaches its BLAS through the environment."""
    import tinybn
    tinybn.use_backend(backend_name)                  # ImportError when numba's kernels are missing
    return f"tinybn {tinybn.__version__} ({backend_name})"


def tinybn_adapter(model, net, x, labels):
    from _peers import ADAM_EPSILON, ADAM_LR, BETA1, BETA2, SGD_LR
    from tinybn import optim
    from tinybn.tensor import Tensor, no_grad
    named = list(net.named_parameters())
    opt = (optim.GradientDescent(named, SGD_LR) if model == "tutorial" else
           optim.Adam(named, ADAM_LR, beta1=BETA1, beta2=BETA2, epsilon=ADAM_EPSILON))

    def train_step():
        net.train()
        loss = net.loss(net(Tensor(x)), labels)
        net.zero_grad()
        loss.backward()
        opt.step()
        return float(loss.item())

    def forward():
        net.eval()
        with no_grad():
            return net(Tensor(x)).numpy()
    return train_step, forward


def build_worker(args):
    """The worker's model, timed first step and warm-up: (hello, {kind: step}, final) or a failure dict."""
    import numpy as np
    fw, model = args.worker, args.model
    rng = np.random.default_rng(1234)
    x = rng.standard_normal((args.batch_size,) + IMAGE, dtype=np.float32)
    labels = rng.integers(0, 10, args.batch_size).astype(np.int32)
    net, params, buffers = initial_state(model)
    try:
        if fw.startswith("tinybn-"):
            version = tinybn_prepare(fw.split("-", 1)[1], args.threads)
        else:
            import _peers
            version = _peers.PREPARE[fw](args.threads)
    except ImportError as e:
        return {"status": "not installed" if fw in PEERS else "unavailable", "reason": str(e)}
    base_mb = peak_rss_mb()                             # after the imports, before the model
    if fw.startswith("tinybn-"):
        train_step, forward = tinybn_adapter(model, net, x, labels)
    else:
        train_step, forward = _peers.ADAPTERS[fw](model, params, buffers, x, labels)
    del net, params, buffers

    t = time.perf_counter()
    loss0 = train_step()                                # tracing / compiling included
    hello = {"status": "ok", "version": version, "first_step_s": time.perf_counter() - t, "loss0": loss0,
             "proc_s": time.perf_counter() - _T_START, "base_rss_mb": base_mb}
    if not args.first_step_only:
        for _ in range(args.warmup - 1):
            train_step()
        t = time.perf_counter()
        forward()
        hello["first_fwd_s"] = time.perf_counter() - t
        for _ in range(args.warmup - 1):
            forward()
    hello["peak_rss_mb"] = peak_rss_mb()

    def final():
        peak = peak_rss_mb()
        return {"status": "ok", "peak_rss_mb": peak, "delta_rss_mb": peak - base_mb}
    return hello, {"train": train_step, "fwd": forward}, final


def run_worker(args):
    """A worker process: build, then serve blocks of steps until the parent closes it
    (--first-step-only: emit the first step and exit)."""
    built = build_worker(args)
    if isinstance(built, dict):
        emit(built)
    elif args.first_step_only:
        serve(built[0], {})
    else:
        serve(*built)


# ---- parent -----------------------------------------------------------------------------------

def thread_env(threads):
    env = dict(os.environ)
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "VECLIB_MAXIMUM_THREADS",
                "NUMEXPR_NUM_THREADS", "NUMBA_NUM_THREADS", "TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS"):
        env[var] = str(threads)
    env["TINYBN_BACKEND"] = "numpy"                  # the worker switches backend itself, catching ImportError
    # what tinybn/__init__.py sets when it is imported first; workers import numpy before tinybn.
    # TF and PyTorch do not use numpy's OpenBLAS for their own math, so this touches only tinybn.
    env.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    return env


def worker_cmd(args, worker, model=None, first_step_only=False):
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", worker, "--batch-size", str(args.batch_size),
           "--warmup", str(args.warmup), "--threads", str(args.threads), "--gemm-square", str(args.gemm_square)]
    return cmd + (["--model", model] if model else []) + (["--first-step-only"] if first_step_only else [])


def spawn(args, worker, model=None, first_step_only=False):
    """A one-shot worker (the GEMM ceiling, a fresh first step): its reply, with the process's wall time."""
    t = time.perf_counter()
    w = Worker(worker, worker_cmd(args, worker, model, first_step_only), thread_env(args.threads),
               args.worker_timeout)
    w.close()
    return dict(w.hello, wall_s=time.perf_counter() - t)


def run_model(args, model, log):
    """One worker per framework for `model`, alive for all the rounds; the table's rows."""
    workers = []
    for fw in args.frameworks:                          # one at a time: a first step is timed alone
        log(f"{fw} {model}: start, first step, warm-up ...")
        workers.append(Worker(fw, worker_cmd(args, fw, model), thread_env(args.threads), args.worker_timeout))
    live = [w for w in workers if w.alive]
    times, failures = interleave(live, KINDS, args.rounds, args.steps, args.block, log)
    rows = []
    for w in workers:
        row = dict(w.hello, framework=w.name, model=model)
        if w.hello["status"] == "ok":
            final = failures.get(w.name) or w.close()          # a failure: its reply; else memory
            row.update(final)
            if final.get("status") == "ok":
                row.update(loss_last=getattr(w, "last", row["loss0"]),
                           **{f"{k}_rounds": times[w.name][k] for k in KINDS})
        rows.append(row)
    compare(rows, KINDS, reference="tf", peers=PEERS)
    for row in rows:
        if row["status"] == "ok" and row["framework"].startswith("tinybn-"):
            fresh = spawn(args, row["framework"], model, first_step_only=True)
            if fresh["status"] == "ok":
                row.update(first_step_s=fresh["first_step_s"], first_proc_s=fresh["wall_s"],
                           first_step_source="fresh process, warm cache")
        row["fwd_flops"], row["train_flops"] = model_flops(model, args.batch_size)
    return rows


def run_all(args, log=print):
    """The GEMM ceiling, then each model's interleaved rounds; the report dict `format_table` prints."""
    log(f"GEMM ceiling (numpy float32, {args.threads} threads) ...")
    gemm = spawn(args, "gemm")
    rows = [row for model in args.models for row in run_model(args, model, log)]
    return {"machine": machine_info(), "threads": args.threads, "batch_size": args.batch_size,
            "steps": args.steps, "block": args.block, "warmup": args.warmup, "rounds": args.rounds,
            "gemm": gemm, "rows": rows, "targets": TARGETS}


def machine_info():
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), cpu)
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} logical CPUs, Python {platform.python_version()}"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--rounds", type=int, default=5, help="rounds; the verdict is the median of the per-round "
                   "ratios (default 5)")
    p.add_argument("--steps", type=int, default=10, help="timed steps of each kind per framework and round "
                   "(default 10)")
    p.add_argument("--block", type=int, default=2, help="steps a framework runs before the next takes its turn "
                   "(default 2)")
    p.add_argument("--warmup", type=int, default=3, help="uncounted steps of each kind before the rounds "
                   "(default 3)")
    p.add_argument("--frameworks", default=",".join(FRAMEWORKS), help=f"comma list from {','.join(FRAMEWORKS)}")
    p.add_argument("--models", default=",".join(MODELS), help=f"comma list from {','.join(MODELS)}")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="threads for every framework")
    p.add_argument("--gemm-square", type=int, default=2048, help="side S of the square S^3 GEMM")
    p.add_argument("--worker-timeout", type=float, default=1800.0, help="seconds before a worker is abandoned")
    p.add_argument("--markdown", action="store_true", help="print the table as markdown")
    p.add_argument("--json", metavar="PATH", help="also write the raw results as JSON")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--model", help=argparse.SUPPRESS)
    p.add_argument("--first-step-only", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.frameworks = [s for s in args.frameworks.split(",") if s]
    args.models = [s for s in args.models.split(",") if s]
    for what, given, allowed in (("--frameworks", args.frameworks, FRAMEWORKS), ("--models", args.models, MODELS)):
        bad = [g for g in given if g not in allowed]
        if bad or not given:
            p.error(f"{what}: unknown or empty {bad or given}; choose from {','.join(allowed)}")
    for name in ("steps", "block", "warmup", "rounds", "batch_size", "threads", "gemm_square"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    return args


def worker_or_parent(args, worker, run_all, format_table):
    """A benchmark script's main(): in a worker process run `worker(args)` (it serves the parent's
    requests); in the parent run every worker (`run_all`), print the table and the loss warnings."""
    if args.worker:
        try:
            worker(args)
        except Exception as e:                       # a broken framework is a row, not a crash
            emit({"status": "error", "reason": f"{type(e).__name__}: {e}"})
        return 0
    report = run_all(args, log=lambda s: print(s, file=sys.stderr, flush=True))
    print(format_table(report, markdown=args.markdown))
    for warning in check_losses(report):
        print("WARNING: " + warning)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)
    return 0


def main(argv=None):
    args = parse_args(argv)
    return worker_or_parent(args, lambda a: serve(gemm_worker(a), {}) if a.worker == "gemm" else run_worker(a),
                            run_all, format_table)


if __name__ == "__main__":
    sys.exit(main())
