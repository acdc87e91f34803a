"""The numba backend's split of one reduction across the cores by hand, for GEMMs BLAS threads badly.

A filter gradient is a sum over the batch of small-result GEMMs: dW (KH*KW*C, O) =
sum of cols^T @ dy over batch chunks, or Winograd's alpha^2 GEMMs (C x T) @ (T x O).
OpenBLAS threads each call by splitting its result, which here is small, and wakes its
sleeping threads for every call (tinybn sets OPENBLAS_THREAD_TIMEOUT low so that they
do not spin on the numba kernels' cores): on 2 busy cores, 64 such GEMMs took 10-18x
as long on its 2 threads as on one. Here the split is by batch instead: LANES fixed
sequences of batch chunks, each summed in chunk order by one worker thread, which runs
its own kernels (serial numba, nogil) and its own GEMMs with BLAS on one thread; the
lanes' sums are then added in lane order. The partition does not depend on the worker
count and each GEMM runs on one BLAS thread, so the result is the same, bit for bit, on
1 core or many; a worker that finishes early takes the next lane, so a busy core holds
up one lane, not half the work.

BLAS's thread count is process-wide (OpenBLAS's pthreads build): split() sets it to 1
for its duration, while the calling thread waits on the workers, and restores it. It is
reached through ctypes in the OpenBLAS that numpy loaded (found among the process's
mapped files, Linux); where there is none (another BLAS, another OS) split() runs the
lanes one after another on the calling thread, with BLAS's own threads: the same sum
up to the rounding of BLAS's own partition.

Floor: kernels (tests/test_layering.py): imports only tinybn.backend's registry,
tinybn.geometry, tinybn.mapped_files, other kernel modules, and numpy, numba or cupy (and
the standard library).
"""
import ctypes
import functools
import os
import threading
from collections import deque

import numba

from tinybn.mapped_files import mapped_libraries

LANES = 4                     # lanes per reduction: up to 4 cores, and room to balance 2 busy ones
_AFFIXES = [(p, s) for p in ("", "scipy_") for s in ("", "64_", "_64")]   # OpenBLAS's symbol variants


@functools.cache
def openblas_threads():
    """(get, set) of the thread count of the OpenBLAS numpy uses, or None where none is found."""
    paths = mapped_libraries("openblas") or ()
    for path in sorted((p for p in paths if os.path.isfile(p)), key=lambda p: ("numpy" not in p, p)):  # numpy's first
        library = ctypes.CDLL(path)
        for prefix, suffix in _AFFIXES:
            get = getattr(library, f"{prefix}openblas_get_num_threads{suffix}", None)
            put = getattr(library, f"{prefix}openblas_set_num_threads{suffix}", None)
            if get is not None and put is not None:
                get.restype, put.argtypes = ctypes.c_int, [ctypes.c_int]
                return get, put
    return None


def workers():
    """How many worker threads split() uses: numba's thread count (NUMBA_NUM_THREADS,
    numba.set_num_threads), at most LANES; 1 (no workers) without a BLAS it can limit."""
    return min(numba.get_num_threads(), LANES) if openblas_threads() is not None else 1


class _Pool:
    """Daemon worker threads, started once, each taking (function, argument, results, index, done)
    jobs from a queue (a deque, whose appends and pops are atomic, and a semaphore counting them)."""

    def __init__(self, count):
        self.jobs, self.waiting = deque(), threading.Semaphore(0)
        for i in range(count):
            threading.Thread(target=self._work, daemon=True, name=f"tinybn-split-{i}").start()

    def put(self, job):
        self.jobs.append(job)
        self.waiting.release()

    def _work(self):
        numba.set_num_threads(1)      # thread-local: any parallel kernel a job calls stays on this core
        while True:
            self.waiting.acquire()
            function, argument, results, index, done = self.jobs.popleft()
            try:
                results[index] = (True, function(argument))
            except BaseException as error:      # handed back to the caller, raised there
                results[index] = (False, error)
            done.release()


@functools.cache
def _pool(count):
    return _Pool(count)


os.register_at_fork(after_in_child=_pool.cache_clear)    # a forked child has none of the threads


class one_blas_thread:
    """with one_blas_thread(): BLAS on one thread for the block (where openblas_threads finds
    it), then as before. For small GEMMs, which BLAS's threads slow down, and for split().
    Blocks may overlap (nested, or in several threads): the first in sets 1, the last out
    puts back what the first found."""
    _lock, _depth, _previous = threading.Lock(), [0], [None]

    def __enter__(self):
        controls = openblas_threads()
        if controls:
            with self._lock:
                if self._depth[0] == 0:
                    self._previous[0] = controls[0]()
                    controls[1](1)
                self._depth[0] += 1

    def __exit__(self, *exc):
        controls = openblas_threads()
        if controls:
            with self._lock:
                self._depth[0] -= 1
                if self._depth[0] == 0:
                    controls[1](self._previous[0])


def split(lane_sum, lanes=LANES):
    """[lane_sum(k) for k in range(lanes)], with BLAS on one thread, on workers() worker threads
    (the calling thread where that is 1). lane_sum must not hold the GIL for long (numpy's
    GEMMs and copies release it; numba kernels need nogil=True)."""
    if openblas_threads() is None:
        return [lane_sum(k) for k in range(lanes)]
    count = min(workers(), lanes)
    with one_blas_thread():
        if count <= 1:
            return [lane_sum(k) for k in range(lanes)]
        pool, done, results = _pool(count), threading.Semaphore(0), [None] * lanes
        for k in range(lanes):
            pool.put((lane_sum, k, results, k, done))
        for _ in range(lanes):
            done.acquire()
    for ok, value in results:
        if not ok:
            raise value
    return [value for _, value in results]
