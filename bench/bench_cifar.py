"""Time the CIFAR-10 models side by side: tinybn (numpy, numba), TensorFlow CPU, PyTorch CPU.

    python bench/bench_cifar.py [--steps 10] [--warmup 3] [--models tutorial,bn]
        [--frameworks tinybn-numpy,tinybn-numba,tf,torch] [--batch-size 128] [--rounds 3]
        [--threads N] [--markdown] [--json out.json]

What is measured, per framework and model (tinybn.models.cifar10 tutorial and bn,
the same networks rebuilt in bench/_peers.py from the same initial weights):

    train   one step: forward + loss (mean sparse xent + the tutorial's weight
            decay) + backward + update (SGD lr 0.1 for tutorial, Adam lr 0.04 for
            bn), on one fixed random batch (N, 24, 24, 3) float32.
    fwd     the forward pass alone, in inference mode (no gradient recording,
            batch norm on its moving statistics).
    Each is `warmup` uncounted calls then `steps` timed calls, in each of `rounds`
    runs (the frameworks take turns, round after round); mean and stddev of all
    the timed calls.
    first   the first training step of a fresh process. For tinybn it comes from a
            second fresh process started after the timed one, so numba's on-disk
            cache is warm ("JIT included, cache warm"); `proc` is that whole
            process, interpreter start to the end of the first step. For TF and
            PyTorch it is the timed process's first step (tf.function tracing included).
    memory  peak RSS of the worker process (ru_maxrss) and its growth over the
            baseline taken after the imports, the batch and the initial weights
            (numpy arrays, in every worker), before the framework's model,
            optimizer state, activations and gradients.

Every (framework, model) runs in its own subprocess, one after the other, with the
same thread count everywhere: OMP/OPENBLAS/MKL/NUMBA_NUM_THREADS in the environment
before numpy is imported, tf.config.threading intra/inter-op, torch.set_num_threads;
and OPENBLAS_THREAD_TIMEOUT=4 as tinybn sets it on import (tinybn/__init__.py).

GFLOP/s counts only the GEMM-shaped work, analytically (pooling, LRN, BN, relu and
the optimizer are memory-bound and left out):
    conv forward   2 * N * OH * OW * KH * KW * C * O
    dense forward  2 * N * IN * OUT
    training step  forward + the weight gradient (same count) + the input gradient
                   (same count) for every layer but the first, whose input needs none.
The ceiling is the best float32 rate numpy's BLAS reaches here, measured on the
models' own GEMM shapes and on a square S^3 product; "% ceil" = achieved / ceiling.
Ratios are time / TensorFlow's time: 2.0 means twice as slow as TF.
"""
import argparse
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import time

_T_START = time.perf_counter()
HERE = os.path.dirname(os.path.abspath(__file__))
FRAMEWORKS = ("tinybn-numpy", "tinybn-numba", "tf", "torch")
MODELS = ("tutorial", "bn")
MARK = "BENCH_JSON "
sys.path.insert(0, HERE)                             # _peers and _report sit beside this file
from _report import check_losses, format_table  # noqa: E402
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


def emit(result):
    print(MARK + json.dumps(result), flush=True)


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


def run_worker(args):
    """Build one framework's model, time it, return the result dict."""
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
        return {"status": "not installed" if fw in ("tf", "torch") else "unavailable", "reason": str(e)}
    base_mb = peak_rss_mb()                             # after the imports, before the model
    if fw.startswith("tinybn-"):
        train_step, forward = tinybn_adapter(model, net, x, labels)
    else:
        train_step, forward = _peers.ADAPTERS[fw](model, params, buffers, x, labels)
    del net, params, buffers

    t = time.perf_counter()
    loss0 = train_step()
    first = time.perf_counter() - t
    result = {"status": "ok", "version": version, "first_step_s": first, "loss0": loss0,
              "proc_s": time.perf_counter() - _T_START, "base_rss_mb": base_mb}
    if args.first_step_only:
        result["peak_rss_mb"] = peak_rss_mb()
        return result
    for _ in range(args.warmup - 1):
        train_step()
    times, loss = [], loss0
    for _ in range(args.steps):
        t = time.perf_counter()
        loss = train_step()
        times.append(time.perf_counter() - t)
    result.update(train_times=times, loss_last=loss)
    for _ in range(args.warmup):
        forward()
    times = []
    for _ in range(args.steps):
        t = time.perf_counter()
        forward()
        times.append(time.perf_counter() - t)
    peak = peak_rss_mb()
    result.update(fwd_times=times, peak_rss_mb=peak, delta_rss_mb=peak - base_mb)
    return result


