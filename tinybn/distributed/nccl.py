"""NcclCommunicator: sums cupy (device) buffers over the replicas with NCCL, with no host copy.

    comm = NcclCommunicator(world)        collective: every rank of `world` calls it
    comm.sum_(buf)                        buf (contiguous cupy array on this rank's GPU) := the
                                          elementwise sum over the ranks; blocking
    comm.sum(array) -> new cupy array     the same for any shape
    comm.name, comm.size, comm.device     "NCCL", the number of ranks, this rank's GPU

NCCL needs no launcher of its own: rank 0 draws a unique id (nccl.get_unique_id()) and MPI
broadcasts it (world.bcast_object), after which every rank joins the NCCL communicator of
world.size ranks with its MPI rank. Each rank drives GPU `world.local_rank` (communicator() in
world.py picks NCCL only when every rank of a host has a GPU of its own: NCCL refuses two ranks
on one GPU); the model's arrays must live on that GPU too (cupy.cuda.Device(local_rank).use()
before they are made).

Streams: the sum runs on a stream of the communicator's own, so that it never queues behind
(or holds up) unrelated work of the default stream. It must still start after whatever wrote
the buffer: an event recorded on the calling thread's current stream, which the own stream
waits for on the GPU (no host synchronisation). The host then waits for the sum to finish, so
sum_ returns with the result in place, as MPI's does. A caller on another thread than the one
that filled the buffer (the gradient thread) relies on the producer's work being on the stream
the event sees: CuPy's default, the legacy null stream, which every host thread shares.
One thread at a time per communicator: the gradient thread owns its own (DP11: dup()).

CuPy's device and current stream are per host thread, so sum_ selects the communicator's device
itself rather than trusting the caller's.

Floor: distributed (tests/test_layering.py); imports tinybn.arrays, and cupy (with
cupy.cuda.nccl) inside its functions only: importing this module loads no GPU library.
"""
from ..arrays import on_device

# numpy dtype name -> cupy.cuda.nccl's datatype constant
_NCCL_TYPES = {"int8": "NCCL_INT8", "uint8": "NCCL_UINT8", "int32": "NCCL_INT32", "uint32": "NCCL_UINT32",
               "int64": "NCCL_INT64", "uint64": "NCCL_UINT64", "float16": "NCCL_FLOAT16",
               "float32": "NCCL_FLOAT32", "float64": "NCCL_FLOAT64"}


def why_not_nccl(local_size):
    """None when this rank can sum with NCCL (CuPy was built with NCCL and this host has a GPU for
    each of its `local_size` ranks), else why not: the fallback communicator's name says it."""
    try:
        import cupy
        from cupy.cuda import nccl
    except ImportError:
        return "cupy has no NCCL"
    if not getattr(nccl, "available", True):
        return "cupy has no NCCL"
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception:          # CUDARuntimeError: no driver or no device
        count = 0
    return "ranks share a GPU" if local_size > count else None


class NcclCommunicator:
    """The replicas' sum on device buffers through cupy.cuda.nccl (see the module docstring)."""
    name = "NCCL"

    def __init__(self, world, device=None):
        import cupy
        from cupy.cuda import nccl
        self._cupy, self._nccl = cupy, nccl
        self.world, self.size = world, world.size
        self.device = world.local_rank if device is None else int(device)
        unique_id = world.bcast_object(nccl.get_unique_id() if world.is_root else None, root=0)
        with cupy.cuda.Device(self.device):
            self._comm = nccl.NcclCommunicator(world.size, unique_id, world.rank)
            self._stream = cupy.cuda.Stream(non_blocking=True)
            self._ready = cupy.cuda.Event(disable_timing=True)

    def __repr__(self):
        return f"NcclCommunicator(rank {self.world.rank} of {self.size}, GPU {self.device})"

    def sum_(self, buf):
        """buf := its elementwise sum over the ranks, in place; returns when the sum is done."""
        datatype = self._check(buf)
        if buf.size == 0:
            return
        cuda = self._cupy.cuda
        with cuda.Device(self.device):
            self._ready.record(cuda.get_current_stream())    # after whatever wrote buf
            self._stream.wait_event(self._ready)
            self._comm.allReduce(buf.data.ptr, buf.data.ptr, buf.size, datatype, self._nccl.NCCL_SUM,
                                 self._stream.ptr)
            self._stream.synchronize()

    def sum(self, array):
        """A new cupy array of `array`'s shape and dtype: its elementwise sum over the ranks."""
        with self._cupy.cuda.Device(self.device):
            flat = self._cupy.array(array, order="C", copy=True).reshape(-1)
        self.sum_(flat)
        return flat.reshape(array.shape)

    def _check(self, buf):
        """NCCL's datatype for `buf`, or a one-line error saying what is wrong with it."""
        if not on_device(buf):
            raise TypeError(f"NCCL communicator: sum_ needs a cupy (device) array, got "
                            f"{type(buf).__module__}.{type(buf).__name__}")
        if not (buf.flags.c_contiguous and buf.flags.writeable):
            raise ValueError("NCCL communicator: sum_ needs a contiguous, writeable buffer (it sums in place)")
        if buf.device.id != self.device:
            raise ValueError(f"NCCL communicator: the buffer is on GPU {buf.device.id}, the communicator on "
                             f"GPU {self.device} (local rank {self.world.local_rank}); make the model's arrays "
                             "after cupy.cuda.Device(world.local_rank).use()")
        name = _NCCL_TYPES.get(buf.dtype.name)
        if name is None:
            raise TypeError(f"NCCL communicator: no NCCL datatype for {buf.dtype.name}; "
                            f"supported: {', '.join(_NCCL_TYPES)}")
        return getattr(self._nccl, name)
