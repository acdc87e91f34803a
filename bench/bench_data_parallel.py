"""Data parallelism on this machine, side by side, and its scaling on paper.

    python bench/bench_data_parallel.py [--models tutorial,bn] [--rounds 5] [--steps 6] [--warmup 2]
        [--batch-size 128] [--backend numba|numpy] [--resnet-batch 2] [--cost-model]
        [--markdown] [--json out.json] [--from-json out.json]

Throughput. The same work per step, a global batch of `batch-size` images (N, 24, 24, 3):
    (a) 1x2   one process, 2 threads, the whole batch
    (b) 2x1   `mpiexec -n 2`, 1 thread per rank, half the batch per replica (tinybn.distributed)
    (c) 1x1   one process, 1 thread, half the batch: one replica of (b) alone, the "one node"
              of (b)'s prediction below
The thread counts are set in each process's environment before numpy loads (OMP, OPENBLAS,
MKL, NUMBA_NUM_THREADS; bench_cifar.thread_env). Each configuration is a subprocess (this
script in worker mode) that builds a TrainingRun as `python -m tinybn.train cifar` does (the
task's optimizer and weight EMA, tower batch norm), then times `warmup` uncounted and `steps`
counted TrainingRun.train_step calls on 4 pre-made global batches, each rank on its slice (in
(b), followed by DataParallel.agree as in TrainingRun.fit). numba's compilation falls in the
warm-up. images/s = steps * global batch / their seconds. Then `phase-steps` more steps with
forward (+ loss), backward (DataParallel.backward in (b)) and update (optimizer, EMA, (b)'s
after_update and agree) timed one by one. The configurations take turns, `rounds` times over
(the order rotating each round); a ratio is taken within a round, so slow spells of a shared
machine cancel, and reported as the median and min-max over the rounds.

Allreduce in (b), from GradientBuckets.stats each step: the gradient thread's seconds in
Communicator.sum_ ("in sum_") and the seconds finish() waited after backward ("not hidden").

Cost model (bench/dp_cost_model.py has the formulas): the measured one-node phases of (a)
(and of resnet_v2_50, timed at --resnet-batch and scaled linearly to --resnet-node-batch)
projected to K = 2..64 nodes at 10, 25 and 100 Gb/s. The 2-rank point: this machine's MPI
allreduce bandwidth, measured under `mpiexec -n 2` on each model's gradient size, predicts
(b) from (c)'s phases; the measured (b) stands beside it.
"""
import argparse
import datetime
import importlib.util
import json
import os
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import types

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import dp_cost_model as cost  # noqa: E402
from bench_cifar import MARK, emit, machine_info, thread_env  # noqa: E402
from _report import _render  # noqa: E402

MODELS = ("tutorial", "bn")
RANKS = 2
# name -> (processes, threads per process, the global batch is split in this many replicas' slices)
CONFIGS = {"1x2": (1, 2, 1), "2x1": (RANKS, 1, RANKS), "1x1": (1, 1, RANKS)}
BATCHES = 4                      # distinct pre-made global batches, cycled


# ---- workers (one per subprocess, or one per rank) ---------------------------------------------

def global_batch(step, size):
    import numpy as np
    rng = np.random.default_rng([7, step])
    return rng.standard_normal((size, 24, 24, 3), dtype=np.float32), rng.integers(0, 10, size).astype(np.int32)


def build_run(model_name, backend, batch_size, world, train_dir):
    """A TrainingRun of `model_name` as the cifar task builds it (optimizer, EMA, tower BN)."""
    import numpy as np
    from tinybn.models import cifar10 as cifar_models
    from tinybn.tasks.cifar import EMA_DECAY, make_optimizer
    from tinybn.training import TrainingRun
    args = types.SimpleNamespace(backend=backend, train_dir=train_dir, max_to_keep=1, batch_size=batch_size,
                                 sync_bn=False, check_replicas=0, seed=0, model=model_name, max_steps=0)

    class Run(TrainingRun):
        def meta(self):
            return {"task": "cifar", "model": model_name, "batch_size": batch_size, "seed": 0}

    model = cifar_models.MODELS[model_name](rng=np.random.default_rng(0))
    return Run(args, model, lambda named: make_optimizer(model_name, named, batch_size, world.size),
               ema_decay=EMA_DECAY, world=world)


