"""The MPI world: which processes take part, the collectives between them, and what to do
when one of them fails.

    launched_under_mpi(environ)   whether an MPI launcher started this process in a world of > 1
    world()                       this process's World (SINGLE_PROCESS unless launched under MPI)
    World                         size, rank, local_rank, local_size, is_root, library, comm;
                                  allreduce, bcast_object, allgather_object, barrier, abort, dup
    communicator(world, kind)     a Communicator that sums one array over the replicas (MPI on
                                  numpy arrays; NCCL, nccl.py, on cupy arrays with a GPU per rank)
    abort_on_error(world)         an error on any rank ends every rank (MPI_Abort)
    JobExit                       an error every rank raises alike: each exits by itself, no abort
    use_local_gpu(world, backend) the cupy backend: each rank of a host on a GPU of its own
    check_same_flags(world, flags)    refuses ranks started with different flags
    first_divergence(world, named_arrays)   the first array whose bytes differ between ranks

Whether we run distributed is read from the launcher's environment alone (mpiexec, mpirun and
srun export the world size to every process), so a plain `python -m tinybn.train` never imports
mpi4py, and this module imports neither mpi4py nor cupy: world() imports mpi4py on first use.
mpi4py is initialised with MPI_THREAD_MULTIPLE because two threads make MPI calls: the main
thread and the gradient thread, which sums buckets while backward still runs.

Why dup(): MPI matches collectives on one communicator by their order alone. If the gradient
thread and the main thread shared a communicator, rank 0 might start a gradient sum while rank
1 starts a sum of batch statistics, and the two would be matched with each other: wrong
numbers or a deadlock. A duplicated communicator is a separate matching context over the same
ranks, so each thread owns one and their collectives never meet.

Why MPI_Abort on an error: in an MPI job, a rank that raises and exits leaves the other ranks
blocked forever in their next collective, waiting for a partner that is gone. abort_on_error
turns an exception on one rank into MPI_Abort, which the launcher propagates: every rank ends
at once and the job exits non-zero.

Floor: distributed (tests/test_layering.py); imports tinybn.arrays and numpy, mpi4py inside
world() and the World methods, cupy and nccl.py inside communicator().
"""
import contextlib
import functools
import hashlib
import os
import sys
import traceback

import numpy as np

from ..arrays import array_module, on_device, to_numpy

# The launchers' variables, in the order they are consulted: the first one present decides.
_SIZE_VARIABLES = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE")           # MPICH/Hydra, Intel MPI; Open MPI
_SLURM_SIZE_VARIABLES = ("SLURM_STEP_NUM_TASKS", "SLURM_NTASKS")  # the step's size first
_PMI_VARIABLES = ("PMI_FD", "PMI_RANK", "PMI_SIZE", "PMI_JOBID", "PMIX_RANK")


def _launcher_size(environ):
    """(the variable that says we were launched, the world size it gives or None), or None."""
    for name in _SIZE_VARIABLES:
        if name in environ:
            return name, _int_variable(environ, name)
    # srun exports SLURM_PROCID in every step, but an sbatch script's own process has it too
    # (with SLURM_NTASKS of the whole allocation): only a PMI variable says srun started MPI ranks.
    if "SLURM_PROCID" in environ and any(name in environ for name in _PMI_VARIABLES):
        for name in _SLURM_SIZE_VARIABLES:
            if name in environ:
                return name, _int_variable(environ, name)
    if "PMIX_RANK" in environ:            # PMIx exports no size: mpi4py will tell
        return "PMIX_RANK", None
    return None


def _int_variable(environ, name):
    try:
        return int(environ[name])
    except ValueError:
        raise ValueError(f"the environment variable {name}={environ[name]!r} is not an integer") from None


def launched_under_mpi(environ=os.environ):
    """Whether an MPI launcher started this process in a world of more than one (a pure function
    of `environ`). A PMIx launch without SLURM exports no size: True, and world() asks MPI."""
    found = _launcher_size(environ)
    return found is not None and (found[1] is None or found[1] > 1)


