"""The one place that knows which array library computes what.

tinybn has three backends:

    numpy   the reference: every op's math, readable, the definition of "correct"
    numba   CPU kernels (tinybn.kernels) for the hot primitives, same signatures
    cupy    GPU arrays; hot primitives as CUDA kernels loaded by CuPy

Op code never branches on the backend. It asks for the array module of its
inputs (`array_module(x)`) for plain array math, and calls `dispatch(name, ...)`
for a hot primitive (im2col, pooling windows, fused BN, LRN, softmax
cross-entropy). The reference implementation of each primitive registers itself
under the backend "numpy" with `@primitive(name)`; a kernel module registers a
faster twin with `@primitive(name, backend="numba")`. `dispatch` picks the
current backend's twin when one exists, else the reference.

The backend is chosen by `use_backend(name)`; until then, the first op (or
`current_backend()`) takes it from the TINYBN_BACKEND environment variable
(default "numpy"). The variable is read there, not at import, so a bad value
(an unknown name, a backend whose library is missing) cannot break
`import tinybn`: it is reported, in one line, by whatever uses it, and an explicit
`use_backend` (the CLIs' --backend) never reads it.
"""
import os
from contextlib import contextmanager

import numpy as np

BACKENDS = ("numpy", "numba", "cupy")
_registry = {}          # primitive name -> {backend name -> function}
_current = [None]       # one-element list: the current backend's name (None: not chosen yet)
_loaded = set()         # backends whose kernel modules were imported


def primitive(name, backend="numpy"):
    """Decorator: register `fn` as `backend`'s implementation of primitive `name`."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; expected one of {BACKENDS}")

    def register(fn):
        _registry.setdefault(name, {})[backend] = fn
        return fn
    return register


def dispatch(name, *args, **kwargs):
    """Call the current backend's implementation of primitive `name`."""
    impls = _registry.get(name)
    if impls is None:
        raise KeyError(f"no primitive named {name!r} is registered")
    fn = impls.get(current_backend()) or impls["numpy"]
    return fn(*args, **kwargs)


def implementation(name, backend=None):
    """The function `dispatch(name, ...)` would call under `backend` (for tests)."""
    impls = _registry[name]
    return impls.get(backend or current_backend()) or impls["numpy"]


def use_backend(name):
    """Select the backend for all later op calls; loads its kernels on first use."""
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; expected one of {BACKENDS}")
    if name != "numpy" and name not in _loaded:
        _load_kernels(name)
    _current[0] = name


def current_backend():
    """The current backend's name; the first call without a use_backend() reads TINYBN_BACKEND."""
    if _current[0] is None:
        name = environment_backend()
        try:
            use_backend(name)
        except ImportError as e:
            raise ImportError(f"TINYBN_BACKEND={name!r}: {e}") from e
    return _current[0]


def environment_backend():
    """The backend TINYBN_BACKEND names ("numpy" when unset or empty); ValueError for any other name."""
    name = os.environ.get("TINYBN_BACKEND", "") or "numpy"
    if name not in BACKENDS:
        raise ValueError(f"TINYBN_BACKEND={name!r} is not a backend; expected one of {', '.join(BACKENDS)} "
                         "(names are lower case)")
    return name


@contextmanager
def backend(name):
    """`with tinybn.backend.backend("numba"): ...` runs a block under another backend."""
    previous = _current[0]
    use_backend(name)
    try:
        yield
    finally:
        _current[0] = previous


def _load_kernels(name):
    import importlib
    module = {"numba": "tinybn.kernels.numba_cpu", "cupy": "tinybn.kernels.cupy_gpu"}[name]
    try:
        importlib.import_module(module)
    except Exception as e:   # ImportError, or the library's own error (a GPU library without a GPU)
        raise ImportError(
            f"backend {name!r} needs {module} and its dependencies "
            f"(pip install 'tinybn[{'numba' if name == 'numba' else 'gpu'}]'): {e}") from e
    _loaded.add(name)


def array_module(x):
    """numpy or cupy, whichever owns array `x` (numpy for anything else)."""
    mod = type(x).__module__
    if mod.startswith("cupy"):
        import cupy
        return cupy
    return np


def device_array(x, name=None):
    """`x` as an array of backend `name`'s device (default: the current backend):
    a cupy array for "cupy", a numpy array for "numpy" and "numba"."""
    if (name or current_backend()) == "cupy":
        import cupy
        return cupy.asarray(x)
    return to_numpy(x)


def to_numpy(x):
    """A host numpy array of `x`, whatever array library holds it."""
    if type(x).__module__.startswith("cupy"):
        return x.get()
    return np.asarray(x)

