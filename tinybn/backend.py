"""The one place that knows which array library computes what.

tinybn has three backends:

    numpy   the reference: every op's math, readable, the definition of "correct"
    numba   CPU kernels (tinybn.kernels) for the hot primitives, same signatures
    cupy    GPU arrays; hot primitives as CUDA kernels loaded by CuPy

Op code never branches on the backend. It asks for the array module of its
inputs (`array_module(x)`) for plain array math, and calls `dispatch(name, ...)`
for a hot primitive (im2col, pooling windows, fused BN, LRN, softmax
cross-entropy, the conv's batch chunking). The reference implementation of each
primitive registers itself under the backend "numpy" with `@primitive(name)`; a
kernel module registers a faster twin with `@primitive(name, backend="numba")`.

`dispatch` chooses by the arrays it is given:
    cupy (device) arrays   the CUDA twins, always (loaded on the first such call)
    numpy (host) arrays    the numba twins when the numba backend is selected, else the
                           reference; under the cupy backend a TypeError naming the
                           primitive and its op (the GEMMs around it would run on the
                           host: move the tensors to the GPU, Module.to_backend("cupy"))

The backend is chosen by `use_backend(name)`; until then, the first op (or
`current_backend()`) takes it from the TINYBN_BACKEND environment variable
(default "numpy"). The variable is read there, not at import, so a bad value
(an unknown name, a backend whose library is missing) cannot break
`import tinybn`: it is reported, in one line, by whatever uses it, and an explicit
`use_backend` (the CLIs' --backend) never reads it.

"auto" (the command lines' default, and a value of --backend and TINYBN_BACKEND) is the
fastest backend this machine can run, decided when it is selected (`use_auto_backend`):
cupy when CuPy is installed and sees a CUDA GPU, else numba when it is installed, else
numpy. A backend whose library is there but whose kernels fail to load is passed over,
with a one-line warning that says why. The probes look for the libraries without
importing numba; CuPy is imported only when it is installed.

Kernels load on first use, never at `import tinybn` (which imports neither numba nor
cupy). They live in the top-level kernels/ folder, installed as tinybn.kernels
(setup.cfg's package_dir). From a bare source checkout (PYTHONPATH=.) that name is not
installed: `kernels_package()` then loads the checkout's kernels/ as tinybn.kernels
with importlib (a package whose search location is that folder; no import hook stays
installed). Kernel modules import numpy, numba or cupy, tinybn.geometry and this
module's registry, nothing else of tinybn.

Imports tinybn.arrays (which library holds an array) and the standard library; kernel
modules are imported by name, on use.
"""
import importlib
import importlib.util
import os
import sys
import warnings
from contextlib import contextmanager

from .arrays import array_module, on_device, to_numpy  # noqa: F401  (the ops import array_module from here)

BACKENDS = ("numpy", "numba", "cupy")
AUTO = "auto"
CHOICES = BACKENDS + (AUTO,)   # what use_backend, --backend and TINYBN_BACKEND accept
_registry = {}          # primitive name -> {backend name -> function}
_current = [None]       # one-element list: the current backend's name (None: not chosen yet)
_loaded = set()         # backends whose kernel modules were imported
KERNEL_MODULES = {"numba": "tinybn.kernels.numba_cpu", "cupy": "tinybn.kernels.cupy_gpu"}

# Set by tinybn/__init__.py, which alone sees whether numpy (and OpenBLAS) loaded before
# OPENBLAS_THREAD_TIMEOUT was set; the numba kernels' loader warns when it was not.
openblas_spin_limited = True
# Likewise whether an OpenMP runtime (libgomp) was loaded before OMP_WAIT_POLICY was set.
omp_spin_limited = True

