#!/usr/bin/env bash
# The GPU checks, in one go, for a machine with a CUDA GPU, CuPy and PyTorch (no network needed).
# Every part has its own time limit (seconds; override in the environment) and writes its log
# as it goes, so the whole script fits in one 10-minute command (the limits add up to 550 s)
# and a part that overruns loses only its own unfinished lines:
#   1. (T_INSTALL 60)  pip install -e . ; the device and the versions       -> device.txt
#   2. (T_TESTS 120)   tests/test_gpu.py: every CUDA kernel vs the numpy reference, ops end
#                      to end on CuPy arrays, the tutorial models' training steps GPU vs CPU
#                                                                            -> test_gpu.log
#   3. (T_CIFAR 120)   tinybn's cupy backend against PyTorch CUDA, eager and torch.compile
#                      (default mode), on this GPU: a training step and the forward pass of
#                      both CIFAR models at batch 128                       -> compare_cifar.txt
#   4. (T_RESNET 160)  the same for resnet_v2_50 at batch 32, 224x224: forward (inference) and
#                      forward-backward                                      -> compare_resnet.txt
#   5. (T_CLI 2x45)    python -m tinybn.train/eval cifar --backend cupy on tiny generated
#                      CIFAR-10 files                                        -> train_cli.log
# Parts 3 and 4 run OUTDIR/gpu_compare.py, written out below: the networks of
# bench/_peers.py and bench/_torch_resnet.py with tinybn's weights on device "cuda", every
# step ending in a device sync; 3 rounds in which the frameworks take turns in blocks of 5
# steps; the median of the per-round ratios (min-max) to PyTorch eager and to torch.compile.
# Eager first (its lines come out before torch.compile starts compiling), then all three.
#   6. (T_FAST 360)    --model fast (airbench94's recipe) on the cupy backend on the developers'
#                      data, which the device machine cannot reach: bench/gpu_carry.sh copies it
#                      into .gpu-carry/ here (the JPEG archive, make-cifar10, the tensorboardX
#                      wheel), and the run must carry that folder. Seeds 0, 1, 2, then each
#                      ablation (--without COMPONENT, seed 0), one after another until the limit:
#                      each trained with a checkpoint per epoch, its wall time from the command's
#                      start to its last checkpoint, its precision@1 with TTA level 2, and every
#                      epoch's at level 0 (the curve)                        -> fast_gpu.txt
#                      (A dry run of its loop on the CPU: FAST_BACKEND=numba FAST_FLAGS="--epochs 0.5
#                      --batch-size 32" FAST_DATA_FLAGS="--limit 100", 100 images a class.)
# Usage: bench/gpu_check.sh [OUTDIR] [PARTS]   (logs go to OUTDIR, default ./gpu-check; PARTS, a
# quoted list of some of: install tests compare cli fast; default all but fast, which takes a
# command of its own: bench/gpu_check.sh "$OUT/g" "install tests fast" with carry
# [".gpu-carry"], its limits 540 s in all)
set -uo pipefail
out=${1:-gpu-check}
parts=" ${2:-install tests compare cli} "
mkdir -p "$out"
want() { [[ "$parts" == *" $1 "* ]]; }
export PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=2
py=${PYTHON:-python3}
part() {   # part SECONDS LOG COMMAND...: run COMMAND under a time limit, its output into LOG
    local limit=$1 log=$2; shift 2
    echo "== $* (limit ${limit} s)" | tee -a "$log"
    timeout --kill-after=10 "$limit" "$@" 2>&1 | tee -a "$log"
    local rc=${PIPESTATUS[0]}
    [ "$rc" -eq 124 ] && echo "== TIMED OUT after ${limit} s" | tee -a "$log"
    return "$rc"
}
tests_rc=0
if want install; then
    if [ -d .gpu-carry/whl ]; then     # wheels the image lacks (tensorboardX, for the trainer)
        $py -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .gpu-carry/whl/*.whl
        export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
    fi
    part "${T_INSTALL:-60}" "$out/device.txt" $py -m pip install -q --no-deps --no-build-isolation -e .
    nvidia-smi -L 2>&1 | tee -a "$out/device.txt"
    $py -c "import cupy, torch; print('cupy', cupy.__version__, '| torch', torch.__version__, 'cuda', torch.version.cuda,
          '| device', torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'none')" 2>&1 |
        tee -a "$out/device.txt"
fi

if want tests; then
    part "${T_TESTS:-120}" "$out/test_gpu.log" $py -m pytest tests/test_gpu.py -q -p no:cacheprovider -rs
    tests_rc=$?
fi

compare="$out/gpu_compare.py"
cat > "$compare" <<'PY'
"""tinybn's cupy backend against PyTorch CUDA (eager, torch.compile) on one GPU; see bench/gpu_check.sh."""
import os
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.getcwd(), "bench"))
ROUNDS, BLOCKS, BLOCK, WARMUP = 3, 2, 5, 3


def cifar_frameworks(model, compiled):
    """{framework: {kind: step}} for one CIFAR model at batch 128 (kinds train, fwd)."""
    import cupy
    import _peers
    import bench_cifar
    import tinybn
    rng = np.random.default_rng(1234)
    x = rng.standard_normal((128, 24, 24, 3), dtype=np.float32)
    labels = rng.integers(0, 10, 128).astype(np.int32)
    net, params, buffers = bench_cifar.initial_state(model)
    tinybn.use_backend("cupy")
    ours = bench_cifar.tinybn_adapter(model, net.to_backend("cupy"), cupy.asarray(x), cupy.asarray(labels))
    made = {"tinybn-cupy": ours, "torch": _peers.torch_adapter(model, params, buffers, x, labels, device="cuda")}
    if compiled:
        made["torch-compile"] = _peers.torch_adapter(model, params, buffers, x, labels, compile=True, device="cuda")
    return {fw: dict(zip(("train", "fwd"), steps)) for fw, steps in made.items()}


def resnet_frameworks(model_name, compiled):
    """{framework: {kind: step}} for resnet_v2_50 at batch 32, 224x224 (kinds fb, fwd)."""
    import tinybn
    from _torch_resnet import torch_steps
    from tinybn.models.resnet_v2 import resnet_v2, slim_names
    from tinybn.tasks.resnet import make_inputs, resnet_steps
    images, labels = make_inputs(32, 224, 1000)
    model = resnet_v2(50, 1000, rng=np.random.default_rng(0))
    names = slim_names(model)
    variables = {names[k]: np.array(t.data) for k, t in list(model.named_parameters()) + list(model.named_buffers())}
    tinybn.use_backend("cupy")
    made = {"tinybn-cupy": resnet_steps(model.to_backend("cupy"), images, labels)[::-1],
            "torch": torch_steps(50, variables, images, labels, device="cuda")[::-1]}
    if compiled:
        made["torch-compile"] = torch_steps(50, variables, images, labels, compile=True, device="cuda")[::-1]
    return {fw: dict(zip(("fb", "fwd"), steps)) for fw, steps in made.items()}


def sync():
    import cupy
    import torch
    cupy.cuda.Device().synchronize()
    torch.cuda.synchronize()


def timed(step):
    t = time.perf_counter()
    value = step()
    sync()
    return time.perf_counter() - t, value


def measure(frameworks):
    """First calls, warm-up, then ROUNDS rounds of BLOCKS blocks of BLOCK steps per kind, in turns."""
    kinds = list(next(iter(frameworks.values())))
    first = {fw: {k: timed(steps[k]) for k in kinds} for fw, steps in frameworks.items()}
    for steps in frameworks.values():
        for k in kinds:
            for _ in range(WARMUP):
                timed(steps[k])
    names, turn = list(frameworks), 0
    times = {fw: {k: [[] for _ in range(ROUNDS)] for k in kinds} for fw in names}
    for r in range(ROUNDS):
        for k in kinds:
            for _ in range(BLOCKS):
                for fw in names[turn % len(names):] + names[:turn % len(names)]:
                    times[fw][k][r] += [timed(frameworks[fw][k])[0] for _ in range(BLOCK)]
                turn += 1
    return first, times


def report(title, first, times):
    print(f"\n{title}: ms per step, median of {ROUNDS} round means; × = median of the per-round ratios (min-max)")
    kinds = list(next(iter(times.values())))
    means = {fw: {k: [statistics.fmean(ts) for ts in times[fw][k]] for k in kinds} for fw in times}
    for k in kinds:
        for fw in times:
            cells = [f"{fw:14s} {k:5s} {1000 * statistics.median(means[fw][k]):9.2f} ms"]
            for ref in ("torch", "torch-compile"):
                if ref in means and ref != fw:
                    rs = [a / b for a, b in zip(means[fw][k], means[ref][k])]
                    cells.append(f"×{ref} {statistics.median(rs):.2f} ({min(rs):.2f}-{max(rs):.2f})")
            cells.append(f"first call {first[fw][k][0]:.2f} s")
            print("  ".join(cells), flush=True)
    losses = {fw: first[fw][kinds[0]][1] for fw in first}
    ref = losses["tinybn-cupy"]
    for fw, loss in losses.items():
        if not np.isclose(loss, ref, rtol=1e-3):
            print(f"WARNING: first-step loss {loss:.6f} ({fw}) != {ref:.6f} (tinybn-cupy): the networks differ")


def main(which):
    build = cifar_frameworks if which == "cifar" else resnet_frameworks
    for model in (("tutorial", "bn") if which == "cifar" else ("resnet_v2_50",)):
        report(f"{model}, eager", *measure(build(model, compiled=False)))
    for model in (("tutorial", "bn") if which == "cifar" else ("resnet_v2_50",)):
        try:
            frameworks = build(model, compiled=True)
            report(f"{model}, with torch.compile", *measure(frameworks))
        except Exception as e:                       # no triton, a compiler error: say so, go on
            print(f"{model}: torch.compile failed: {type(e).__name__}: {str(e)[:300]}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
PY
if want compare; then
    part "${T_CIFAR:-120}" "$out/compare_cifar.txt" $py "$compare" cifar
    part "${T_RESNET:-160}" "$out/compare_resnet.txt" $py "$compare" resnet
fi

if want cli; then
data=$(mktemp -d)
$py - "$data" <<'PY'
import sys, numpy as np, os
d = os.path.join(sys.argv[1], "cifar-10-batches-bin"); os.makedirs(d)
rng = np.random.default_rng(0)
for name, n in [(f"data_batch_{i}.bin", 64) for i in range(1, 6)] + [("test_batch.bin", 50)]:
    rec = rng.integers(0, 256, (n, 3073), dtype=np.uint8); rec[:, 0] = rng.integers(0, 10, n)
    rec.tofile(os.path.join(d, name))
PY
part "${T_CLI:-45}" "$out/train_cli.log" $py -m tinybn.train cifar --backend cupy --data-dir "$data" \
    --train-dir "$data/run" --batch-size 32 --max-steps 20 --log-every 5 --no-download
part "${T_CLI:-45}" "$out/train_cli.log" $py -m tinybn.eval cifar --backend cupy --data-dir "$data" \
    --train-dir "$data/run" --eval-dir "$data/ev" --no-download
fi

fast_runs() {   # fast_runs LOG: the seeds, then the ablations, each trained and evaluated on the cupy backend
    local log=$1 data=/tmp/cifar10-dev runs=/tmp/fast-runs
    $py .gpu-carry/tools/make-cifar10 "$data" ${FAST_DATA_FLAGS:-} > /dev/null 2>&1 ||
        { echo "make-cifar10 failed" >> "$log"; return 1; }
    local D="--data-dir $data --no-download --backend ${FAST_BACKEND:-cupy}"
    local specs=("--seed 0" "--seed 1" "--seed 2")
    for c in whitening identity-init gelu frozen-bn-scale logit-scale label-smoothing bn-bias-lr nesterov \
             lookahead alternating-flip translate; do specs+=("--seed 0 --without $c"); done
    for spec in "${specs[@]}"; do
        local name=${spec//--/}; name=${name// /_}
        local start=$(date +%s.%N)
        $py -m tinybn.train cifar --model fast $spec ${FAST_FLAGS:-} $D --train-dir "$runs/$name" --checkpoint-every-epoch \
            > "$runs.$name.train.log" 2>&1 || { echo "$spec: training failed: $(tail -1 "$runs.$name.train.log")" >> "$log"; continue; }
        local seconds tta2 curve
        seconds=$($py -c "import time; print(round(time.time() - $start, 1))")
        tta2=$($py -m tinybn.eval cifar --model fast $D --train-dir "$runs/$name" --eval-dir "$runs/$name-eval" 2>&1 | tail -1)
        curve=$($py -m tinybn.eval cifar --model fast --tta-level 0 --every-checkpoint $D --train-dir "$runs/$name" \
            --eval-dir "$runs/$name-curve" 2>&1 | grep -o "^step [0-9]*: [0-9.]* s after the start: precision @ 1 = [0-9.]*" |
            sed 's/ s after the start: precision @ 1 = / s /; s/^step //' | tr '\n' ';')
        echo "$spec | the command: $seconds s | ${tta2#*: } | $curve" >> "$log"
    done
}
if want fast; then
    if [ ! -d .gpu-carry/data ]; then
        echo "fast: no .gpu-carry/ here: run bench/gpu_carry.sh on the developers' machine, and carry .gpu-carry" |
            tee -a "$out/fast_gpu.txt"
    else
        echo "flags | training command's wall time | precision@1, TTA 2 | curve, TTA 0 (step: seconds from the start, precision;)" \
            >> "$out/fast_gpu.txt"
        export -f fast_runs; export py
        part "${T_FAST:-360}" "$out/fast_gpu.log" bash -c "fast_runs $out/fast_gpu.txt"
    fi
fi
exit $tests_rc
