"""The numba backend keeps freed arrays in the heap (kernels/numba_setup.py): with glibc,
a 64 MiB array allocated, touched and freed a second time faults in (almost) no fresh pages,
where glibc's default (a fresh mmap per allocation above its threshold) faults them all
in again. A user's MALLOC_MMAP_THRESHOLD_ is left in charge."""
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
pytest.importorskip("numba")

SCRIPT = """
import resource
import numpy as np
import tinybn.backend as backend
backend.use_backend("numba")
from tinybn.kernels import numba_setup

def faults_of_a_fresh_array():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    a = np.ones(16 << 20, np.float32)          # 64 MiB, every page touched
    del a
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

first, second = faults_of_a_fresh_array(), faults_of_a_fresh_array()
print(numba_setup.HEAP_POLICY, "|", first, second)
"""


def run(env_extra):
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    env.update(env_extra, PYTHONPATH=ROOT)
    done = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, env=env,
                          cwd=ROOT, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    policy, counts = done.stdout.strip().rsplit("|", 1)
    first, second = map(int, counts.split())
    return policy.strip(), first, second


glibc = pytest.mark.skipif(not (os.confstr("CS_GNU_LIBC_VERSION") or "").startswith("glibc"),
                           reason="the heap policy is glibc's mallopt")


@glibc
def test_a_freed_array_is_reused_without_page_faults():
    policy, first, second = run({})
    assert policy == "mmap and trim thresholds 1024 MiB"
    assert first > 10 * second, (first, second)   # (transparent huge pages make `first` ~500, not 16k)


@glibc
def test_the_users_malloc_variables_are_left_in_charge():
    policy, first, second = run({"MALLOC_MMAP_THRESHOLD_": str(128 << 10)})
    assert policy == "left to the MALLOC_*_THRESHOLD_ variables"
    assert second >= first // 2 > 0, (first, second)        # a fresh mmap, faulted in again
