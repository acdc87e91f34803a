#!/usr/bin/env bash
# The GPU checks, in one go, for a machine with a CUDA GPU and CuPy (no network needed):
#   1. tests/test_gpu.py: every CUDA kernel vs the numpy reference, ops end to end on
#      CuPy arrays, training steps of the tutorial models on the GPU vs the CPU;
#   2. python -m tinybn.train cifar --backend cupy on tiny generated CIFAR-10 files,
#      then python -m tinybn.eval cifar --backend cupy;
#   3. the time of one training step of each CIFAR model at batch 128 on the GPU.
# Usage: bench/gpu_check.sh [OUTDIR]   (logs go to OUTDIR, default ./gpu-check)
set -uo pipefail
out=${1:-gpu-check}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
py=${PYTHON:-python3}
$py -m pip install -q --no-deps --no-build-isolation -e . 2>&1 | tail -2
nvidia-smi -L 2>&1 | tee "$out/device.txt"
$py -c "import cupy; print('cupy', cupy.__version__)" | tee -a "$out/device.txt"
$py -m pytest tests/test_gpu.py -q -p no:cacheprovider -rs 2>&1 | tee "$out/test_gpu.log"
tests_rc=${PIPESTATUS[0]}
data=$(mktemp -d)
$py - "$data" <<'PY'
import sys, numpy as np, os
d = os.path.join(sys.argv[1], "cifar-10-batches-bin"); os.makedirs(d)
rng = np.random.default_rng(0)
for name, n in [(f"data_batch_{i}.bin", 64) for i in range(1, 6)] + [("test_batch.bin", 50)]:
    rec = rng.integers(0, 256, (n, 3073), dtype=np.uint8); rec[:, 0] = rng.integers(0, 10, n)
    rec.tofile(os.path.join(d, name))
PY
$py -m tinybn.train cifar --backend cupy --data-dir "$data" --train-dir "$data/run" --batch-size 32 \
    --max-steps 20 --log-every 5 --no-download 2>&1 | tee "$out/train_cli.log"
$py -m tinybn.eval cifar --backend cupy --data-dir "$data" --train-dir "$data/run" --eval-dir "$data/ev" \
    --no-download 2>&1 | tee -a "$out/train_cli.log"
$py - <<'PY' 2>&1 | tee "$out/step_time.txt"
import time, numpy as np, cupy
import tinybn
from tinybn import Tensor
from tinybn.models import cifar10
from tinybn.tasks.cifar import make_optimizer
tinybn.use_backend("cupy")
rng = np.random.default_rng(0)
x = cupy.asarray(rng.standard_normal((128, 24, 24, 3)).astype(np.float32))
y = cupy.asarray(rng.integers(0, 10, 128).astype(np.int32))
for name in ("tutorial", "bn"):
    model = cifar10.MODELS[name](rng=np.random.default_rng(0)).to_backend("cupy")
    opt = make_optimizer(name, list(model.named_parameters()), 128)
    def step():
        loss = model.loss(model(Tensor(x)), y); model.zero_grad(); loss.backward(); opt.step()
        return loss
    for _ in range(3): step()
    cupy.cuda.Device().synchronize()
    t = time.perf_counter(); n = 20
    for _ in range(n): loss = step()
    cupy.cuda.Device().synchronize()
    print(f"{name}: {(time.perf_counter() - t) / n * 1000:.1f} ms per training step at batch 128 on the GPU "
          f"(loss {float(loss.item()):.4f})")
PY
exit $tests_rc