def timed_steps(run, batches, warmup, steps):
    """(seconds of each counted step, [GradientBuckets.stats of each]) of TrainingRun.train_step."""
    times, stats = [], []
    for i in range(warmup + steps):
        start = time.perf_counter()
        loss, accuracy, _ = run.train_step(*batches[i % len(batches)])
        if run.parallel is not None:                 # what fit() adds to every step of a job
            run.parallel.agree(False, loss, accuracy)
        if i >= warmup:
            times.append(time.perf_counter() - start)
            if run.parallel is not None:
                stats.append(dict(run.parallel.stats))
    return times, stats


def phase_steps(run, batches, steps):
    """Mean seconds of forward (+ loss), backward and update, over `steps` steps timed phase by
    phase; the same calls as TrainingRun.train_step (and fit's agree)."""
    from tinybn.tensor import Tensor
    seconds = {"forward": [], "backward": [], "update": []}
    for i in range(steps):
        images, labels = batches[i % len(batches)]
        t0 = time.perf_counter()
        loss = run.model.loss(run.model(Tensor(images)), labels)
        t1 = time.perf_counter()
        run.model.zero_grad()
        (loss.backward if run.parallel is None else lambda: run.parallel.backward(loss))()
        t2 = time.perf_counter()
        run.opt.step()
        run.ema.apply(run.named)
        if run.parallel is not None:
            run.parallel.after_update(run.step, run.replica_tensors)
            run.parallel.agree(False, float(loss.item()), 0.0)
        t3 = time.perf_counter()
        for name, t in zip(seconds, (t1 - t0, t2 - t1, t3 - t2)):
            seconds[name].append(t)
    return {name: statistics.fmean(ts) for name, ts in seconds.items()}


def train_worker(args):
    import tinybn
    from tinybn.distributed import world as world_lib
    world = world_lib.world()
    tinybn.use_backend(args.backend)
    local = args.batch_size // args.split          # (c): rank 0's slice of (b), in a world of one
    rows = slice(world.rank * local, (world.rank + 1) * local)
    batches = [tuple(a[rows] for a in global_batch(i, args.batch_size)) for i in range(BATCHES)]
    with tempfile.TemporaryDirectory() as train_dir:
        run = build_run(args.model, args.backend, local, world, train_dir)
        world.barrier()
        times, stats = timed_steps(run, batches, args.warmup, args.steps)
        phases = phase_steps(run, batches, args.phase_steps)
        describe = run.parallel.describe(args.backend, local) if run.parallel is not None else "one process"
        if run.parallel is not None:
            run.parallel.close()
    result = {"status": "ok", "version": f"tinybn {tinybn.__version__} ({args.backend})", "replicas": world.size,
              "library": world.library, "batch_per_replica": local, "step_times": times,
              "images_per_s": args.steps * args.batch_size / sum(times), "phases": phases, "describe": describe}
    if stats:
        result.update(allreduce_s=[s["allreduce_seconds"] for s in stats], wait_s=[s["wait_seconds"] for s in stats],
                      buckets=stats[0]["buckets"], bytes=stats[0]["bytes"])
    return result if world.is_root else None


