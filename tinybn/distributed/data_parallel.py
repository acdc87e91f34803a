"""DataParallel: what one replica adds to a training step when the world has K > 1 processes.

    dp = DataParallel(world, model, named_params, sync_bn=False, check_every=0)
    dp.describe(backend, batch_size)      the job's first log line
    state = dp.broadcast(state)           rank 0's start state, on every rank
    dp.backward(loss)                     backward, with the bucketed gradient allreduce
                                          overlapping it; leaves the mean of the K tower
                                          gradients in every .grad
    dp.after_update(step, tensors)        BN moving statistics averaged over the replicas
                                          (tower BN), the replica check every check_every steps
    stop, loss, acc = dp.agree(stop, loss, acc)   one allreduce: anyone's Ctrl-C, the mean
                                          tower loss and the accuracy of the global batch

The package docstring (tinybn/distributed/__init__.py) gives the semantics. Two
communicators, over the same ranks: the gradient one belongs to the buckets' thread,
which sums during backward; the other serves the main thread (sync BN's statistics, the
moving statistics, the per-step agreement), so that collectives of the two threads never
interleave on one communicator, where their order would differ from rank to rank.

Floor: distributed; imports nn (BatchNorm), arrays and this package's modules.
"""
import numpy as np

from ..arrays import array_module, on_device
from ..nn.batchnorm import BatchNorm
from . import world as world_lib
from .buckets import GradientBuckets
from .nccl import NcclCommunicator


def array_kind(named_params):
    """"cupy" when the parameters live on a GPU, else "numpy": which communicator sums them."""
    return "cupy" if named_params and on_device(named_params[0][1].data) else "numpy"


class DataParallel:
    """One replica of a synchronous data-parallel job (see the module docstring)."""

    def __init__(self, world, model, named_params, sync_bn=False, check_every=0, bucket_bytes=None):
        self.world, self.model, self.named = world, model, list(named_params)
        self.size = world.size
        kind = array_kind(self.named)
        self.main = world_lib.communicator(world, kind)
        self.gradient_communicator = world_lib.communicator(world.dup(), kind)
        self.sync_bn, self.check_every = bool(sync_bn), int(check_every)
        extra = {} if bucket_bytes is None else {"bucket_bytes": bucket_bytes}
        # Sync BN's backward sums on the main thread while the buckets sum on theirs: two
        # communicators at once, which MPI allows (MPI_THREAD_MULTIPLE, separate contexts) but
        # two NCCL communicators may deadlock on, their kernels queued in different orders on
        # different ranks. There the buckets wait for the end of backward.
        overlap = not (self.sync_bn and isinstance(self.gradient_communicator, NcclCommunicator))
        self.buckets = GradientBuckets(self.named, self.gradient_communicator, overlap=overlap, **extra)
        self.batch_norms = [m for _, m in model.named_modules() if isinstance(m, BatchNorm)]
        if self.sync_bn:
            for bn in self.batch_norms:
                if bn.renorm:
                    raise SystemExit("error: --sync-bn does not support batch renormalisation layers")
                bn.synchronized, bn.replica_group = True, self.main

    def describe(self, backend, batch_size):
        line = (f"data parallel: {self.size} replicas, backend {backend}, batch {batch_size} per replica "
                f"(global {self.size * batch_size}); gradients summed by {self.gradient_communicator.name} "
                f"({self.world.library})")
        if self.batch_norms:
            line += "; batch norm " + ("cross-replica (--sync-bn)" if self.sync_bn
                                       else "per replica, moving statistics averaged")
        return line

    def broadcast(self, obj):
        return self.world.bcast_object(obj, root=0)

    def backward(self, loss):
        self.buckets.prepare()
        loss.backward()
        self.buckets.finish()

    @property
    def stats(self):
        """The last step's allreduce figures (GradientBuckets.stats)."""
        return self.buckets.stats

    def after_update(self, step, tensors):
        """After the optimizer step and the EMA: tower BN's moving statistics averaged (sync BN's
        are equal already), then every check_every steps the check that what `tensors()`
        lists ([(name, array)]) is bitwise equal on every rank."""
        if not self.sync_bn:
            self.average_moving_statistics()
        if self.check_every and step % self.check_every == 0:
            name = world_lib.first_divergence(self.world, tensors())
            if name is not None:
                raise world_lib.JobExit(self.world, f"error: the replicas diverged by step {step}: {name} "
                                                    f"differs between ranks (--check-replicas {self.check_every}); "
                                                    "the last checkpoint holds rank 0's state")

    def average_moving_statistics(self):
        """Each BN buffer := its mean over the replicas, one allreduce per dtype."""
        buffers = [t for bn in self.batch_norms for _, t in bn.named_buffers()]
        by_dtype = {}
        for t in buffers:
            by_dtype.setdefault(t.data.dtype, []).append(t)
        for dtype, group in by_dtype.items():
            xp = array_module(group[0].data)
            flat = xp.concatenate([t.data.reshape(-1) for t in group])
            flat = self.main.sum(flat) / dtype.type(self.size)
            offset = 0
            for t in group:
                t.data = flat[offset:offset + t.data.size].reshape(t.data.shape)
                offset += t.data.size

    def agree(self, stop, loss, accuracy):
        """(whether any rank asked to stop, the mean tower loss, the global batch's accuracy):
        the same three numbers on every rank, from one allreduce."""
        total = self.world.allreduce(np.array([float(bool(stop)), loss, accuracy], np.float64), op="sum")
        return bool(total[0] > 0), float(total[1] / self.size), float(total[2] / self.size)

    def close(self):
        self.buckets.close()
