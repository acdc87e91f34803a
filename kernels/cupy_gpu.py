"""The "cupy" backend's hot primitives: tinybn's CUDA kernels compiled by CuPy (NVRTC).

`tinybn.use_backend("cupy")` imports this module. It registers, for backend
"cupy", a twin of every hot primitive with the reference's exact signature and
return values (the methods of kernels.cuda_primitives.CudaPrimitives with
xp = cupy): im2col, col2im, max/avg pool forward and backward, fused batch norm
(train forward/backward, inference), LRN forward/backward and softmax
cross-entropy, and the GPU's conv chunking (whole batches). dispatch sends every
cupy array here, whichever backend is selected. Arrays stay on the GPU; GEMMs stay
with cuBLAS (cupy's @). Each is
registered through dtype_guard.float32_or_float64, as the numba ones: a float16 array
is refused with a one-line TypeError naming the op (the kernels exist for float and
double only).

Each kernels/*.cu file becomes one cupy.RawModule, from the source text shipped
in this package (common.cuh pasted in), with the float and double instantiations
of its templated kernels named by name_expressions. NVRTC compiles a module the
first time one of its kernels runs, and CuPy caches the result on disk.
"""
import cupy

from ..backend import primitive
from .cuda_primitives import KERNELS, PRIMITIVES, CudaPrimitives, name_expressions, nvrtc_source
from .dtype_guard import float32_or_float64

_modules = {source: cupy.RawModule(code=nvrtc_source(source), name_expressions=name_expressions(source))
            for source in KERNELS}
_module_of = {expr: _modules[source] for source in KERNELS for expr in name_expressions(source)}
_functions = {}


def launch(kernel, blocks, threads, args):
    """Run `kernel` (a name expression such as "im2col<float>") on the current CUDA stream."""
    fn = _functions.get(kernel)
    if fn is None:     # the first call compiles the module; later ones skip the look-up
        fn = _functions[kernel] = _module_of[kernel].get_function(kernel)
    fn((blocks,), (threads,), args)


gpu = CudaPrimitives(cupy, launch)
for _name in PRIMITIVES:
    primitive(_name, backend="cupy")(float32_or_float64(_name, "cupy", getattr(gpu, _name)))