# primitive -> the tinybn.ops functions that reach it, as the user knows them
OPS = {
    "im2col": "conv2d / depthwise_conv2d / separable_conv2d",
    "col2im": "conv2d / depthwise_conv2d / separable_conv2d (backward)",
    "conv_batch_chunks": "conv2d / separable_conv2d",
    "conv2d_forward": "conv2d (and its input gradient at stride 1)",
    "conv2d_backprop_filter": "conv2d (filter gradient)",
    "max_pool_forward": "max_pool2d", "max_pool_values": "max_pool2d", "max_pool_backward": "max_pool2d (backward)",
    "avg_pool_forward": "avg_pool2d", "avg_pool_backward": "avg_pool2d (backward)",
    "batch_norm_train_forward": "fused_batch_norm", "batch_norm_train_backward": "fused_batch_norm (backward)",
    "batch_norm_inference": "fused_batch_norm (inference)",
    "lrn_forward": "local_response_normalization", "lrn_backward": "local_response_normalization (backward)",
    "softmax_cross_entropy": "softmax_cross_entropy_with_logits / sparse_softmax_cross_entropy_with_logits",
    "bias_add": "bias_add", "bias_add_grad": "bias_add (backward)",
    "relu": "relu", "relu_grad": "relu (backward)",
    "gelu": "gelu", "gelu_grad": "gelu (backward)",
}


def primitive(name, backend="numpy"):
    """Decorator: register `fn` as `backend`'s implementation of primitive `name`."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; expected one of {BACKENDS}")

    def register(fn):
        _registry.setdefault(name, {})[backend] = fn
        return fn
    return register


def dispatch(name, *args, **kwargs):
    """Call primitive `name`'s implementation for these arrays (see the module docstring)."""
    impls = _registry.get(name)
    if impls is None:
        raise KeyError(f"no primitive named {name!r} is registered")
    if any(on_device(a) for a in args):
        if "cupy" not in _loaded:
            _load_kernels("cupy")
        return (impls.get("cupy") or impls["numpy"])(*args, **kwargs)
    chosen = current_backend()
    if chosen == "cupy":
        raise TypeError(f"{OPS.get(name, name)}: the cupy backend got host (numpy) arrays for its {name} "
                        f"kernel; move the tensors to the GPU first (Module.to_backend('cupy'), "
                        f"tinybn.backend.device_array) or use the numpy or numba backend")
    return (impls.get(chosen) or impls["numpy"])(*args, **kwargs)


def implementation(name, backend=None):
    """The function `dispatch(name, ...)` would call under `backend` for its arrays (for tests)."""
    impls = _registry[name]
    return impls.get(backend or current_backend()) or impls["numpy"]


def use_backend(name):
    """Select the backend for all later op calls; loads its kernels on first use. "auto" selects
    use_auto_backend()'s choice, warning (RuntimeWarning) of any backend it passed over."""
    if name == AUTO:
        _, _, passed_over = use_auto_backend()
        for problem in passed_over:
            warnings.warn(problem, RuntimeWarning, stacklevel=2)
        return
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; expected one of {CHOICES}")
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


def environment_backend(default="numpy"):
    """The backend TINYBN_BACKEND names (`default` when unset or empty; "auto" is a name too);
    ValueError for any other value."""
    name = os.environ.get("TINYBN_BACKEND", "") or default
    if name not in CHOICES:
        raise ValueError(f"TINYBN_BACKEND={name!r} is not a backend; expected one of {', '.join(CHOICES)} "
                         "(names are lower case)")
    return name


def cuda_gpu_probe():
    """(True, what was found) when CuPy is installed and sees a CUDA GPU, else (False, why not)."""
    if importlib.util.find_spec("cupy") is None:
        gpus = "/proc/driver/nvidia/gpus"       # the NVIDIA driver's list, readable without CuPy
        if os.path.isdir(gpus) and os.listdir(gpus):
            return False, "a CUDA GPU but no CuPy (pip install -e '.[gpu]')"
        return False, "no CUDA GPU"
    try:
        import cupy
        count = cupy.cuda.runtime.getDeviceCount()
        name = cupy.cuda.runtime.getDeviceProperties(0)["name"] if count else b""
    except Exception as e:      # CuPy's own errors: no driver, no device, a CUDA mismatch
        return False, f"CuPy sees no CUDA GPU ({_first_line(e)})"
    if not count:
        return False, "CuPy sees no CUDA GPU"
    name = name.decode(errors="replace") if isinstance(name, bytes) else str(name)
    return True, f"CUDA GPU {name}, CuPy {cupy.__version__}"


def numba_probe():
    """(True, "numba <version> installed") when numba can be imported, else (False, why not);
    looks for it without importing it."""
    if importlib.util.find_spec("numba") is None:
        return False, "numba not installed"
    from importlib import metadata      # here, not at import: `import tinybn` stays light
    try:
        return True, f"numba {metadata.version('numba')} installed"
    except metadata.PackageNotFoundError:     # importable without an installed distribution
        return True, "numba installed"


