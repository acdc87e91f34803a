"""The dtypes the compiled kernels take, checked once per call where the kernels are registered.

The numba kernels and the CUDA kernels exist for float32 and float64 only: numba has no
float16 arithmetic (a float16 array got as far as numba's type inference and failed
there, 39 frames deep), and each .cu kernel is instantiated for float and double. The
numpy reference computes in any float dtype. So numba_cpu.py and cupy_gpu.py register
every twin wrapped by `float32_or_float64`: before the kernel runs, each floating-point
array argument must be float32 or float64, else a one-line TypeError names the op the
user called, the dtype, and the way out. The check reads only .dtype of the arguments
(a few attribute reads per call), never the data.
Imports numpy and the backend's registry (its OPS: the op names a primitive serves).
"""
import functools

import numpy as np

from tinybn.backend import OPS

SUPPORTED = (np.dtype(np.float32), np.dtype(np.float64))

def unsupported_dtype(args):
    """The first float or complex dtype among the array arguments that is not float32/float64, or None."""
    for a in args:
        dtype = getattr(a, "dtype", None)
        if dtype is not None and dtype.kind in "fc" and dtype not in SUPPORTED:
            return dtype
    return None


def float32_or_float64(name, backend, twin):
    """`twin` (backend's kernel for primitive `name`), refusing other float dtypes with a TypeError."""
    op = OPS[name]

    @functools.wraps(twin)
    def checked(*args, **kwargs):
        dtype = unsupported_dtype(args)
        if dtype is not None:
            raise TypeError(f"{op}: the {backend} backend computes in float32 or float64, got {dtype} "
                            f"(its {name} kernel is compiled for those two only); cast with "
                            f".astype(np.float32), or use the numpy backend")
        return twin(*args, **kwargs)
    return checked
