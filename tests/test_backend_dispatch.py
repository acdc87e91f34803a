"""The backend is a property of the arrays: dispatch chooses each primitive's implementation
by the type of the arrays it gets (cupy arrays: the CUDA twins; numpy arrays: the numba
twins under the numba backend, else the reference); the cupy backend refuses host arrays
with an error naming the op. Kernels load on first use (`import tinybn` imports neither
numba nor cupy), also from a bare source checkout; the window arithmetic is tinybn.geometry's;
a 1x1 conv and a max-pool nobody differentiates skip the work they do not need.
"""
import copy
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

import tinybn
import tinybn.backend as backend
from tinybn import Tensor, no_grad
from tinybn.geometry import Window, output_size, real_counts, same_pads, window
from tinybn.ops.conv import conv2d, depthwise_conv2d
from tinybn.ops.pool import avg_pool2d, max_pool2d

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class DeviceArray:
    """Stands for a cupy array: dispatch knows device arrays by their type's module."""
    __module__ = "cupy._core.core"


@pytest.fixture
def registry(monkeypatch):
    """A private registry (and backend state) with a primitive 'probe' that says who ran it."""
    monkeypatch.setattr(backend, "_registry", copy.deepcopy(backend._registry))
    monkeypatch.setattr(backend, "_loaded", set(backend._loaded) | {"numba", "cupy"})
    monkeypatch.setattr(backend, "_current", [backend.current_backend()])
    for name in backend.BACKENDS:
        backend.primitive("probe", backend=name)(lambda *args, name=name: name)


@pytest.mark.parametrize("selected, expected", [("numpy", "numpy"), ("numba", "numba")])
def test_host_arrays_get_the_selected_cpu_backend(registry, selected, expected):
    backend._current[0] = selected
    assert backend.dispatch("probe", np.ones(3), (2, 2)) == expected


@pytest.mark.parametrize("selected", ["numpy", "numba", "cupy"])
def test_device_arrays_get_the_cuda_twins_whatever_is_selected(registry, selected):
    backend._current[0] = selected
    assert backend.dispatch("probe", DeviceArray(), (2, 2)) == "cupy"
    assert backend.dispatch("probe", (1, 2), DeviceArray()) == "cupy"     # any argument may hold it


def test_a_primitive_without_a_twin_falls_back_to_the_reference(registry):
    backend.primitive("reference_only")(lambda x: "numpy")
    for selected in ("numpy", "numba"):
        backend._current[0] = selected
        assert backend.dispatch("reference_only", np.ones(1)) == "numpy"
    assert backend.dispatch("reference_only", DeviceArray()) == "numpy"


@pytest.mark.parametrize("op, call", [
    ("max_pool2d", lambda x: max_pool2d(x, 2, 2, "SAME")),
    ("avg_pool2d", lambda x: avg_pool2d(x, 2, 2, "SAME")),
    ("conv2d", lambda x: conv2d(x, np.ones((3, 3, 3, 2), np.float32), 1, "SAME")),
    ("depthwise_conv2d", lambda x: depthwise_conv2d(x, np.ones((3, 3, 3, 1), np.float32), 1, "SAME")),
])
def test_cupy_backend_with_host_arrays_is_an_error_naming_the_op(registry, op, call):
    """It used to upload inside the primitives while the GEMMs stayed on the host, and failed
    later with a mixed-array TypeError from deep inside."""
    backend._current[0] = "cupy"
    x = np.ones((2, 4, 4, 3), np.float32)
    with pytest.raises(TypeError, match=rf"\b{op}\b[^:]*: the cupy backend got host \(numpy\) arrays") as info:
        call(x)
    assert "\n" not in str(info.value) and "Module.to_backend('cupy')" in str(info.value)


# ---- kernels load on first use ------------------------------------------------------

