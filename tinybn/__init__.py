"""tinybn: a readable deep learning engine in numpy, proven equal to TensorFlow op by op.

Floor: api (tests/test_layering.py): the package root re-exports core, backend, ops, nn and
optim, and imports nothing above them."""
import os as _os
import sys as _sys

# OpenBLAS reads this once, when numpy loads it, hence here, before numpy is imported.
# By default its idle threads busy-wait about 2**28 cycles (~0.1 s) after every GEMM,
# on the very cores the numba kernels that follow each GEMM need: a numba training
# step of the CIFAR models took 1.2-1.6x as long (2 cores, bench/bench_cifar.py).
# 4, OpenBLAS's minimum, puts idle threads to sleep at once. numpy-only steps: no change.
openblas_spin_limited = "numpy" not in _sys.modules or "OPENBLAS_THREAD_TIMEOUT" in _os.environ
_os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")

from .mapped_files import mapped_libraries as _mapped_libraries  # noqa: E402  (the standard library only)


# The same for the OpenMP runtime under numba's parallel kernels: libgomp reads
# OMP_WAIT_POLICY once, when it is loaded, and by default its idle threads spin. Whoever
# loads it first fixes the policy for the process, and that need not be numba: torch
# (which tensorboardX imports, and so every training run) brings its own libgomp, which
# numba's threading layer then shares. Spinning, the numba step of the bn model took
# 252 ms against 180 ms passive (2 cores, python -m tinybn.bench profile cifar).
omp_spin_limited = "OMP_WAIT_POLICY" in _os.environ or not _mapped_libraries("libgomp", "libiomp", "libomp")
_os.environ.setdefault("OMP_WAIT_POLICY", "passive")

from . import backend as _backend  # noqa: E402  (numpy loads here)
_backend.openblas_spin_limited = openblas_spin_limited   # the numba kernels' loader warns when False
_backend.omp_spin_limited = omp_spin_limited

from .tensor import Tensor, as_tensor, no_grad, grad_enabled  # noqa: F401,E402
from .backend import use_backend, current_backend  # noqa: F401,E402
from . import ops, nn, optim  # noqa: F401,E402

__version__ = "0.1.0"
