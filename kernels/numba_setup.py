"""Process-wide numba settings, imported first by every numba kernel module.

OMP_WAIT_POLICY=passive (unless the user chose otherwise): numba's default
OpenMP threading layer keeps its worker threads spinning after each parallel
loop, and a training step interleaves many short kernels with BLAS calls whose
own threads then compete with the spinners. Measured on 2 busy cores, a small
CIFAR-style model at batch 8: 60 steps took 19 s spinning, 3.3 s passive (the
numpy backend 3.2 s). libgomp reads the variable when numba first loads it, at
the first parallel kernel call, so setting it at import is early enough.

OpenBLAS's own spinning threads are the same problem from the other side, but
OpenBLAS reads OPENBLAS_THREAD_TIMEOUT only when numpy loads it: tinybn/__init__.py
sets it. If numpy was imported before tinybn (and the variable was not set), it is
too late, and this warns once.
"""
import os
import warnings

import tinybn

os.environ.setdefault("OMP_WAIT_POLICY", "passive")
if not tinybn.openblas_spin_limited:
    warnings.warn("numpy was imported before tinybn without OPENBLAS_THREAD_TIMEOUT set, so OpenBLAS's "
                  "idle threads busy-wait after each GEMM on the cores the numba kernels need (measured: "
                  "training steps 1.2-1.6x slower on 2 cores). Import tinybn first, or set "
                  "OPENBLAS_THREAD_TIMEOUT=4 in the environment.", RuntimeWarning, stacklevel=2)
