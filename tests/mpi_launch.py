"""Where the tests find mpiexec: beside the venv's python (the test extra installs the mpich
wheel, whose mpiexec lies there), else on PATH. Never a skip: a missing mpiexec is a set-up
error that fails the test naming the fix."""
import os
import shutil
import sys


def mpiexec_path():
    beside = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    found = beside if os.path.exists(beside) else shutil.which("mpiexec")
    assert found, "mpiexec not found: the test extra installs it (pip install -e '.[test]' brings the mpich wheel)"
    return found