def allreduce_worker(args):
    """Seconds of Communicator.sum_ (MPI_Allreduce in place) on float32 buffers of each of
    args.sizes bytes, best of repeats, every rank starting together (a barrier before each)."""
    import numpy as np
    from tinybn.distributed import world as world_lib
    world = world_lib.world()
    comm = world_lib.communicator(world.dup())
    rows = []
    for nbytes in args.sizes:
        buf = np.zeros(nbytes // 4, np.float32)       # zeros: sums stay finite, the speed is the same
        times, more = [], True
        while more:
            world.barrier()
            start = time.perf_counter()
            comm.sum_(buf)
            times.append(time.perf_counter() - start)
            # rank 0 decides for all: every rank must make the same calls, whatever its clock says
            more = world.bcast_object(len(times) < 10 or (sum(times) < 1.0 and len(times) < 100))
        seconds = min(times)          # best of repeats: the link, not a neighbour that took our core
        rows.append({"bytes": nbytes, "seconds": seconds,
                     "bus_bytes_per_s": cost.bus_bandwidth(nbytes, world.size, seconds)})
    result = {"status": "ok", "library": world.library, "ranks": world.size, "sizes": rows}
    return result if world.is_root else None


def resnet_worker(args):
    """Mean forward (+ loss), backward and update (Momentum 0.9) seconds of resnet_v2_50 on one
    batch of args.resnet_batch images of args.resnet_image_size^2, 1000 classes."""
    import numpy as np
    import tinybn
    from tinybn import optim
    from tinybn.models.resnet_v2 import resnet_v2_50
    from tinybn.tensor import Tensor
    tinybn.use_backend(args.backend)
    model = resnet_v2_50(num_classes=1000, rng=np.random.default_rng(0)).to_backend()
    named = list(model.named_parameters())
    opt = optim.Momentum(named, 0.1, momentum=0.9)
    rng = np.random.default_rng(0)
    size = args.resnet_image_size
    images = (0.1 * rng.standard_normal((args.resnet_batch, size, size, 3))).astype(np.float32)
    labels = rng.integers(0, 1000, args.resnet_batch).astype(np.int32)
    seconds = {"forward": [], "backward": [], "update": []}
    model.train()
    for i in range(1 + args.resnet_steps):                  # the first: warm-up
        t0 = time.perf_counter()
        loss = model.loss(model(Tensor(images))[0], labels)
        t1 = time.perf_counter()
        model.zero_grad()
        loss.backward()
        t2 = time.perf_counter()
        opt.step()
        t3 = time.perf_counter()
        for name, t in zip(seconds, (t1 - t0, t2 - t1, t3 - t2)):
            if i:
                seconds[name].append(t)
    return {"status": "ok", "params": cost.count_parameters(model), "buckets": cost.bucket_bytes(model),
            "batch": args.resnet_batch, "image_size": size,
            "phases": {name: statistics.fmean(ts) for name, ts in seconds.items()}}


WORKERS = {"train": train_worker, "allreduce": allreduce_worker, "resnet": resnet_worker}


# ---- the report ------------------------------------------------------------------------------

def throughput_rows(report):
    head = ["model", "(a) 1x2 img/s", "(b) 2x1 img/s", "(b)/(a)", "(c) 1x1 img/s", "in sum_ ms/step",
            "not hidden ms/step", "share of step (in sum_ / not hidden)", "buckets"]
    body = []
    for model in report["runs"]:
        a, b, c = (cost.ok_runs(report, model, config) for config in CONFIGS)
        if not (a and b and c):
            failed = next(r for cfg in CONFIGS for r in report["runs"][model][cfg] if r["status"] != "ok")
            body.append([model, f"{failed['status']}: {failed['reason']}"] + [""] * (len(head) - 2))
            continue
        ratios = [rb["images_per_s"] / ra["images_per_s"] for ra, rb in zip(a, b)]
        in_sum = [1e3 * statistics.fmean(r["allreduce_s"]) for r in b]
        waited = [1e3 * statistics.fmean(r["wait_s"]) for r in b]
        step = [1e3 * statistics.fmean(r["step_times"]) for r in b]
        body.append([model, cost.spread([r["images_per_s"] for r in a]), cost.spread([r["images_per_s"] for r in b]),
                     cost.spread(ratios, "{:.2f}x"), cost.spread([r["images_per_s"] for r in c]), cost.spread(in_sum),
                     cost.spread(waited), f"{statistics.median(i / s for i, s in zip(in_sum, step)):.0%} / "
                     f"{statistics.median(w / s for w, s in zip(waited, step)):.0%}",
                     f"{b[0]['buckets']} ({b[0]['bytes'] / 1e6:.2f} MB)"])
    return [head] + body


def format_report(report, markdown=False):
    lines = [f"{report['date']}, {report['machine']}; backend {report['backend']}; {report['command']}",
             f"Global batch {report['batch_size']}: (a) 1 process x 2 threads, (b) {report['ranks']} ranks x 1 thread "
             f"at {report['batch_size'] // report['ranks']} per replica, (c) 1 process x 1 thread at "
             f"{report['batch_size'] // report['ranks']}. {report['warmup']} warm-up + {report['steps']} timed steps "
             f"per run, {report['rounds']} round(s), configurations taking turns; median [min-max] over the rounds. "
             "Other processes used " + ("(unknown)" if report["other_processes_cpu"] is None else
                                        f"{report['other_processes_cpu']:.0%}") + " of the CPUs meanwhile.",
             ""]
    if not report["cost_model_only"]:
        lines += [_render(throughput_rows(report), markdown), "",
                  "in sum_: the gradient thread's time in MPI_Allreduce; not hidden: what finish() waited "
                  "after backward.", ""]
    lines += [f"2-rank point ({report['allreduce'].get('library', report['allreduce'].get('reason'))}):", "",
              _render(cost.two_rank_rows(report), markdown), "",
              "Cost model (bench/dp_cost_model.py): step(K) = F + max(B, A(G - G_last)) + A(G_last) + U, "
              "A(n) = 2(K-1)/K * n / bandwidth; efficiency = step(1) / step(K).", "",
              cost.format_projection(cost.cost_nodes(report), markdown)]
    return "\n".join(lines)


# ---- parent ------------------------------------------------------------------------------------

def mpiexec_path():
    beside = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    found = beside if os.path.exists(beside) else shutil.which("mpiexec")
    if not found:
        raise SystemExit("error: mpiexec not found beside python or on PATH; pip install -e '.[mpi]'")
    return found


def spawn(args, worker, processes, threads, extra=()):
    """One worker (under `mpiexec -n processes` when > 1); its result dict."""
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", worker, "--backend", args.backend,
           "--batch-size", str(args.batch_size), "--steps", str(args.steps), "--warmup", str(args.warmup),
           "--phase-steps", str(args.phase_steps), *extra]
    if processes > 1:
        cmd = [mpiexec_path(), "-n", str(processes)] + cmd
    env = thread_env(threads)
    env.pop("TINYBN_BACKEND", None)
    # a session of its own: on a timeout the whole group goes, mpiexec's ranks included
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=args.worker_timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        return {"status": "timeout", "reason": f"no result within {args.worker_timeout:g} s"}
    for line in reversed(stdout.splitlines()):
        # the ranks share mpiexec's stdout: two ranks' error lines may arrive glued together
        for message in reversed(line.split(MARK)[1:]):
            try:
                return json.loads(message)
            except json.JSONDecodeError:
                continue
    tail = (stderr.strip().splitlines() or ["(no output)"])[-1]
    return {"status": "error", "reason": f"exit code {proc.returncode}: {tail}"}


