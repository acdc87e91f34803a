"""tinybn.distributed.world and nccl: the launcher's environment, the single-process world, and
every collective, communicator and fault helper under `mpiexec -n 2`, against closed forms.

The MPI checks are grouped into few launches (each costs about half a second):
tests/mpi_scripts/world_collectives.py writes what each rank got to a JSON file, compared here;
tests/mpi_scripts/world_faults.py runs one fault case per launch. mpiexec is the one beside the
venv's python (the test extra installs the mpich wheel), else the one on PATH: never skipped.
The NCCL test needs a CUDA GPU and CuPy with NCCL, and is skipped with the reason elsewhere.
"""
import json
import os
import signal
import subprocess
import sys
import types

import numpy as np
import pytest
from mpi_launch import mpiexec_path

from tinybn.distributed import world as world_lib
from tinybn.distributed.world import (SINGLE_PROCESS, abort_on_error, check_same_flags, communicator,
                                      first_divergence, launched_under_mpi, library_name)

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
SCRIPTS = os.path.join(HERE, "mpi_scripts")
TIMEOUT = 60                      # seconds; a hung job fails the test instead of the suite
LAUNCHER_VARIABLES = ("PMI_SIZE", "PMI_RANK", "PMI_FD", "PMI_JOBID", "PMIX_RANK", "OMPI_COMM_WORLD_SIZE",
                      "SLURM_PROCID", "SLURM_STEP_NUM_TASKS", "SLURM_NTASKS")


def run(argv):
    """argv's CompletedProcess, run from the repository root with one thread per process; the whole
    process group is killed if it outlives TIMEOUT (subprocess.TimeoutExpired fails the test)."""
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
               OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", NUMBA_NUM_THREADS="1")
    for name in LAUNCHER_VARIABLES:
        env.pop(name, None)
    p = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         start_new_session=True)
    try:
        out, err = p.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        p.communicate()
        raise
    return subprocess.CompletedProcess(argv, p.returncode, out, err)


def mpiexec2(script, *args):
    return run([mpiexec_path(), "-n", "2", sys.executable, os.path.join(SCRIPTS, script), *args])


@pytest.fixture
def fresh_world(monkeypatch):
    """world() recomputed in a plain environment (no launcher variables), and forgotten afterwards."""
    for name in LAUNCHER_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    world_lib.world.cache_clear()
    yield monkeypatch
    world_lib.world.cache_clear()


# ---- the launcher's environment ----------------------------------------------------------------

@pytest.mark.parametrize("environ, expected", [
    ({}, False),                                                            # plain python
    ({"PMI_SIZE": "2", "PMI_RANK": "1", "PMI_FD": "9"}, True),              # MPICH / Hydra, Intel MPI
    ({"PMI_SIZE": "1", "PMI_RANK": "0"}, False),                            # mpiexec -n 1
    ({"OMPI_COMM_WORLD_SIZE": "4", "OMPI_COMM_WORLD_RANK": "3"}, True),     # Open MPI
    ({"OMPI_COMM_WORLD_SIZE": "1", "OMPI_COMM_WORLD_RANK": "0"}, False),
    ({"SLURM_PROCID": "1", "SLURM_STEP_NUM_TASKS": "8", "SLURM_NTASKS": "16", "PMIX_RANK": "1"}, True),
    ({"SLURM_PROCID": "0", "SLURM_STEP_NUM_TASKS": "1", "SLURM_NTASKS": "16", "PMIX_RANK": "0"}, False),
    ({"SLURM_PROCID": "0", "SLURM_NTASKS": "2", "PMI_FD": "5", "PMI_RANK": "0"}, True),   # srun --mpi=pmi2
    ({"SLURM_PROCID": "0", "SLURM_NTASKS": "16"}, False),                   # an sbatch script itself
    ({"PMIX_RANK": "0"}, True),                                             # PMIx: size from MPI
], ids=["plain", "hydra", "hydra-n1", "openmpi", "openmpi-n1", "srun-pmix", "srun-one-task", "srun-pmi2",
        "sbatch-script", "pmix"])
def test_launched_under_mpi_reads_the_launchers_variables(environ, expected):
    assert launched_under_mpi(environ) is expected