_OPS = ("sum", "max", "min")


class World:
    """The processes of one job, over an mpi4py communicator (`comm`; None: the single process)."""

    def __init__(self, comm=None):
        self.comm = comm
        if comm is None:
            self.size, self.rank, self.local_rank, self.local_size = 1, 0, 0, 1
            self.library = "single process"
            return
        from mpi4py import MPI
        self.size, self.rank = comm.Get_size(), comm.Get_rank()
        local = comm.Split_type(MPI.COMM_TYPE_SHARED)      # the ranks that share this host's memory
        self.local_rank, self.local_size = local.Get_rank(), local.Get_size()
        local.Free()
        self.library = library_name(MPI.Get_library_version())

    @property
    def is_root(self):
        return self.rank == 0

    def __repr__(self):
        return f"World(rank {self.rank} of {self.size}, {self.library})"

    def allreduce(self, array, op="sum"):
        """A new host numpy array, the elementwise `op` ("sum", "max", "min") of `array` over the
        ranks (same shape and dtype; bool arrays take "max" (any) and "min" (all))."""
        if op not in _OPS:
            raise ValueError(f"allreduce: op must be one of {', '.join(_OPS)}, got {op!r}")
        host = np.asarray(to_numpy(array), order="C")
        if host.dtype == np.bool_ and op == "sum":
            raise ValueError("allreduce: the sum of a bool array is not a bool; convert it to an integer dtype")
        if self.comm is None:
            return host.copy()
        from mpi4py import MPI
        if host.dtype == np.bool_:       # MPI defines MAX and MIN for numbers only
            mpi_op = MPI.LOR if op == "max" else MPI.LAND
        else:
            mpi_op = {"sum": MPI.SUM, "max": MPI.MAX, "min": MPI.MIN}[op]
        result = np.empty_like(host)
        self.comm.Allreduce(host, result, op=mpi_op)
        return result

    def bcast_object(self, obj, root=0):
        """Rank `root`'s `obj` (any picklable object) on every rank."""
        return obj if self.comm is None else self.comm.bcast(obj, root=root)

    def allgather_object(self, obj):
        """[rank 0's obj, rank 1's obj, ...] on every rank."""
        return [obj] if self.comm is None else self.comm.allgather(obj)

    def barrier(self):
        if self.comm is not None:
            self.comm.Barrier()

    def abort(self, code=1):
        """Ends every rank of the job now, with exit status `code` (MPI_Abort; the single
        process just exits). Buffered output is flushed first: MPI_Abort does not."""
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        if self.comm is None:
            os._exit(code)
        self.comm.Abort(code)

    def dup(self):
        """The same ranks on a duplicated communicator: its collectives never match this one's
        (the gradient thread's own; see the module docstring)."""
        return self if self.comm is None else World(self.comm.Dup())


SINGLE_PROCESS = World(None)


def library_name(version):
    """"MPICH 5.0.2" from MPI_Get_library_version's "MPICH Version:   5.0.2\\n...", "Open MPI
    v4.1.5" from "Open MPI v4.1.5, package: ...": its first line up to a comma, without "Version:"."""
    first = version.strip().splitlines()[0].split(",")[0] if version.strip() else "unknown MPI"
    return " ".join(word for word in first.split() if word != "Version:")


