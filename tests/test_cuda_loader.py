"""The "cupy" backend's loader (kernels/cupy_gpu.py) without a GPU: each CUDA twin has its
reference primitive's signature, a missing cupy is a clear ImportError, and with a stand-in
cupy whose RawModule runs the kernels on the CPU emulation (tests/test_cuda_kernels.py)
a training step and an evaluation of the BN models equal the numpy backend's, every
kernel having run. tests/test_gpu.py does the same on a real GPU.
"""
import copy
import inspect
import sys
import types

import numpy as np
import pytest

import tinybn.backend as backend
from tinybn import Tensor
from tinybn.kernels.cuda_build import EmulatedDevice
from tinybn.kernels.cuda_primitives import KERNELS, PRIMITIVES, CudaPrimitives
from tinybn.models import cifar10
from tinybn.ops.conv import conv2d


# ---- the twins' interface ----------------------------------------------------------

@pytest.mark.parametrize("name", PRIMITIVES)
def test_twin_has_the_reference_signature(name):
    reference = backend.implementation(name, "numpy")
    twin = getattr(CudaPrimitives(np, launch=None), name)
    assert inspect.signature(twin) == inspect.signature(reference)


def test_cupy_backend_without_cupy_is_an_import_error():
    try:
        import cupy  # noqa: F401
    except ImportError:
        before = backend.current_backend()
        with pytest.raises(ImportError, match="backend 'cupy' needs tinybn.kernels.cupy_gpu"):
            backend.use_backend("cupy")
        assert backend.current_backend() == before
    else:
        pytest.skip("cupy is installed here: tests/test_gpu.py covers the backend")


# ---- cupy_gpu.py itself, against a stand-in cupy ----------------------------------------

def stub_cupy(device, launched):
    """A module named cupy: numpy arrays, and a RawModule whose functions run on `device`
    (the CPU emulation), taking CuPy's call form kernel((blocks,), (threads,), args)."""
    stub = types.ModuleType("cupy")
    stub.__getattr__ = lambda name: getattr(np, name)

    class RawModule:
        def __init__(self, code, name_expressions):
            assert "#include" not in code          # NVRTC gets one self-contained text
            self.names = list(name_expressions)

        def get_function(self, name):
            assert name in self.names

            def kernel(grid, block, args):
                launched.add(name.split("<")[0])
                device(name, *grid, *block, args)
            return kernel
    stub.RawModule = RawModule
    return stub


def stand_in_arrays_on_device(monkeypatch):
    """The stand-in cupy's arrays are numpy's: they count as device arrays (dispatch sends
    them to the CUDA twins) while the cupy backend is selected, host arrays otherwise."""
    monkeypatch.setattr(backend, "on_device", lambda a: isinstance(a, np.ndarray) and backend._current[0] == "cupy")


def test_cupy_loader_runs_the_models_on_the_kernels(monkeypatch, emulation_dir):
    """tinybn.use_backend("cupy") with cupy_gpu.py loaded over a stand-in cupy: a training step and
    an evaluation of the BN models on the emulated kernels equal the numpy backend's, and every
    kernel ran. (tests/test_gpu.py does this on a real GPU.)"""
    launched = set()
    monkeypatch.setitem(sys.modules, "cupy", stub_cupy(EmulatedDevice(emulation_dir), launched))
    monkeypatch.delitem(sys.modules, "tinybn.kernels.cupy_gpu", raising=False)
    monkeypatch.setattr(backend, "_registry", copy.deepcopy(backend._registry))
    monkeypatch.setattr(backend, "_loaded", set(backend._loaded))
    monkeypatch.setattr(backend, "_current", [backend.current_backend()])
    stand_in_arrays_on_device(monkeypatch)
    rng = np.random.default_rng(5)
    images, labels = rng.standard_normal((4, 24, 24, 3)).astype(np.float32), rng.integers(0, 10, 4)

    def step_and_eval(builder):
        model = builder(rng=np.random.default_rng(6))
        loss = model.loss(model(Tensor(images)), labels)
        loss.backward()
        grads = [p.grad for p in model.parameters()]
        return [loss.data, *grads, model.eval()(Tensor(images)).data]

    def strided_conv_input_gradient():
        """The CIFAR convs have strides 1 (dx is a convolution there); col2im serves strided ones."""
        x = Tensor(images[:2], requires_grad=True)
        conv2d(x, images[0, :3, :3, :, None] * np.ones(5, np.float32), 2, "SAME").backward(
            np.ones((2, 12, 12, 5), np.float32))
        return [x.grad]

    for case in (lambda: step_and_eval(cifar10.tutorial_bn), lambda: step_and_eval(cifar10.bn),
                 strided_conv_input_gradient):
        with backend.backend("numpy"):
            ref = case()
        with backend.backend("cupy"):
            ours = case()
        for a, b in zip(ours, ref):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5 * np.abs(b).max())
    for name in PRIMITIVES:
        assert backend.implementation(name, "cupy") is not backend.implementation(name, "numpy")
    assert launched == {k for kernels in KERNELS.values() for k in kernels}