def test_launched_under_mpi_names_a_variable_that_is_not_a_number(fresh_world):
    with pytest.raises(ValueError, match=r"^the environment variable PMI_SIZE='two' is not an integer$"):
        launched_under_mpi({"PMI_SIZE": "two"})
    fresh_world.setenv("PMI_SIZE", "two")
    with pytest.raises(SystemExit, match=r"^error: the environment variable PMI_SIZE='two' is not an integer$"):
        world_lib.world()


@pytest.mark.parametrize("version, name", [
    ("MPICH Version:      5.0.2\nMPICH Release date: Fri Sep 25\n", "MPICH 5.0.2"),
    ("Open MPI v4.1.5, package: Open MPI builder Distribution, ident: 4.1.5, repo rev: v4.1.5", "Open MPI v4.1.5"),
    ("Intel(R) MPI Library 2021.6 for Linux* OS\n", "Intel(R) MPI Library 2021.6 for Linux* OS"),
])
def test_library_name_is_the_first_line_of_the_version(version, name):
    assert library_name(version) == name


# ---- world() without MPI -----------------------------------------------------------------------

def test_world_is_the_single_process_without_a_launcher(fresh_world):
    assert world_lib.world() is SINGLE_PROCESS and world_lib.world() is SINGLE_PROCESS


def test_world_under_a_launcher_without_mpi4py_says_how_to_install_it(fresh_world):
    fresh_world.setenv("PMI_SIZE", "2")
    fresh_world.setitem(sys.modules, "mpi4py", None)        # import mpi4py raises ImportError
    with pytest.raises(SystemExit) as e:
        world_lib.world()
    assert str(e.value) == ("error: launched by an MPI launcher (PMI_SIZE=2) but mpi4py is not installed; "
                            "pip install -e '.[mpi]'")


def fake_mpi4py(size, thread_level):
    """An mpi4py stand-in whose MPI_COMM_WORLD has `size` ranks and provides `thread_level`."""
    comm = types.SimpleNamespace(Get_size=lambda: size)
    MPI = types.SimpleNamespace(THREAD_MULTIPLE=3, Query_thread=lambda: thread_level, COMM_WORLD=comm,
                                Get_library_version=lambda: "Open MPI v4.1.5, package: Open MPI")
    return types.SimpleNamespace(rc=types.SimpleNamespace(), MPI=MPI)


@pytest.mark.parametrize("size, level, message", [
    (1, 3, "error: the launcher says OMPI_COMM_WORLD_SIZE=2 but MPI (Open MPI v4.1.5) sees a world of 1: "
           "mpiexec and mpi4py come from different MPI libraries; launch with the mpiexec of the MPI that "
           "mpi4py was built against"),
    (2, 2, "error: Open MPI v4.1.5 does not provide MPI_THREAD_MULTIPLE, which the gradient thread needs "
           "(it sums while the main thread makes MPI calls too); use an MPI built with thread support, "
           "e.g. pip install mpich"),
], ids=["mpi4py-of-another-mpi", "no-thread-multiple"])
def test_world_refuses_an_mpi_that_cannot_run_the_job(fresh_world, size, level, message):
    fake = fake_mpi4py(size, level)
    fresh_world.setenv("OMPI_COMM_WORLD_SIZE", "2")
    fresh_world.setitem(sys.modules, "mpi4py", fake)
    fresh_world.setitem(sys.modules, "mpi4py.MPI", fake.MPI)
    with pytest.raises(SystemExit) as e:
        world_lib.world()
    assert str(e.value) == message
    assert fake.rc.thread_level == "multiple"      # asked for before MPI was initialised


def test_a_plain_process_loads_neither_mpi4py_nor_cupy():
    code = ("import sys, tinybn.distributed.world as w, tinybn.distributed.nccl; "
            "assert w.world() is w.SINGLE_PROCESS; "
            "print(sorted(m for m in ('mpi4py', 'cupy') if m in sys.modules))")
    p = run([sys.executable, "-c", code])
    assert (p.returncode, p.stdout.strip()) == (0, "[]"), p.stderr


def test_single_process_abort_exits_with_the_code():
    p = run([sys.executable, "-c", "from tinybn.distributed.world import SINGLE_PROCESS as w; "
                                   "print('before', flush=True); w.abort(3); print('after')"])
    assert (p.returncode, p.stdout) == (3, "before\n")


