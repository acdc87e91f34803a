"""The "cupy" backend on a real GPU: every hot primitive's CUDA twin against the numpy reference,
ops end to end on CuPy arrays, and training steps of the CIFAR tutorial models and of the fast
recipe on the GPU against the same steps on the CPU.

Runs where CuPy imports and sees a CUDA device; elsewhere every test is skipped with the
reason ("no CUDA GPU / CuPy: ..."). tests/test_cuda_kernels.py proves the same kernels
without a GPU (nvcc compile, CPU emulation); this file proves that NVRTC, CuPy's launches
and the device's arithmetic agree with it.

Tolerances: bitwise for im2col, col2im and pooling (the kernels repeat the reference's
additions and IEEE divisions in its order). Elsewhere a few ulps: the device may fuse a
multiply and an add (NVRTC's default --fmad=true), its expf/logf/powf are within 1-4 ulps,
and the kernels sum in double where the reference sums pairwise.
"""
import numpy as np
import pytest

import tinybn.backend as backend
from tinybn import Tensor
from tinybn.kernels.cuda_primitives import PRIMITIVES
from tinybn.models import cifar10
from tinybn.ops.conv import conv2d
from tinybn.ops.fused_batch_norm import fused_batch_norm
from tinybn.ops.padding import window_geometry
from tinybn.ops.pool import max_pool2d
from tinybn.optim import Momentum


def _unavailable():
    """None if CuPy imports and sees a device, else why not."""
    try:
        import cupy
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as e:    # ImportError, or CUDARuntimeError when there is no driver
        return f"no CUDA GPU / CuPy: {type(e).__name__}: {e}"
    return None if count > 0 else "no CUDA GPU / CuPy: CuPy sees 0 devices"


REASON = _unavailable()
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(REASON is not None, reason=REASON or "")]
DTYPES = [np.float32, np.float64]


@pytest.fixture
def cp():
    """cupy, with the "cupy" backend current for the test (and the previous one restored)."""
    import cupy
    with backend.backend("cupy"):
        yield cupy


def on_gpu(cp, args):
    return tuple(cp.asarray(a) if isinstance(a, np.ndarray) else a for a in args)


def assert_close(ours, ref, ulps):
    assert ours.dtype == ref.dtype and ours.shape == ref.shape
    eps = np.finfo(ref.dtype).eps
    np.testing.assert_allclose(ours, ref, rtol=ulps * eps, atol=ulps * eps * np.abs(ref).max(initial=0.0))


def primitive_cases(name, dtype, rng):
    """Argument tuples for primitive `name` (numpy arrays), at CIFAR-like sizes."""
    def normal(*shape, loc=0.0):
        return (rng.standard_normal(shape) + loc).astype(dtype)

    if name in ("im2col", "col2im"):
        cases = []
        for shape, k, s, d, padding in [((8, 24, 24, 3), (5, 5), (1, 1), (1, 1), "SAME"),
                                        ((2, 9, 8, 3), (3, 2), (2, 3), (1, 1), "SAME"),
                                        ((2, 11, 10, 2), (3, 3), (1, 1), (2, 2), "VALID")]:
            geometry = window_geometry(shape[1:3], k, s, d, padding)
            oh, ow = geometry.OH, geometry.OW
            if name == "im2col":
                cases.append((normal(*shape), geometry))
            else:
                cases.append((normal(shape[0] * oh * ow, k[0] * k[1] * shape[3]), shape, geometry))
        return cases
    if "pool" in name:
        cases = []
        for shape, k, s, padding in [((16, 24, 24, 8), (3, 3), (2, 2), "SAME"),
                                     ((4, 12, 12, 8), (2, 2), (2, 2), "SAME"),
                                     ((4, 6, 6, 10), (6, 6), (6, 6), "VALID")]:
            win = window_geometry(shape[1:3], k, s, (1, 1), padding)
            x = rng.integers(-2, 3, shape).astype(dtype)      # ties, for the first-maximum rule
            dy = normal(shape[0], win.OH, win.OW, shape[3])
            argmax = backend.implementation("max_pool_forward", "numpy")(x, win)[1]
            cases.append({"max_pool_forward": (x, win), "max_pool_values": (x, win),
                          "max_pool_backward": (dy, argmax, shape, win),
                          "avg_pool_forward": (normal(*shape), win),
                          "avg_pool_backward": (dy, shape, win)}[name])
        return cases
    m, c = 16 * 24 * 24, 64
    x, scale, offset = normal(m, c, loc=3.0), normal(c), normal(c)
    if name == "batch_norm_train_forward":
        return [(x, scale, offset, 1e-3)]
    if name == "batch_norm_train_backward":
        _, mean, _, inv_std = backend.implementation("batch_norm_train_forward", "numpy")(x, scale, offset, 1e-3)
        return [(normal(m, c), x, scale, mean, inv_std)]
    if name == "batch_norm_inference":
        return [(x, scale, offset, normal(c), rng.uniform(0.5, 2, c).astype(dtype), 1e-3)]
    if name in ("lrn_forward", "lrn_backward"):
        x = normal(4, 12, 12, 64)
        params = (4, 1.0, 0.001 / 9, 0.75)
        if name == "lrn_forward":
            return [(x, *params), (x, 2, 2.0, 0.5, 0.5)]
        y, norm = backend.implementation("lrn_forward", "numpy")(x, *params)
        return [(normal(4, 12, 12, 64), x, y, norm, 4, 0.001 / 9, 0.75)]
    assert name == "softmax_cross_entropy"
    labels = np.eye(10, dtype=dtype)[rng.integers(0, 10, 128)]
    return [(labels, normal(128, 10)), (rng.uniform(0, 1, (7, 1000)).astype(dtype), normal(7, 1000) * 30)]


