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
sets it, and tinybn.backend warns, when it loads these kernels, if numpy came first.
"""
import os

os.environ.setdefault("OMP_WAIT_POLICY", "passive")