@functools.lru_cache(maxsize=None)
def world():
    """This process's World, made once: SINGLE_PROCESS unless launched_under_mpi(), else one
    over MPI_COMM_WORLD, initialised with MPI_THREAD_MULTIPLE."""
    try:
        found = _launcher_size(os.environ)
    except ValueError as e:
        raise SystemExit(f"error: {e}") from None
    if not launched_under_mpi(os.environ):
        return SINGLE_PROCESS
    variable = f"{found[0]}={os.environ[found[0]]}"
    try:
        import mpi4py
    except ImportError:
        raise SystemExit(f"error: launched by an MPI launcher ({variable}) but mpi4py is not installed; "
                         "pip install -e '.[mpi]'") from None
    mpi4py.rc.threads, mpi4py.rc.thread_level = True, "multiple"
    from mpi4py import MPI
    library = library_name(MPI.Get_library_version())
    size = MPI.COMM_WORLD.Get_size()
    if size == 1 and found[1] is None:
        return SINGLE_PROCESS              # a PMIx launch of one process
    if size != found[1] and found[1] is not None:
        # The classic mix-up: mpi4py built against another MPI than the launcher's. Each process
        # would then be a world of its own, K independent runs writing the same files.
        raise SystemExit(f"error: the launcher says {variable} but MPI ({library}) sees a world of {size}: "
                         "mpiexec and mpi4py come from different MPI libraries; launch with the mpiexec "
                         "of the MPI that mpi4py was built against")
    if MPI.Query_thread() < MPI.THREAD_MULTIPLE:
        raise SystemExit(f"error: {library} does not provide MPI_THREAD_MULTIPLE, which the gradient "
                         "thread needs (it sums while the main thread makes MPI calls too); use an MPI "
                         "built with thread support, e.g. pip install mpich")
    return World(MPI.COMM_WORLD)


class Communicator:
    """Sums one array over the replicas: `sum_(buf)` in place (a contiguous array, blocking;
    afterwards every rank holds the elementwise sum), `sum(array)` into a new array of any shape,
    of the same kind (numpy or cupy) and dtype. `name` says how; `size` is the number of replicas."""
    name = "single process"

    def __init__(self, world):
        self.world, self.size = world, world.size

    def sum_(self, buf):
        _check_buffer(buf, self.name)

    def sum(self, array):
        flat = array_module(array).array(array, order="C", copy=True).reshape(-1)
        self.sum_(flat)
        return flat.reshape(array.shape)


class MpiCommunicator(Communicator):
    """MPI_Allreduce in place on host (numpy) buffers."""
    name = "MPI"

    def sum_(self, buf):
        from mpi4py import MPI
        _check_buffer(buf, self.name)
        self.world.comm.Allreduce(MPI.IN_PLACE, buf, op=MPI.SUM)


class HostCopyCommunicator(MpiCommunicator):
    """cupy buffers summed by MPI on host copies: device -> host, MPI_Allreduce, host -> device."""

    def __init__(self, world, reason):
        super().__init__(world)
        self.name = f"MPI on host buffers ({reason})"

    def sum_(self, buf):
        _check_buffer(buf, self.name, device=True)
        host = buf.get()
        super().sum_(host)
        buf.set(host)


def _check_buffer(buf, name, device=False):
    if on_device(buf) != device:
        kind = "a cupy (device)" if device else "a numpy (host)"
        raise TypeError(f"{name} communicator: sum_ needs {kind} array, got {type(buf).__module__}."
                        f"{type(buf).__name__}")
    if not (buf.flags.c_contiguous and buf.flags.writeable):
        raise ValueError(f"{name} communicator: sum_ needs a contiguous, writeable buffer (it sums in place)")


def communicator(world, array_kind="numpy"):
    """The Communicator for `world` and arrays of `array_kind` ("numpy" or "cupy"). A collective:
    every rank must call it. cupy: NCCL when every rank of every host has a GPU of its own
    (local_size <= the host's GPU count; rank uses GPU local_rank) and CuPy has NCCL, else MPI
    on host copies, its name saying why. All ranks agree on the choice, or they would deadlock."""
    if array_kind not in ("numpy", "cupy"):
        raise ValueError(f"communicator: array_kind must be 'numpy' or 'cupy', got {array_kind!r}")
    if world.size == 1:
        return Communicator(world)
    if array_kind == "numpy":
        return MpiCommunicator(world)
    from . import nccl
    reasons = [r for r in world.allgather_object(nccl.why_not_nccl(world.local_size)) if r]
    if reasons:
        return HostCopyCommunicator(world, reasons[0])
    return nccl.NcclCommunicator(world)