EXACT = {"im2col", "col2im", "max_pool_forward", "max_pool_values", "max_pool_backward", "avg_pool_forward",
         "avg_pool_backward"}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", [p for p in PRIMITIVES if p != "conv_batch_chunks"])
def test_primitive_on_gpu_equals_reference(cp, name, dtype):
    reference, twin = backend.implementation(name, "numpy"), backend.implementation(name, "cupy")
    assert twin is not reference, f"no cupy twin registered for {name}"
    for args in primitive_cases(name, dtype, np.random.default_rng(0)):
        ref = reference(*args)
        ours = twin(*on_gpu(cp, args))
        refs, outs = (ref, ours) if isinstance(ref, tuple) else ((ref,), (ours,))
        assert len(outs) == len(refs)
        for out, r in zip(outs, refs):
            assert isinstance(out, cp.ndarray), f"{name} returned {type(out).__name__}, not a GPU array"
            if name in EXACT:
                np.testing.assert_array_equal(cp.asnumpy(out), r, strict=True)
            else:
                assert_close(cp.asnumpy(out), r, ulps=32)


def test_gpu_conv_takes_the_whole_batch(cp):
    """The GPU's chunking policy: one GEMM over the batch (the CPU's 2 MB chunks would make
    conv2 of the CIFAR models at batch 128 64 small cuBLAS calls)."""
    x = cp.empty((128, 12, 12, 64), cp.float32)
    assert backend.dispatch("conv_batch_chunks", x, 12 * 12 * 25) == [slice(0, 128)]


def test_cupy_arrays_get_the_cuda_kernels_under_any_backend(cp, monkeypatch):
    """The backend is the arrays': under the numpy backend a cupy array still runs the CUDA
    twin (and host arrays the reference), with the reference's values."""
    ran = []
    twin = backend._registry["max_pool_forward"]["cupy"]
    monkeypatch.setitem(backend._registry["max_pool_forward"], "cupy", lambda *a: (ran.append(1), twin(*a))[1])
    x = np.random.default_rng(4).standard_normal((2, 6, 6, 3)).astype(np.float32)
    with backend.backend("numpy"):
        X = Tensor(cp.asarray(x), requires_grad=True)
        y = max_pool2d(X, 3, 2, "SAME")
        ref = max_pool2d(x, 3, 2, "SAME")
    assert ran == [1] and isinstance(y.data, cp.ndarray)
    np.testing.assert_array_equal(cp.asnumpy(y.data), ref.data)


