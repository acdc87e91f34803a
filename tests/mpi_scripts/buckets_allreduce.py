"""Run by tests/test_gradient_buckets.py under `mpiexec -n 2`: GradientBuckets on the tutorial
model in float64, each rank on its own 8 random images, against a per-tensor allreduce of the
plain gradients (bitwise) and against the mean of both ranks' gradients (rank 1 sends its own to
rank 0, bitwise). Each rank prints one line; the exit status is 1 when something differs.

    mpiexec -n 2 python tests/mpi_scripts/buckets_allreduce.py
"""
import sys

import numpy as np
from mpi4py import MPI

from tinybn import Tensor
from tinybn.distributed.buckets import GradientBuckets
from tinybn.models import cifar10


class MpiSum:
    """What GradientBuckets needs of a communicator: .size and an in-place MPI_Allreduce."""

    def __init__(self, comm):
        self.comm, self.size = comm, comm.Get_size()

    def sum_(self, flat):
        self.comm.Allreduce(MPI.IN_PLACE, flat, op=MPI.SUM)


def backward(model, images, labels):
    model.zero_grad()
    model.loss(model(Tensor(images)), labels).backward()


def main():
    world = MPI.COMM_WORLD
    rank, size = world.Get_rank(), world.Get_size()
    model = cifar10.tutorial(np.random.default_rng(0), dtype=np.float64)      # the same on every rank
    rng = np.random.default_rng(1 + rank)                                       # a batch of its own
    images, labels = rng.standard_normal((8, 24, 24, 3)), rng.integers(0, 10, 8)
    named = list(model.named_parameters())

    backward(model, images, labels)
    local = {name: p.grad.copy() for name, p in named}
    per_tensor = {}
    for name, g in local.items():
        total = np.array(g, order="C", copy=True)
        world.Allreduce(MPI.IN_PLACE, total, op=MPI.SUM)
        per_tensor[name] = total / np.float64(size)

    buckets = GradientBuckets(named, MpiSum(world.Dup()), overlap=True)
    buckets.prepare()
    backward(model, images, labels)
    buckets.finish()
    buckets.close()
    bucketed = {name: p.grad for name, p in named}

    differ = [name for name in local if bucketed[name].tobytes() != per_tensor[name].tobytes()]
    others = world.gather(local, root=0)
    if rank == 0:
        mean = {name: sum(g[name] for g in others) / np.float64(size) for name in local}
        differ += [f"{name} (mean)" for name in local if bucketed[name].tobytes() != mean[name].tobytes()]
    if buckets.stats["buckets"] < 2:
        differ.append(f"only {buckets.stats['buckets']} bucket(s): nothing bucketed")
    if differ:
        print(f"rank {rank}: DIFFERS: {', '.join(differ)}", flush=True)
        return 1
    check = "per-tensor allreduce" + (" and the mean of both ranks' gradients" if rank == 0 else "")
    print(f"rank {rank}: {buckets.stats['buckets']} buckets, overlapped: equal to the {check}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
