"""The "auto" backend, the command lines' default: cupy when CuPy sees a CUDA GPU, else numba when
installed, else numpy; a backend whose kernels fail to load is passed over with a one-line warning.
The probes are faked here (each case of the machine picks its own backend), and the first line of a
command names the choice; --backend and TINYBN_BACKEND override it."""
import importlib.machinery
import subprocess
import sys
import types

import pytest

import tinybn.backend as backend
from tinybn.eval import main as eval_main

MISSING_KERNELS = "tinybn.kernels.no_such_kernel_module"


@pytest.fixture
def machine(monkeypatch):
    """Fake probes: machine(gpu=..., numba=..., broken=(...)) says what this machine has; a backend in
    `broken` has its library but kernels that fail to import. The backend state is private."""
    monkeypatch.setattr(backend, "_current", [backend.current_backend()])
    monkeypatch.delenv("TINYBN_BACKEND", raising=False)

    def make(gpu, numba, broken=()):
        monkeypatch.setattr(backend, "cuda_gpu_probe",
                            lambda: (True, "CUDA GPU Fake 80GB, CuPy 99.0") if gpu else (False, "no CUDA GPU"))
        monkeypatch.setattr(backend, "numba_probe",
                            lambda: (True, "numba 9.9 installed") if numba else (False, "numba not installed"))
        monkeypatch.setattr(backend, "_loaded", {"numba", "cupy"} - set(broken))
        for name in broken:
            monkeypatch.setitem(backend.KERNEL_MODULES, name, MISSING_KERNELS)
    return make


@pytest.mark.parametrize("gpu, numba, broken, chosen, why", [
    (True, True, (), "cupy", "CUDA GPU Fake 80GB, CuPy 99.0"),
    (True, False, (), "cupy", "CUDA GPU Fake 80GB, CuPy 99.0"),
    (False, True, (), "numba", "no CUDA GPU; numba 9.9 installed"),
    (False, False, (), "numpy", "no CUDA GPU; numba not installed"),
    (False, True, ("numba",), "numpy", "no CUDA GPU; numba kernels failed to load"),
    (True, True, ("cupy",), "numba", "cupy kernels failed to load; numba 9.9 installed"),
    (True, True, ("cupy", "numba"), "numpy", "cupy kernels failed to load; numba kernels failed to load"),
])
def test_auto_picks_the_fastest_backend_that_loads(machine, gpu, numba, broken, chosen, why):
    machine(gpu, numba, broken)
    name, found, passed_over = backend.use_auto_backend()
    assert (name, found) == (chosen, why)
    assert backend.current_backend() == chosen
    assert len(passed_over) == len(broken)
    for problem, name in zip(passed_over, broken):
        assert problem.startswith(f"backend auto passes over {name}: ") and MISSING_KERNELS in problem
        assert "its kernels failed to load" in problem and "\n" not in problem


def test_use_backend_auto_warns_of_a_backend_passed_over(machine):
    machine(gpu=False, numba=True, broken=("numba",))
    with pytest.warns(RuntimeWarning, match="passes over numba: numba 9.9 installed, but its kernels failed"):
        backend.use_backend("auto")
    assert backend.current_backend() == "numpy"


def test_tinybn_backend_auto_is_read_by_the_first_op(machine, monkeypatch):
    machine(gpu=False, numba=True)
    monkeypatch.setenv("TINYBN_BACKEND", "auto")
    backend._current[0] = None
    assert backend.current_backend() == "numba"


def command_lines(capsys, argv):
    """(stdout lines, stderr lines) of python -m tinybn.eval `argv`, which ends in the error "no checkpoint"."""
    with pytest.raises(SystemExit, match="^error: no checkpoint in "):
        eval_main(argv)
    captured = capsys.readouterr()
    return captured.out.splitlines(), captured.err.splitlines()


@pytest.mark.parametrize("task", ["cifar", "mnist"])
def test_the_first_line_names_the_backend_auto_chose(machine, capsys, tmp_path, task):
    machine(gpu=False, numba=True)
    before = backend.current_backend()
    out, _ = command_lines(capsys, [task, "--train-dir", str(tmp_path / "none"), "--data-dir", str(tmp_path)])
    assert out[0] == "backend: numba (auto: no CUDA GPU; numba 9.9 installed)"
    assert backend.current_backend() == before          # the command leaves the process's backend as it was


