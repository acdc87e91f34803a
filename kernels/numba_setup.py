"""Process-wide settings of the numba backend, imported first by every numba kernel module.

OMP_WAIT_POLICY=passive (unless the user chose otherwise; tinybn/__init__.py sets
it): numba's default OpenMP threading layer keeps its worker threads spinning after
each parallel loop, and a training step interleaves many short kernels with BLAS calls whose
own threads then compete with the spinners. Measured on 2 busy cores, a small
CIFAR-style model at batch 8: 60 steps took 19 s spinning, 3.3 s passive (the
numpy backend 3.2 s). libgomp reads the variable once, when it is loaded: by
numba at its first parallel kernel call, or earlier by another library (torch
brings its own libgomp, which numba then shares), so tinybn/__init__.py sets it
on import, and tinybn.backend warns, when it loads these kernels, if a libgomp
came first.

OpenBLAS's own spinning threads are the same problem from the other side, but
OpenBLAS reads OPENBLAS_THREAD_TIMEOUT only when numpy loads it: tinybn/__init__.py
sets it, and tinybn.backend warns, when it loads these kernels, if numpy came first.

Freed arrays stay in the heap (glibc only, unless MALLOC_MMAP_THRESHOLD_ or
MALLOC_TRIM_THRESHOLD_ is set, which glibc itself then reads): glibc serves every
allocation above its mmap threshold (at most 32 MB, however it adapts) with fresh pages
from mmap and gives them back on free, so each step of a large model faults in its big
activations page by page again. M_MMAP_THRESHOLD and M_TRIM_THRESHOLD at 1 GiB keep
them in the heap for the next step, as TF's and PyTorch's caching allocators do for their
own tensors. Measured on resnet_v2_50 at batch 32, 224x224: the forward step's 23k page
faults and 0.8-1.1 s of system time fell to 0.03 s (its user time unchanged, peak RSS
734 -> 668 MB); forward-backward 1.05-1.19 s -> 0.10-0.28 s of system time. HEAP_POLICY
says which way it went in this process.
"""
import ctypes
import os

HEAP_THRESHOLD = 1 << 30
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3        # glibc's <malloc.h>


def _keep_freed_arrays_in_the_heap():
    """Raise glibc's mmap and trim thresholds to HEAP_THRESHOLD; a word on what was done."""
    if "MALLOC_MMAP_THRESHOLD_" in os.environ or "MALLOC_TRIM_THRESHOLD_" in os.environ:
        return "left to the MALLOC_*_THRESHOLD_ variables"
    try:
        libc = os.confstr("CS_GNU_LIBC_VERSION") or ""
    except (AttributeError, ValueError, OSError):
        libc = ""
    if not libc.startswith("glibc"):
        return "not glibc: the allocator's own"
    mallopt = ctypes.CDLL(None).mallopt
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    if mallopt(_M_MMAP_THRESHOLD, HEAP_THRESHOLD) and mallopt(_M_TRIM_THRESHOLD, HEAP_THRESHOLD):
        return f"mmap and trim thresholds {HEAP_THRESHOLD >> 20} MiB"
    return f"{libc} refused the thresholds: its own"


HEAP_POLICY = _keep_freed_arrays_in_the_heap()