# ---- the single-process world: every collective is the identity ------------------------------

def test_single_process_collectives_are_the_identity():
    w = SINGLE_PROCESS
    assert (w.size, w.rank, w.local_rank, w.local_size, w.is_root, w.library, w.comm) == \
        (1, 0, 0, 1, True, "single process", None)
    x = np.arange(6, dtype=np.int32).reshape(2, 3)
    for op in ("sum", "max", "min"):
        y = w.allreduce(x, op=op)
        assert y is not x and y.dtype == np.int32 and np.array_equal(y, x)
    state = {"step": 7}
    assert w.bcast_object(state) is state and w.allgather_object(state) == [state]
    assert w.dup() is w and w.barrier() is None
    assert check_same_flags(w, {"batch_size": 64}) is None
    assert first_divergence(w, [("w", np.ones(2))]) is None


@pytest.mark.parametrize("array, op, message", [
    (np.ones(2), "mean", r"^allreduce: op must be one of sum, max, min, got 'mean'$"),
    (np.ones(2, bool), "sum", r"^allreduce: the sum of a bool array is not a bool; convert it to an integer dtype$"),
])
def test_allreduce_refuses_what_it_cannot_reduce(array, op, message):
    with pytest.raises(ValueError, match=message):
        SINGLE_PROCESS.allreduce(array, op=op)


def test_single_process_communicator_sums_a_world_of_one():
    comm = communicator(SINGLE_PROCESS, "numpy")
    assert (comm.name, comm.size) == ("single process", 1)
    buf = np.array([1.5, -2.0], np.float32)
    comm.sum_(buf)
    assert buf.tolist() == [1.5, -2.0]
    x = np.arange(6.0).reshape(3, 2).T
    y = comm.sum(x)
    assert y is not x and y.shape == (2, 3) and np.array_equal(y, x)
    with pytest.raises(ValueError, match="array_kind must be 'numpy' or 'cupy', got 'torch'"):
        communicator(SINGLE_PROCESS, "torch")
    with pytest.raises(ValueError, match="contiguous, writeable buffer"):
        comm.sum_(x)


def test_abort_on_error_does_nothing_in_a_world_of_one():
    with pytest.raises(KeyError, match="lost"):
        with abort_on_error(SINGLE_PROCESS):
            raise KeyError("lost")


# ---- under mpiexec -n 2 ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    """What each of the 2 ranks of world_collectives.py got: [rank 0's dict, rank 1's dict]."""
    out = tmp_path_factory.mktemp("world-collectives")
    p = mpiexec2("world_collectives.py", str(out))
    assert p.returncode == 0, p.stdout + p.stderr
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)]


def test_the_world_of_two_ranks(ranks):
    for r, got in enumerate(ranks):
        assert (got["size"], got["rank"], got["local_rank"], got["local_size"], got["is_root"]) == \
            (2, r, r, 2, r == 0)
        assert got["library"].startswith("MPICH ") and got["cached"] and got["thread_multiple"]


def test_allreduce_sum_max_min_of_known_arrays(ranks):
    # rank r contributes grid * (r + 1), ints * (r + 1), r + 0.5, [r, -r, 2.5], [r == 1, True, False]
    for got in ranks:
        assert got["sum_grid"] == (np.arange(6.0).reshape(2, 3) * 3).tolist() and got["sum_grid_shape"] == [2, 3]
        assert got["sum_ints"] == [3, -6, 9] and got["sum_ints_dtype"] == "int32"
        assert got["sum_scalar"] == 2.0 and got["sum_scalar_shape"] == []
        assert got["input_untouched"]
        assert got["max"] == [1.0, 0.0, 2.5] and got["min"] == [0.0, -1.0, 2.5]
        assert got["bool_max"] == [True, True, False] and got["bool_min"] == [False, True, False]


def test_objects_broadcast_and_gathered(ranks):
    for got in ranks:
        assert got["bcast_0"] == {"from": 0} and got["bcast_1"] == {"from": 1}
        assert got["allgather"] == [["rank", 0], ["rank", 10]]