def test_a_backend_passed_over_is_one_warning_line(machine, capsys, tmp_path):
    machine(gpu=False, numba=True, broken=("numba",))
    out, err = command_lines(capsys, ["mnist", "--train-dir", str(tmp_path / "none")])
    assert out[0] == "backend: numpy (auto: no CUDA GPU; numba kernels failed to load)"
    assert err[0].startswith("warning: backend auto passes over numba: numba 9.9 installed, but its kernels "
                             f"failed to load: backend 'numba' needs {MISSING_KERNELS}")
    assert len(err) == 1


@pytest.mark.parametrize("env, flag, first_line", [
    ("numpy", None, "backend: numpy (TINYBN_BACKEND=numpy)"),
    ("auto", None, "backend: cupy (TINYBN_BACKEND=auto: CUDA GPU Fake 80GB, CuPy 99.0)"),
    ("numba", "auto", "backend: cupy (--backend auto: CUDA GPU Fake 80GB, CuPy 99.0)"),
    ("bogus", "numba", None),           # an explicit --backend is on the command line: no line, no probe
    (None, "numpy", None),
])
def test_tinybn_backend_and_the_flag_override_auto(machine, monkeypatch, capsys, tmp_path, env, flag, first_line):
    machine(gpu=True, numba=True)
    if first_line is None or not first_line.endswith("CuPy 99.0)"):     # auto must not even look
        for probe in ("cuda_gpu_probe", "numba_probe"):
            monkeypatch.setattr(backend, probe, lambda: pytest.fail("auto probed the machine"))
    if env:
        monkeypatch.setenv("TINYBN_BACKEND", env)
    out, err = command_lines(capsys, ["mnist", "--train-dir", str(tmp_path / "none")]
                             + (["--backend", flag] if flag else []))
    assert err == []
    if first_line is None:
        assert out == []
    else:
        assert out[0] == first_line


def test_numba_probe_names_the_installed_version():
    pytest.importorskip("numba")
    from importlib import metadata
    assert backend.numba_probe() == (True, f"numba {metadata.version('numba')} installed")


def fake_cupy(devices, error=None):
    """A module standing for CuPy: its runtime reports `devices` GPUs, or raises `error`."""
    def count():
        if error:
            raise error
        return devices
    cupy = types.ModuleType("cupy")
    cupy.__spec__ = importlib.machinery.ModuleSpec("cupy", None)
    cupy.__version__ = "99.0"
    cupy.cuda = types.SimpleNamespace(runtime=types.SimpleNamespace(
        getDeviceCount=count, getDeviceProperties=lambda i: {"name": b"Fake 80GB"}))
    return cupy


@pytest.mark.parametrize("cupy, expected", [
    (fake_cupy(1), (True, "CUDA GPU Fake 80GB, CuPy 99.0")),
    (fake_cupy(0), (False, "CuPy sees no CUDA GPU")),
    (fake_cupy(0, RuntimeError("cudaErrorNoDevice: no CUDA-capable device is detected\nmore")),
     (False, "CuPy sees no CUDA GPU (cudaErrorNoDevice: no CUDA-capable device is detected)")),
])
def test_cuda_gpu_probe_asks_cupy(monkeypatch, cupy, expected):
    monkeypatch.setitem(sys.modules, "cupy", cupy)
    assert backend.cuda_gpu_probe() == expected


def test_cuda_gpu_probe_without_cupy(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "cupy" else real(name, *a))
    monkeypatch.setattr(backend.os.path, "isdir", lambda path: False)
    assert backend.cuda_gpu_probe() == (False, "no CUDA GPU")


def test_importing_the_command_lines_imports_neither_numba_nor_cupy():
    """auto decides when a command selects its backend, not when tinybn or a command line is imported."""
    code = ("import sys, tinybn, tinybn.train, tinybn.eval, tinybn.bench\n"
            "print(sorted({m.split('.')[0] for m in sys.modules if m.startswith(('numba', 'cupy'))}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["[]"]
