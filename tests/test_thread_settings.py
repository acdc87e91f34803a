"""Process-wide thread settings: tinybn limits OpenBLAS's busy-waiting before numpy loads it,
keeps a value the user chose, and warns when numpy came first (then it is too late)."""
import os
import subprocess
import sys

import pytest

pytest.importorskip("numba", reason="the warning comes with the numba backend")


def run(code, **env):
    environ = {k: v for k, v in os.environ.items() if k != "OPENBLAS_THREAD_TIMEOUT"}
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
