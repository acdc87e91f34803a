"""Process-wide thread settings: tinybn limits OpenBLAS's busy-waiting before numpy loads it, and
OpenMP's (numba's threads) before libgomp loads, keeps a value the user chose, and warns when
numpy or libgomp came first (then it is too late); which libraries are loaded is read from
/proc/self/maps (tinybn.mapped_files)."""
import os
import subprocess
import sys

import pytest

pytest.importorskip("numba", reason="the warning comes with the numba backend")


def run(code, **env):
    environ = {k: v for k, v in os.environ.items() if k not in ("OPENBLAS_THREAD_TIMEOUT", "OMP_WAIT_POLICY")}
    environ.update(env)
    proc = subprocess.run([sys.executable, "-c", code], env=environ, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc


def test_import_sets_openblas_thread_timeout_before_numpy_loads():
    out = run("import tinybn, os; print(os.environ['OPENBLAS_THREAD_TIMEOUT'], tinybn.openblas_spin_limited)")
    assert out.stdout.split() == ["4", "True"]


def test_a_value_the_user_set_is_kept():
    out = run("import numpy, tinybn, os; print(os.environ['OPENBLAS_THREAD_TIMEOUT'], tinybn.openblas_spin_limited)",
              OPENBLAS_THREAD_TIMEOUT="9")
    assert out.stdout.split() == ["9", "True"]


def test_numba_backend_warns_when_numpy_was_imported_first():
    out = run("import numpy, tinybn; tinybn.use_backend('numba')")
    assert "RuntimeWarning" in out.stderr and "OPENBLAS_THREAD_TIMEOUT=4" in out.stderr


def test_no_warning_when_tinybn_came_first():
    out = run("import tinybn, numpy; tinybn.use_backend('numba')")
    assert "OPENBLAS_THREAD_TIMEOUT" not in out.stderr


# OMP_WAIT_POLICY: libgomp reads it once, when it is loaded (numba's first parallel kernel, or
# torch before that); OMP_DISPLAY_ENV makes libgomp print the policy it read, so these tests
# see what the runtime itself took, not only the variable.
LOAD_LIBGOMP = "import ctypes, ctypes.util; ctypes.CDLL(ctypes.util.find_library('gomp'))"


def _gomp_policy(stderr):
    line = next(x for x in stderr.splitlines() if "OMP_WAIT_POLICY" in x)
    return line.split("=")[1].strip().strip("'")


def test_import_sets_the_openmp_wait_policy_before_libgomp_loads():
    out = run(f"import tinybn; {LOAD_LIBGOMP}; print(tinybn.omp_spin_limited)", OMP_DISPLAY_ENV="TRUE")
    assert out.stdout.split() == ["True"] and _gomp_policy(out.stderr) == "PASSIVE"


def test_an_openmp_wait_policy_the_user_set_is_kept():
    out = run(f"import tinybn; {LOAD_LIBGOMP}", OMP_DISPLAY_ENV="TRUE", OMP_WAIT_POLICY="active")
    assert _gomp_policy(out.stderr) == "ACTIVE"


def test_numba_backend_warns_when_libgomp_was_loaded_first():
    out = run(f"{LOAD_LIBGOMP}; import tinybn; print(tinybn.omp_spin_limited); tinybn.use_backend('numba')")
    assert out.stdout.split() == ["False"]
    assert "RuntimeWarning" in out.stderr and "OMP_WAIT_POLICY=passive" in out.stderr


def test_no_openmp_warning_when_tinybn_came_first():
    out = run(f"import tinybn; {LOAD_LIBGOMP}; tinybn.use_backend('numba')")
    assert "OMP_WAIT_POLICY" not in out.stderr


def test_mapped_libraries_reads_the_maps_paths(monkeypatch, tmp_path):
    """The sixth field of each line, spaces kept; lines without a path skipped; names matched
    in the file name only; None where the map cannot be read."""
    import builtins
    import io

    from tinybn import mapped_files
    maps = ("7f00-7f10 r-xp 00000000 08:01 12 /opt/my libs/libopenblas64_p-r0.3.so\n"
            "7f10-7f20 rw-p 00000000 00:00 0 \n"
            "7f20-7f30 r-xp 00000000 08:01 13 /opt/libgomp-a34b/libz.so.1\n"
            "7f30-7f40 r-xp 00000000 08:01 14 /usr/lib/libgomp.so.1 (deleted)\n")
    real_open = builtins.open
    monkeypatch.setattr(builtins, "open", lambda path, *a, **k: io.StringIO(maps) if path == "/proc/self/maps"
                        else real_open(path, *a, **k))
    assert mapped_files.mapped_libraries("openblas") == {"/opt/my libs/libopenblas64_p-r0.3.so"}
    assert mapped_files.mapped_libraries("libgomp", "libomp") == {"/usr/lib/libgomp.so.1 (deleted)"}
    assert mapped_files.mapped_libraries("libiomp") == set()

    def unreadable(path, *a, **k):
        raise PermissionError(path)
    monkeypatch.setattr(builtins, "open", unreadable)
    assert mapped_files.mapped_libraries("openblas") is None