def _python(code, **env):
    result = subprocess.run([sys.executable, "-c", code], env=dict(os.environ, **env), capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return result.stdout.split()


LOADED = "print(sorted({m.split('.')[0] for m in sys.modules if m.startswith(('numba', 'cupy'))}), " \
         "'tinybn.kernels' in sys.modules)"


@pytest.mark.parametrize("env_backend", ["", "numba"])
def test_import_tinybn_imports_neither_numba_nor_cupy(env_backend):
    """Not even with TINYBN_BACKEND=numba: the variable is read, and the kernels loaded, by the first op."""
    pytest.importorskip("numba")
    code = ("import sys, numpy as np, tinybn\n" + LOADED + "\n"
            "from tinybn.ops.pool import max_pool2d\n"
            "max_pool2d(np.ones((1, 2, 2, 1), np.float32), 2, 2, 'VALID')\n" + LOADED)
    out = _python(code, TINYBN_BACKEND=env_backend, NUMBA_DISABLE_JIT="1")
    assert out[:2] == ["[]", "False"]
    assert out[2:] == (["['numba']", "True"] if env_backend else ["[]", "False"])


def test_kernels_resolve_from_a_bare_checkout(tmp_path):
    """PYTHONPATH=<checkout> without the install's package_dir mapping of kernels/ to
    tinybn.kernels: the backend loads the checkout's kernels/ under that name, runs them, and
    leaves no import hook behind. The venv's editable finder (which maps kernels/ too) is
    removed first, so only the checkout can answer."""
    pytest.importorskip("numba")
    ignore = shutil.ignore_patterns("__pycache__")
    shutil.copytree(os.path.join(REPO, "tinybn"), tmp_path / "tinybn", ignore=ignore)
    shutil.copytree(os.path.join(REPO, "kernels"), tmp_path / "kernels", ignore=ignore)
    code = f"""
import sys
sys.meta_path[:] = [f for f in sys.meta_path if not getattr(f, "__module__", "").startswith("__editable__")]
sys.path_hooks[:] = [h for h in sys.path_hooks if "editable" not in getattr(h, "__qualname__", "").lower()]
sys.path_importer_cache.clear()
import numpy as np
import tinybn
assert tinybn.__file__.startswith({str(tmp_path)!r}), tinybn.__file__
hooks = list(sys.meta_path)
tinybn.use_backend("numba")
from tinybn.ops.pool import max_pool2d
x = np.arange(16, dtype=np.float32).reshape(1, 4, 4, 1)
y = max_pool2d(x, 2, 2, "VALID").numpy()
assert y.ravel().tolist() == [5, 7, 13, 15], y
import tinybn.backend as b
kernel = b.implementation("max_pool_forward", "numba").__wrapped__
assert sys.modules[kernel.__module__].__file__.startswith({str(tmp_path)!r})
assert sys.meta_path == hooks
print("checkout ok", kernel.__module__)
"""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "TINYBN_BACKEND")}
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True,
                            timeout=120, env=dict(env, PYTHONPATH=str(tmp_path), NUMBA_DISABLE_JIT="1"))
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["checkout", "ok", "tinybn.kernels.numba_pool"]


def test_without_kernels_the_numba_backend_is_a_clear_import_error(tmp_path):
    """A checkout without kernels/ (tinybn/ alone): the loader's one-line ImportError, not a traceback."""
    shutil.copytree(os.path.join(REPO, "tinybn"), tmp_path / "tinybn", ignore=shutil.ignore_patterns("__pycache__"))
    code = """
import sys
sys.meta_path[:] = [f for f in sys.meta_path if not getattr(f, "__module__", "").startswith("__editable__")]
import tinybn
try:
    tinybn.use_backend("numba")
except ImportError as e:
    print(str(e).splitlines()[0])
"""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "TINYBN_BACKEND")}
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True,
                            timeout=120, env=dict(env, PYTHONPATH=str(tmp_path)))
    assert "backend 'numba' needs tinybn.kernels.numba_cpu" in result.stdout, result.stderr


# ---- the window arithmetic, once --------------------------------------------------------

