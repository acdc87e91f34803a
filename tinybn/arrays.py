"""Which array library holds an array: numpy (host) or cupy (device).

Floor: core, the lowest; imports numpy only (cupy when it is handed a cupy array, never
at import). The core (tensor, function, state) needs to know an array's library without
knowing how the backends compute, so these three questions live here, below backend.py,
which builds its dispatch on them.

    on_device(x)      whether x is a cupy array (by its type's module: no cupy import)
    array_module(x)   the module to compute on x with: cupy for cupy arrays, else numpy
    to_numpy(x)       a host numpy array of x
"""
import numpy as np


def on_device(x):
    """Whether x is a GPU (cupy) array."""
    return type(x).__module__.startswith("cupy")


def array_module(x):
    """numpy or cupy, whichever owns array `x` (numpy for anything else)."""
    if on_device(x):
        import cupy
        return cupy
    return np


def to_numpy(x):
    """A host numpy array of `x`, whatever array library holds it."""
    if on_device(x):
        return x.get()
    return np.asarray(x)