def _sd(xs):
    return statistics.stdev(xs) if len(xs) > 1 else 0.0


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


def spawn(args, worker, model=None, first_step_only=False):
    """Run one worker subprocess; its result dict (status "error"/"timeout" when it fails)."""
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", worker,
           "--batch-size", str(args.batch_size), "--steps", str(args.steps), "--warmup", str(args.warmup),
           "--threads", str(args.threads), "--gemm-square", str(args.gemm_square)]
    if model:
        cmd += ["--model", model]
    if first_step_only:
        cmd.append("--first-step-only")
    t = time.perf_counter()
    try:
        proc = subprocess.run(cmd, env=thread_env(args.threads), capture_output=True, text=True,
                              timeout=args.worker_timeout)
    except subprocess.TimeoutExpired:
        return {"status": "timeout", "reason": f"no result within {args.worker_timeout} s"}
    wall = time.perf_counter() - t
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(MARK):
            result = json.loads(line[len(MARK):])
            result["wall_s"] = wall
            return result
    tail = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
    return {"status": "error", "reason": f"exit code {proc.returncode}: {tail}"}


def merge_rounds(runs):
    """One result from a worker's rounds: all timed steps pooled, the first round's first step, peak memory."""
    failed = [r for r in runs if r["status"] != "ok"]
    if failed:
        return failed[0]
    merged = dict(runs[0], loss_last=runs[-1]["loss_last"], rounds=len(runs),
                  peak_rss_mb=max(r["peak_rss_mb"] for r in runs), delta_rss_mb=max(r["delta_rss_mb"] for r in runs))
    for kind in ("train", "fwd"):
        times = [t for r in runs for t in r[f"{kind}_times"]]
        merged.update({f"{kind}_times": times, f"{kind}_s": statistics.fmean(times), f"{kind}_sd": _sd(times)})
    return merged


def run_all(args, log=print):
    """Every worker, one at a time, in rounds; the report dict that `format_table` prints.

    A shared machine's speed drifts by 10-20% over minutes. Running the frameworks in
    turn, `rounds` times over, spreads each slow spell over all of them, so the
    ratios are fairer than one long run per framework would make them.
    """
    log(f"GEMM ceiling (numpy float32, {args.threads} threads) ...")
    gemm = spawn(args, "gemm")
    runs = {}
    for round_ in range(1, args.rounds + 1):
        for model in args.models:
            for fw in args.frameworks:
                log(f"{fw} {model} (round {round_} of {args.rounds}) ...")
                runs.setdefault((fw, model), []).append(spawn(args, fw, model))
    rows = []
    for model in args.models:
        for fw in args.frameworks:
            r = merge_rounds(runs[(fw, model)])
            if r["status"] == "ok" and fw.startswith("tinybn-"):
                fresh = spawn(args, fw, model, first_step_only=True)
                if fresh["status"] == "ok":
                    r["first_step_s"], r["first_proc_s"] = fresh["first_step_s"], fresh["wall_s"]
                    r["first_step_source"] = "fresh process, warm cache"
            fwd_flops, train_flops = model_flops(model, args.batch_size)
            rows.append(dict(r, framework=fw, model=model, fwd_flops=fwd_flops, train_flops=train_flops))
    return {"machine": machine_info(), "threads": args.threads, "batch_size": args.batch_size,
            "steps": args.steps, "warmup": args.warmup, "rounds": args.rounds, "gemm": gemm, "rows": rows}


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
    p.add_argument("--steps", type=int, default=10, help="timed steps (default 10)")
    p.add_argument("--warmup", type=int, default=3, help="uncounted steps before timing (default 3)")
    p.add_argument("--rounds", type=int, default=3, help="times each worker runs, frameworks taking turns "
                   "(default 3); its timed steps are pooled")
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
    for name in ("steps", "warmup", "rounds", "batch_size", "threads", "gemm_square"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    return args


def worker_or_parent(args, worker, run_all, format_table):
    """A benchmark script's main(): in a worker process run `worker(args)` and emit its result;
    in the parent run every worker (`run_all`), print the table and the loss warnings."""
    if args.worker:
        try:
            emit(worker(args))
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
    return worker_or_parent(args, lambda a: gemm_worker(a) if a.worker == "gemm" else run_worker(a),
                            run_all, format_table)


if __name__ == "__main__":
    sys.exit(main())