def cpu_seconds():
    """(wall, CPU seconds of the whole machine busy, of this process and its waited-for
    descendants), or None where /proc/stat is missing (not Linux)."""
    try:
        with open("/proc/stat") as f:
            ticks = [int(t) for t in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    busy = (sum(ticks[:8]) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")        # all but idle, iowait
    ours = sum(getattr(resource.getrusage(who), field) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
               for field in ("ru_utime", "ru_stime"))
    return time.time(), busy, ours


def other_processes_share(before, after):
    """The fraction of the machine's CPUs that processes other than this benchmark's used between
    two cpu_seconds(): what shifted the timings (a quiet machine gives about 0)."""
    if before is None or after is None or after[0] <= before[0]:
        return None
    other = (after[1] - before[1]) - (after[2] - before[2])
    return max(0.0, other) / ((after[0] - before[0]) * (os.cpu_count() or 1))


def run_all(args, log):
    """Every measurement; the report dict that dp_report.format_report prints."""
    import numpy as np
    from tinybn.models import cifar10 as cifar_models
    models = {}
    for name in args.models:
        net = cifar_models.MODELS[name](rng=np.random.default_rng(0))
        models[name] = {"params": cost.count_parameters(net), "buckets": cost.bucket_bytes(net)}
    before = cpu_seconds()
    runs = {m: {c: [] for c in CONFIGS} for m in args.models}
    order = list(CONFIGS)
    for round_ in range(args.rounds):
        for model in args.models:
            for config in order[round_ % len(order):] + order[:round_ % len(order)]:
                log(f"{model} {config} (round {round_ + 1} of {args.rounds}) ...")
                processes, threads, split = CONFIGS[config]
                runs[model][config].append(spawn(args, "train", processes, threads,
                                                 ["--model", model, "--split", str(split)]))
    sizes = [4 * models[m]["params"] for m in args.models]
    log(f"MPI allreduce bandwidth, {RANKS} ranks, on {', '.join(str(s) for s in sizes)} bytes ...")
    allreduce = spawn(args, "allreduce", RANKS, 1, ["--sizes", ",".join(map(str, sizes))])
    resnet = None
    if args.resnet_batch:
        log(f"resnet_v2_50 phases at batch {args.resnet_batch}, {args.resnet_image_size}x{args.resnet_image_size} ...")
        resnet = spawn(args, "resnet", 1, 2,
                       ["--resnet-batch", str(args.resnet_batch), "--resnet-image-size", str(args.resnet_image_size),
                        "--resnet-steps", str(args.resnet_steps)])
    others = other_processes_share(before, cpu_seconds())
    return {"date": datetime.date.today().isoformat(), "machine": machine_info(), "command": args.command,
            "other_processes_cpu": others,
            "backend": args.backend, "batch_size": args.batch_size, "ranks": RANKS, "rounds": args.rounds,
            "steps": args.steps, "warmup": args.warmup, "phase_steps": args.phase_steps, "configs": CONFIGS,
            "models": models, "runs": runs, "allreduce": allreduce, "resnet": resnet,
            "resnet_node_batch": args.resnet_node_batch, "cost_model_only": args.cost_model}


def default_backend():
    return "numba" if importlib.util.find_spec("numba") is not None else "numpy"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--models", default=",".join(MODELS), help=f"comma list from {','.join(MODELS)}")
    p.add_argument("--rounds", type=int, default=5, help="times each configuration runs, taking turns (default 5)")
    p.add_argument("--steps", type=int, default=6, help="timed steps per run (default 6)")
    p.add_argument("--warmup", type=int, default=2, help="uncounted steps before them (default 2)")
    p.add_argument("--phase-steps", type=int, default=3, help="steps timed phase by phase (default 3)")
    p.add_argument("--batch-size", type=int, default=128, help=f"the GLOBAL batch (default 128; {RANKS} ranks "
                   f"get 1/{RANKS} each)")
    p.add_argument("--backend", choices=("numba", "numpy"), default=default_backend(),
                   help="default: numba when it is installed")
    p.add_argument("--resnet-batch", type=int, default=2, help="batch at which resnet_v2_50's phases are timed "
                   "(default 2; 0: no resnet row)")
    p.add_argument("--resnet-image-size", type=int, default=224)
    p.add_argument("--resnet-steps", type=int, default=2, help="timed resnet steps after one warm-up (default 2)")
    p.add_argument("--resnet-node-batch", type=int, default=32, help="the per-node batch of the cost model's "
                   "resnet row; its times are the measured ones x resnet-node-batch / resnet-batch")
    p.add_argument("--cost-model", action="store_true", help="only the cost model (one round)")
    p.add_argument("--worker-timeout", type=float, default=600.0)
    p.add_argument("--markdown", action="store_true", help="print the tables as markdown")
    p.add_argument("--json", metavar="PATH", help="also write the raw results as JSON")
    p.add_argument("--from-json", metavar="PATH", help="print the tables of a saved --json, measuring nothing")
    p.add_argument("--worker", choices=tuple(WORKERS), help=argparse.SUPPRESS)
    p.add_argument("--model", help=argparse.SUPPRESS)
    p.add_argument("--sizes", help=argparse.SUPPRESS)
    p.add_argument("--split", type=int, default=1, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.command = " ".join(["python bench/bench_data_parallel.py"] + (sys.argv[1:] if argv is None else argv))
    args.models = [s for s in args.models.split(",") if s]
    bad = [m for m in args.models if m not in MODELS]
    if bad or not args.models:
        p.error(f"--models: unknown or empty {bad or args.models}; choose from {','.join(MODELS)}")
    for name in ("rounds", "steps", "phase_steps", "batch_size", "resnet_image_size", "resnet_steps",
                 "resnet_node_batch"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    for name in ("warmup", "resnet_batch"):
        if getattr(args, name) < 0:
            p.error(f"--{name.replace('_', '-')} must be >= 0, got {getattr(args, name)}")
    if args.batch_size % RANKS:
        p.error(f"--batch-size must be a multiple of {RANKS} (the ranks split it), got {args.batch_size}")
    if args.cost_model:
        args.rounds = 1
    if args.sizes:
        args.sizes = [int(s) for s in args.sizes.split(",")]
    return args


def main(argv=None):
    args = parse_args(argv)
    if args.worker:
        try:
            result = WORKERS[args.worker](args)
        except Exception as e:                       # a failed configuration is a row, not a crash
            emit({"status": "error", "reason": f"{type(e).__name__}: {e}"})
            from tinybn.distributed import world as world_lib
            world_lib.world().abort(1)               # no rank waits for this one in a collective
        if result is not None:                       # rank 0 speaks for the job
            emit(result)
        return 0
    if args.from_json:
        with open(args.from_json) as f:
            report = json.load(f)
    else:
        report = run_all(args, log=lambda s: print(s, file=sys.stderr, flush=True))
    print(format_report(report, markdown=args.markdown))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