def use_auto_backend():
    """Select the fastest backend that loads here: cupy (cuda_gpu_probe), else numba (numba_probe),
    else numpy. Returns (name, why, passed_over): why says what the probes found, e.g. "no CUDA
    GPU; numba 0.60.0 installed"; passed_over holds a one-line reason for each backend whose
    library was found but whose kernels failed to load (the choice then falls to the next)."""
    found, passed_over = [], []
    for name, probe in (("cupy", cuda_gpu_probe), ("numba", numba_probe)):
        present, what = probe()
        if present:
            try:
                use_backend(name)
                return name, "; ".join(found + [what]), passed_over
            except ImportError as e:
                passed_over.append(f"backend auto passes over {name}: {what}, but its kernels failed to "
                                   f"load: {_first_line(e)}")
                what = f"{name} kernels failed to load"
        found.append(what)
    use_backend("numpy")
    return "numpy", "; ".join(found), passed_over


def _first_line(error):
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


@contextmanager
def backend(name):
    """`with tinybn.backend.backend("numba"): ...` runs a block under another backend."""
    with restored_backend():
        use_backend(name)
        yield


@contextmanager
def restored_backend():
    """On leaving the block, the backend selected on entering it is selected again (or none, and the
    next op reads TINYBN_BACKEND): a command run in-process leaves the process's backend as it was."""
    previous = _current[0]
    try:
        yield
    finally:
        _current[0] = previous


def kernels_package():
    """The tinybn.kernels package: installed, or else a source checkout's kernels/ folder."""
    try:
        return importlib.import_module("tinybn.kernels")
    except ModuleNotFoundError as e:
        if e.name != "tinybn.kernels":
            raise
        folder = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "kernels")
        if not os.path.isfile(os.path.join(folder, "__init__.py")):
            raise
    # A checkout (PYTHONPATH=.): kernels/ sits beside tinybn/, mapped to tinybn.kernels only
    # by an install. Load it under that name, with the folder as its submodules' search path.
    spec = importlib.util.spec_from_file_location("tinybn.kernels", os.path.join(folder, "__init__.py"),
                                                  submodule_search_locations=[folder])
    package = importlib.util.module_from_spec(spec)
    sys.modules["tinybn.kernels"] = package
    try:
        spec.loader.exec_module(package)
    except BaseException:
        del sys.modules["tinybn.kernels"]
        raise
    setattr(sys.modules["tinybn"], "kernels", package)
    return package


def _load_kernels(name):
    module = KERNEL_MODULES[name]
    try:
        kernels_package()
        importlib.import_module(module)
    except Exception as e:   # ImportError, or the library's own error (a GPU library without a GPU)
        raise ImportError(
            f"backend {name!r} needs {module} and its dependencies "
            f"(pip install 'tinybn[{'numba' if name == 'numba' else 'gpu'}]'): {e}") from e
    _loaded.add(name)
    if name == "numba" and not openblas_spin_limited:
        warnings.warn("numpy was imported before tinybn without OPENBLAS_THREAD_TIMEOUT set, so OpenBLAS's "
                      "idle threads busy-wait after each GEMM on the cores the numba kernels need (measured: "
                      "training steps 1.2-1.6x slower on 2 cores). Import tinybn first, or set "
                      "OPENBLAS_THREAD_TIMEOUT=4 in the environment.", RuntimeWarning, stacklevel=3)
    if name == "numba" and not omp_spin_limited:
        warnings.warn("an OpenMP runtime (libgomp, which torch brings) was loaded before tinybn without "
                      "OMP_WAIT_POLICY set, so the idle threads of numba's parallel kernels spin on the cores "
                      "BLAS needs (measured: the bn model's training step 1.4x slower on 2 cores). Import tinybn "
                      "first, or set OMP_WAIT_POLICY=passive in the environment.", RuntimeWarning, stacklevel=3)


def device_array(x, name=None):
    """`x` as an array of backend `name`'s device (default: the current backend):
    a cupy array for "cupy", a numpy array for "numpy" and "numba"."""
    if (name or current_backend()) == "cupy":
        import cupy
        return cupy.asarray(x)
    return to_numpy(x)