def test_communicator_sums_in_place_and_into_a_new_array(ranks):
    for got in ranks:
        assert (got["comm_name"], got["comm_size"]) == ("MPI", 2)
        assert got["sum_in_place"] == [3.0] * 5 and got["sum_in_place_dtype"] == "float32"
        assert got["sum_in_place_same_buffer"]
        # rank r: arange(4).reshape(2, 2).T * (r + 1), summed: * 3
        assert got["sum_shaped"] == (np.arange(4).reshape(2, 2).T * 3).tolist()
        assert got["sum_shaped_dtype"] == "int64"


def test_a_dup_communicator_sums_in_a_thread_beside_the_main_threads_collectives(ranks):
    rounds = range(200)
    for got in ranks:
        assert got["thread_sums"] == [3.0 * i for i in rounds]
        assert got["main_sums"] == [[-2 * i, 1] for i in rounds]


def test_first_divergence_names_the_first_differing_array(ranks):
    for got in ranks:
        assert got["equal"] is None and got["equal_dict"] is None
        assert (got["second"], got["dtype_only"], got["shape_only"], got["extra_on_rank_1"]) == ("c", "e", "f", "g")


def test_check_same_flags_refuses_a_differing_batch_size_on_every_rank():
    p = mpiexec2("world_faults.py", "flags")
    message = ("error: rank 1 has --batch-size 64, rank 0 has 128; every rank must be started with the "
               "same flags")
    assert p.returncode == 1
    # every rank stops (JobExit), rank 0 alone says why, and nothing is aborted
    assert p.stderr.count(message) == 1, p.stderr
    assert "aborting" not in p.stderr and "MPI_Abort" not in p.stderr, p.stderr
    assert "passed the flag check" not in p.stdout


@pytest.mark.parametrize("case, shown", [
    ("bug", ["rank 1 of 2 failed; aborting the job:", "RuntimeError: a deliberate bug on rank 1"]),
    ("error", ["rank 1: error: a deliberate error on rank 1"]),
])
def test_an_error_on_one_rank_ends_the_job_blocked_in_a_collective(case, shown):
    p = mpiexec2("world_faults.py", case)             # TimeoutExpired here would be the hang
    assert p.returncode == 1, p.stdout + p.stderr
    assert all(text in p.stderr for text in shown), p.stderr
    assert ("Traceback" in p.stderr) == (case == "bug")          # a traceback for a bug only
    assert "rank 0 passed the barrier" not in p.stdout


# ---- NCCL (a CUDA GPU) ------------------------------------------------------------------------

def _no_nccl():
    """None if CuPy imports, sees a device and has NCCL, else why not."""
    try:
        import cupy
        from cupy.cuda import nccl
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as e:    # ImportError, or CUDARuntimeError when there is no driver
        return f"no CUDA GPU / CuPy with NCCL: {type(e).__name__}: {e}"
    if not getattr(nccl, "available", True):
        return "CuPy was built without NCCL"
    return None if count > 0 else "no CUDA GPU: CuPy sees 0 devices"


@pytest.mark.gpu
@pytest.mark.skipif(_no_nccl() is not None, reason=_no_nccl() or "")
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int32])
def test_nccl_communicator_on_a_world_of_one_gpu(dtype):
    """The device path end to end (datatypes, the stream and its event, in place): a world of one
    rank sums to the buffer itself; a world of two on one GPU is refused by NCCL, so the 2-rank
    sums are MPI's, proven above with the same Communicator contract."""
    import cupy
    from tinybn.distributed.nccl import NcclCommunicator
    comm = NcclCommunicator(SINGLE_PROCESS)
    assert (comm.name, comm.size, comm.device) == ("NCCL", 1, 0)
    host = np.arange(1000).astype(dtype) - 7
    buf = cupy.asarray(host)
    pointer = buf.data.ptr
    comm.sum_(buf)
    assert buf.data.ptr == pointer and np.array_equal(buf.get(), host)
    shaped = cupy.asarray(host.reshape(10, 100).T)
    total = comm.sum(shaped)
    assert isinstance(total, cupy.ndarray) and total.shape == (100, 10) and total.dtype == dtype
    assert np.array_equal(total.get(), host.reshape(10, 100).T)
    with pytest.raises(TypeError, match="NCCL communicator: sum_ needs a cupy"):
        comm.sum_(host)
