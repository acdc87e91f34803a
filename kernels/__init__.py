"""tinybn.kernels: faster twins of the reference primitives (numba CPU kernels; CUDA sources
and their CuPy loaders), registered with tinybn.backend under the same names and signatures.
The backend imports them on first use (numba_cpu.py, cupy_gpu.py), never `import tinybn`.

Floor: kernels (tests/test_layering.py): imports only tinybn.backend's registry,
tinybn.geometry, other kernel modules, and numpy, numba or cupy."""