@pytest.mark.parametrize("n, k, s, d", [(24, 3, 2, 1), (7, 4, 1, 1), (9, 3, 1, 2), (5, 1, 3, 1), (1, 5, 1, 1)])
def test_geometry_against_a_brute_force_count(n, k, s, d):
    """SAME pads give ceil(n/s) outputs; every window's real-pixel count is what a scan of
    its positions finds."""
    before, after = same_pads(n, k, s, d)
    out = output_size(n, k, s, d, before, after)
    assert out == -(-n // s) and after - before in (0, 1)
    win = window((n, 1), (k, 1), (s, 1), (d, 1), ((before, after), (0, 0)))
    assert (win.OH, win.OW) == (out, 1)
    counts = real_counts(np, (n, 1), win, np.float64)
    if d == 1:
        brute = [sum(0 <= i * s - before + t < n for t in range(k)) for i in range(out)]
        np.testing.assert_array_equal(counts[:, 0], brute)


def test_window_is_a_named_tuple_of_python_ints():
    win = window((np.int64(6), 5), (np.int64(3), 2), (2, 1), (1, 1), ((np.int64(1), 1), (0, 1)))
    assert win == Window(3, 2, 2, 1, 1, 1, ((1, 1), (0, 1)), 3, 5)
    assert all(type(v) is int for v in (*win[:6], *win.pads[0], *win.pads[1], win.OH, win.OW))
    assert (win.top, win.left, win.is_pointwise) == (1, 0, False)
    assert window((4, 4), (1, 1), (1, 1), (3, 3), ((0, 0), (0, 0))).is_pointwise


# ---- work nobody needs is skipped ---------------------------------------------------------

@pytest.fixture
def calls(registry):
    """The names of the primitives dispatched (through the private registry)."""
    seen = []
    for name, impls in backend._registry.items():
        for b, fn in list(impls.items()):
            impls[b] = (lambda fn, name: lambda *a, **k: (seen.append(name), fn(*a, **k))[1])(fn, name)
    backend._current[0] = "numpy"
    return seen


def test_pointwise_conv_reads_the_pixels_directly(calls):
    """A 1x1 conv is x (P, C) @ w (C, O): no im2col, no col2im, and the closed form's values
    and gradients (dx = dy @ w^T, dw = x^T @ dy)."""
    rng = np.random.default_rng(0)
    x, w, dy = rng.standard_normal((2, 3, 4, 5)), rng.standard_normal((1, 1, 5, 6)), rng.standard_normal((2, 3, 4, 6))
    X, W = Tensor(x, requires_grad=True), Tensor(w, requires_grad=True)
    y = conv2d(X, W, 1, "VALID")
    y.backward(dy)
    np.testing.assert_allclose(y.data, x @ w[0, 0], rtol=1e-12)
    np.testing.assert_allclose(X.grad, dy @ w[0, 0].T, rtol=1e-12)
    np.testing.assert_allclose(W.grad[0, 0], x.reshape(-1, 5).T @ dy.reshape(-1, 6), rtol=1e-12)
    assert "im2col" not in calls and "col2im" not in calls


def test_max_pool_skips_the_argmax_when_no_gradient_is_needed(calls):
    x = np.random.default_rng(1).standard_normal((2, 6, 6, 3)).astype(np.float32)
    with no_grad():
        y_values = max_pool2d(Tensor(x, requires_grad=True), 3, 2, "SAME").data
    y_plain = max_pool2d(x, 3, 2, "SAME").data                      # an input that needs no gradient
    assert calls == ["max_pool_values", "max_pool_values"]
    X = Tensor(x, requires_grad=True)
    y = max_pool2d(X, 3, 2, "SAME")
    assert calls[-1] == "max_pool_forward"
    np.testing.assert_array_equal(y_values, y.data)
    np.testing.assert_array_equal(y_plain, y.data)
    y.backward(np.ones(y.shape, np.float32))
    assert X.grad.sum() == y.data.size                                # every window's dy reached a pixel


def test_openblas_setting_stays_in_the_package_root():
    with open(tinybn.__file__, encoding="utf-8") as f:
        source = f.read()
    assert source.index('setdefault("OPENBLAS_THREAD_TIMEOUT"') < source.index("from . import backend")
