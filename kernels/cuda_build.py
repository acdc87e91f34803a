"""Build tinybn's CUDA sources without a GPU: nvcc for the real targets, g++ for the CPU emulation.

    find_nvcc()                        the nvcc binary: PATH, $CUDA_HOME, $CUDA_PATH,
                                       /usr/local/cuda/bin, the newest /usr/local/cuda-*/bin
    nvcc_compile(source, arch, out)    one .cu file, as the text CuPy hands NVRTC, -> cubin for
                                       sm_<arch>, every float/double instantiation forced (a
                                       template never instantiated compiles to nothing and
                                       would prove nothing)
    EmulatedDevice(cache_dir)          a `launch(kernel, blocks, threads, args)` for
                                       kernels.cuda_primitives.CudaPrimitives that runs each
                                       kernel on the CPU: the same source compiled by g++ with
                                       kernels/cpu_emulation.h, called through ctypes

The emulated launch checks what the GPU would silently get wrong: each argument's
type against the kernel's parameter list (an np.int64 where the kernel takes int
is garbage on the device), arrays contiguous, writes outside an array (guard
zones around every buffer), writes to an input, and outputs left unwritten
(outputs are filled with NaN before the launch). Reads outside an array get +inf
from the guard zones, which shows up in the results.

Floor: kernels (tests/test_layering.py): imports only tinybn.backend's registry,
tinybn.geometry, other kernel modules, and numpy, numba or cupy.
"""
import ctypes
import glob
import hashlib
import os
import shutil
import subprocess

import numpy as np

from .cuda_primitives import KERNELS, name_expressions, nvrtc_source

KERNEL_DIR = os.path.dirname(os.path.abspath(__file__))
HEADERS = ("common.cuh", "cpu_emulation.h")
GXX_FLAGS = ("-std=c++20", "-O1", "-ffp-contract=off", "-fPIC", "-shared", "-Wall", "-Werror")


def find_nvcc():
    """Path of nvcc, or None when no CUDA toolkit is installed."""
    candidates = [shutil.which("nvcc")]
    for var in ("CUDA_HOME", "CUDA_PATH"):
        if os.environ.get(var):
            candidates.append(os.path.join(os.environ[var], "bin", "nvcc"))
    candidates.append("/usr/local/cuda/bin/nvcc")
    candidates += sorted(glob.glob("/usr/local/cuda-*/bin/nvcc"), reverse=True)
    for path in candidates:
        if path and os.access(path, os.X_OK):
            return path
    return None


def _read(name):
    with open(os.path.join(KERNEL_DIR, name), encoding="utf-8") as f:
        return f.read()


def _nvcc_unit(source):
    """CuPy's text of `source` (nvrtc_source) plus host code naming every instantiation."""
    refs = "".join(f"    (void)&{expr};\n" for expr in name_expressions(source))
    return f"{nvrtc_source(source)}\n\nvoid tinybn_instantiate() {{\n{refs}}}\n"


def nvcc_compile(source, arch, out_dir, nvcc=None):
    """Compile kernels/<source> for sm_<arch> into out_dir; the cubin's bytes. Any error or
    warning raises RuntimeError with nvcc's output."""
    nvcc = nvcc or find_nvcc()
    unit = os.path.join(out_dir, f"{source}.sm_{arch}.cu")
    with open(unit, "w", encoding="utf-8") as f:
        f.write(_nvcc_unit(source))
    cubin = unit[:-3] + ".cubin"
    cmd = [nvcc, "--cubin", f"-arch=sm_{arch}", "-std=c++17", "--Werror", "all-warnings",
           "-o", cubin, unit]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"nvcc failed on {source} for sm_{arch}:\n{' '.join(cmd)}\n{done.stdout}{done.stderr}")
    with open(cubin, "rb") as f:
        return f.read()


def mangled_prefix(expr):
    """Itanium-mangled start of a template instantiation's name: "im2col<float>" -> "6im2colIfE"."""
    name, ctype = expr[:-1].split("<")
    return f"{len(name)}{name}I{ {'float': 'f', 'double': 'd'}[ctype]}E"


# ---- CPU emulation -----------------------------------------------------------------

def _emulation_unit(source):
    lines = [f'#include "{source}"', ""]
    for i, expr in enumerate(name_expressions(source)):
        lines.append(f'extern "C" const char* tb_signature_{i}() {{ return tb_signature(&{expr}); }}')
        lines.append(f'extern "C" void tb_launch_{i}(unsigned blocks, unsigned threads, void** args, int reverse) '
                     f'{{ tb_emulate_launch(&{expr}, dim3(blocks), dim3(threads), args, reverse != 0); }}')
    return "\n".join(lines) + "\n"