class JobExit(SystemExit):
    """SystemExit raised by every rank of the job at the same point with the same message (a
    refused flag, a refused checkpoint, a diverged loss): no rank waits for another, so each
    exits by itself with the message printed by rank 0 alone, and abort_on_error lets it pass."""

    def __init__(self, world, message):
        super().__init__(message if world.is_root else 1)


def use_local_gpu(world, backend):
    """Under the cupy backend, make GPU local_rank this rank's current device when the host has a
    GPU for each of its ranks (the NCCL case of communicator()); with fewer GPUs the ranks share
    the current one. Before the model is built: its arrays are allocated on the current device."""
    if backend != "cupy" or world.size == 1:
        return
    import cupy
    if world.local_size <= cupy.cuda.runtime.getDeviceCount():
        cupy.cuda.Device(world.local_rank).use()


@contextlib.contextmanager
def abort_on_error(world):
    """Any exception but SystemExit(0) raised inside: this rank prints its error (the one-line
    message of a SystemExit("error: ..."); the traceback of any other exception, a bug) and calls
    world.abort(code), which ends every rank of the job. A world of one: does nothing."""
    if world.size == 1:
        yield
        return
    try:
        yield
    except JobExit:
        raise
    except SystemExit as e:
        if e.code is None or e.code == 0:
            raise
        if not isinstance(e.code, int):
            print(f"rank {world.rank}: {e.code}", file=sys.stderr)
        world.abort(e.code if isinstance(e.code, int) else 1)
    except BaseException:          # a bug, KeyboardInterrupt: the others must not wait for us
        print(f"rank {world.rank} of {world.size} failed; aborting the job:", file=sys.stderr)
        traceback.print_exc()
        world.abort(1)


def _as_flag(key):
    """--batch-size for "batch_size"; a key with a space names no flag and is shown as it is
    ("the training set's size")."""
    return key if " " in key else "--" + key.replace("_", "-")


def check_same_flags(world, flags):
    """Refuses, on every rank with the same message, ranks started with other flags than rank 0:
    SystemExit("error: rank 1 has --batch-size 64, rank 0 has 128; ..."). `flags`: {attribute
    name: value}. The first differing rank, then the first differing flag in rank 0's order."""
    gathered = world.allgather_object(dict(flags))
    root = gathered[0]
    for rank, theirs in enumerate(gathered[1:], start=1):
        for key in list(root) + [k for k in theirs if k not in root]:
            if key not in theirs or key not in root or theirs[key] != root[key]:
                mine = f"{_as_flag(key)} {theirs[key]}" if key in theirs else f"no {_as_flag(key)}"
                zero = root[key] if key in root else f"no {_as_flag(key)}"
                raise JobExit(world, f"error: rank {rank} has {mine}, rank 0 has {zero}; every rank must be "
                                     "started with the same flags")


def first_divergence(world, named_arrays):
    """None when every array of `named_arrays` ([(name, array)] or {name: array}) is bitwise equal
    on every rank, else the name of the first (in the given order) that differs somewhere.
    Compares a blake2b digest of each array's dtype, shape and bytes, not the arrays themselves."""
    items = list(named_arrays.items() if hasattr(named_arrays, "items") else named_arrays)
    if world.size == 1:
        return None
    digests = []
    for name, array in items:
        host = np.asarray(to_numpy(array), order="C")
        digest = hashlib.blake2b(f"{host.dtype.str}{host.shape}".encode(), digest_size=16)
        digest.update(host)
        digests.append((name, digest.digest()))
    everyone = world.allgather_object(digests)
    reference = everyone[0]        # every rank reads the same lists, so all return the same name
    for i, (name, _) in enumerate(reference):
        if any(len(theirs) <= i or theirs[i] != reference[i] for theirs in everyone):
            return name
    longer = [theirs for theirs in everyone if len(theirs) > len(reference)]
    return longer[0][len(reference)][0] if longer else None