def test_ops_end_to_end_on_gpu(cp):
    """conv2d and fused_batch_norm on CuPy tensors: outputs and gradients stay on the GPU and
    equal the numpy backend's on the host."""
    rng = np.random.default_rng(1)
    x = rng.standard_normal((4, 10, 10, 3)).astype(np.float32)
    w = (rng.standard_normal((3, 3, 3, 8)) * 0.2).astype(np.float32)
    scale, offset = np.ones(8, np.float32), np.zeros(8, np.float32)
    dy = rng.standard_normal((4, 5, 5, 8)).astype(np.float32)

    def run(arrays):
        tx, tw, ts, to = (Tensor(a, requires_grad=True) for a in arrays[:4])
        y, _, _ = fused_batch_norm(conv2d(tx, tw, strides=2, padding="SAME"), ts, to)
        y.backward(arrays[4])
        return [y.data, tx.grad, tw.grad, ts.grad, to.grad]

    gpu = run(on_gpu(cp, (x, w, scale, offset, dy)))
    with backend.backend("numpy"):
        cpu = run((x, w, scale, offset, dy))
    for ours, ref in zip(gpu, cpu):
        assert isinstance(ours, cp.ndarray)
        np.testing.assert_allclose(cp.asnumpy(ours), ref, rtol=1e-4, atol=1e-5 * np.abs(ref).max())


def _train_step(model, images, labels):
    opt = Momentum(model.parameters(), 0.1, 0.9)
    loss = model.loss(model(Tensor(images)), labels)
    loss.backward()
    grads = {name: backend.to_numpy(p.grad) for name, p in model.named_parameters()}
    opt.step()
    return float(loss.item()), grads, model.state_dict()


@pytest.mark.parametrize("builder", [cifar10.tutorial, cifar10.tutorial_bn])
def test_training_step_on_gpu_equals_cpu(cp, builder):
    rng = np.random.default_rng(2)
    images = rng.standard_normal((32, 24, 24, 3)).astype(np.float32)
    labels = rng.integers(0, 10, 32)
    gpu_model = builder(rng=np.random.default_rng(3)).to_backend("cupy")
    assert all(isinstance(p.data, cp.ndarray) for p in gpu_model.parameters())
    gpu = _train_step(gpu_model, cp.asarray(images), cp.asarray(labels))
    with backend.backend("numpy"):
        cpu = _train_step(builder(rng=np.random.default_rng(3)), images, labels)
    assert abs(gpu[0] - cpu[0]) <= 1e-5 * abs(cpu[0])
    for name in cpu[1]:
        ref = cpu[1][name]
        np.testing.assert_allclose(gpu[1][name], ref, rtol=1e-3, atol=1e-4 * np.abs(ref).max(), err_msg=name)
    for name in cpu[2]:
        np.testing.assert_allclose(gpu[2][name], cpu[2][name], rtol=1e-4, atol=1e-6, err_msg=name)


def test_fast_recipe_steps_on_gpu_equal_cpu(cp):
    """The fast recipe (tinybn/tasks/fast_recipe.py) on a narrow model in float64: the patch
    whitening, GELU, BN without a scale, the label-smoothed summed loss and Nesterov SGD in its two
    groups, three steps on the GPU against the same three on the CPU, losses and every weight and
    BN statistic after them. Normal images: no max-pool window holds a tie."""
    from tinybn.models.cifar_fast import fast
    from tinybn.tasks.fast_recipe import FastRecipe
    rng = np.random.default_rng(4)
    images = rng.standard_normal((64, 32, 32, 3))
    labels = rng.integers(0, 10, 64).astype(np.int32)

    def run(name, images_there, labels_there):
        model = fast(rng=np.random.default_rng(5), dtype=np.float64, whitening_images=images, widths=(16, 32, 32))
        model = model.to_backend(name)
        recipe = FastRecipe(model, 512, 64, 2.0)
        losses = [recipe.train_step(images_there, labels_there)[0] for _ in range(3)]
        return losses, {k: backend.to_numpy(v) for k, v in model.state_dict().items()}

    gpu = run("cupy", cp.asarray(images), cp.asarray(labels))
    with backend.backend("numpy"):
        cpu = run("numpy", images, labels)
    np.testing.assert_allclose(gpu[0], cpu[0], rtol=1e-10)
    assert set(gpu[1]) == set(cpu[1])
    for name, ref in cpu[1].items():
        np.testing.assert_allclose(gpu[1][name], ref, rtol=1e-8, atol=1e-10 * np.abs(ref).max(), err_msg=name)