def build_emulation(source, cache_dir):
    """Start g++ on kernels/<source> (cached by content hash): (library path, Popen or None)."""
    unit = _emulation_unit(source)
    key = hashlib.sha256("\0".join([unit, _read(source), *map(_read, HEADERS), *GXX_FLAGS]).encode()).hexdigest()
    lib = os.path.join(cache_dir, f"{source[:-3]}-{key[:16]}.so")
    if os.path.exists(lib):
        return lib, None
    cpp = lib[:-3] + ".cpp"
    with open(cpp, "w", encoding="utf-8") as f:
        f.write(unit)
    if shutil.which("g++") is None:
        raise RuntimeError("g++ not found: running the CUDA kernels on the CPU needs a C++20 compiler")
    cmd = ["g++", *GXX_FLAGS, "-include", os.path.join(KERNEL_DIR, "cpu_emulation.h"), "-I", KERNEL_DIR,
           cpp, "-o", lib + ".tmp"]
    return lib, subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


_SCALARS = {"int": (np.int32, ctypes.c_int32), "long long": (np.int64, ctypes.c_int64),
            "float": (np.float32, ctypes.c_float), "double": (np.float64, ctypes.c_double)}
_POINTEES = {"int": np.int32, "float": np.float32, "double": np.float64}
_GUARD = 16          # elements of guard zone on each side of every array


class EmulatedDevice:
    """launch(kernel, blocks, threads, args) on the CPU; reverse=True runs every block and thread
    in reverse order (a result that changes means two threads write one element)."""

    def __init__(self, cache_dir, reverse=False):
        self.reverse = reverse
        self.kernels = {}              # name expression -> (launch function, parameter types)
        builds = {source: build_emulation(source, cache_dir) for source in KERNELS}
        for source, (lib, proc) in builds.items():
            if proc is not None:
                output = proc.communicate()[0]
                if proc.returncode != 0:
                    raise RuntimeError(f"g++ failed on {source} under cpu_emulation.h:\n{output}")
                os.replace(lib + ".tmp", lib)
            dll = ctypes.CDLL(lib)
            for i, expr in enumerate(name_expressions(source)):
                signature = getattr(dll, f"tb_signature_{i}")
                signature.restype = ctypes.c_char_p
                fn = getattr(dll, f"tb_launch_{i}")
                fn.argtypes = [ctypes.c_uint, ctypes.c_uint, ctypes.POINTER(ctypes.c_void_p), ctypes.c_int]
                fn.restype = None
                self.kernels[expr] = (fn, signature().decode().split(","))

    def __call__(self, kernel, blocks, threads, args):
        fn, params = self.kernels[kernel]
        if len(args) != len(params):
            raise TypeError(f"{kernel} takes {len(params)} arguments ({', '.join(params)}), got {len(args)}")
        values, buffers = [], []       # ctypes objects holding each argument; (array, guarded copy, is_output)
        for i, (arg, param) in enumerate(zip(args, params)):
            if param.endswith("*"):
                values.append(self._pointer(kernel, i, arg, param, buffers))
            else:
                np_type, c_type = _SCALARS[param]
                if type(arg) is not np_type:
                    raise TypeError(f"{kernel} argument {i} ({param}): pass {np_type.__name__}, "
                                    f"got {type(arg).__name__}")
                values.append(c_type(arg))
        argv = (ctypes.c_void_p * len(values))(*[ctypes.cast(ctypes.pointer(v), ctypes.c_void_p) for v in values])
        fn(blocks, threads, argv, int(self.reverse))
        for i, (array, guarded, is_output) in buffers:
            inner = guarded[_GUARD:_GUARD + array.size]
            if not (_is_canary(guarded[:_GUARD]) and _is_canary(guarded[_GUARD + array.size:])):
                raise AssertionError(f"{kernel} wrote outside argument {i} ({params[i]}, {array.size} elements)")
            if is_output:
                array.reshape(-1)[...] = inner
            elif not np.array_equal(inner, array.reshape(-1), equal_nan=True):
                raise AssertionError(f"{kernel} wrote to its input argument {i} ({params[i]})")

    @staticmethod
    def _pointer(kernel, i, arg, param, buffers):
        pointee = _POINTEES[param.replace("const ", "")[:-1]]
        if not isinstance(arg, np.ndarray) or arg.dtype != pointee or not arg.flags.c_contiguous:
            raise TypeError(f"{kernel} argument {i} ({param}): pass a C-contiguous {np.dtype(pointee)} array, "
                            f"got {type(arg).__name__} {getattr(arg, 'dtype', '')}")
        is_output = not param.startswith("const ")
        guarded = np.empty(arg.size + 2 * _GUARD, pointee)
        guarded[:_GUARD] = guarded[-_GUARD:] = _canary(pointee)
        guarded[_GUARD:_GUARD + arg.size] = _poison(pointee) if is_output else arg.reshape(-1)
        buffers.append((i, (arg, guarded, is_output)))
        return ctypes.c_void_p(guarded.ctypes.data + _GUARD * guarded.itemsize)


def _canary(dtype):
    return np.inf if np.dtype(dtype).kind == "f" else 0x7F7F7F7F


def _poison(dtype):
    return np.nan if np.dtype(dtype).kind == "f" else -0x5A5A5A5A


def _is_canary(zone):
    return bool(np.all(zone == _canary(zone.dtype)))
