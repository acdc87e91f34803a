"""Run under mpiexec by tests/test_data_parallel.py: K replicas of TrainingRun.train_step on a
fixed stream of global batches, each rank on its contiguous slice; rank r writes its final
run state (parameters, BN statistics, optimizer slots, EMA shadows) to OUT/rank<r>.npz.

    python dp_train_worker.py OUT MODEL DTYPE STEPS GLOBAL_BATCH SYNC_BN BUCKET_BYTES [CHECK_EVERY PERTURB_STEP]

CHECK_EVERY is --check-replicas; from PERTURB_STEP on, rank 1 nudges one weight after each step,
the divergence --check-replicas must catch.

The same program with no MPI launcher is the single-process reference: one replica on
the whole global batch. The global batches depend only on the step (global_batch below).
"""
import sys
import types

import numpy as np

from tinybn.distributed import world as world_lib
from tinybn.distributed.data_parallel import DataParallel
from tinybn.models import cifar10 as cifar_models
from tinybn.tasks.cifar import EMA_DECAY, make_optimizer
from tinybn.training import TrainingRun


def global_batch(step, size, dtype):
    rng = np.random.default_rng([7, step])
    return rng.standard_normal((size, 24, 24, 3)).astype(dtype), rng.integers(0, 10, size).astype(np.int32)


PERTURBED = "net/local4/kernel"


def build_run(model_name, dtype, batch_size, sync_bn, world, train_dir, bucket_bytes=None, check_every=0):
    args = types.SimpleNamespace(backend="numpy", train_dir=train_dir, max_to_keep=2, batch_size=batch_size,
                                 sync_bn=sync_bn, check_replicas=check_every, seed=0, model=model_name, max_steps=0)

    class Run(TrainingRun):
        def meta(self):
            return {"task": "cifar", "model": model_name, "batch_size": batch_size, "seed": 0}

    model = cifar_models.MODELS[model_name](rng=np.random.default_rng(0), dtype=dtype)
    run = Run(args, model, lambda named: make_optimizer(model_name, named, batch_size, world.size),
              ema_decay=EMA_DECAY, world=world)
    if bucket_bytes is not None and run.parallel is not None:      # the buckets under test
        run.parallel.close()
        run.parallel = DataParallel(world, model, run.named, sync_bn=sync_bn, bucket_bytes=bucket_bytes,
                                    check_every=check_every)
    return run


def train(run, steps, size, dtype, world, perturb_step=None):
    b = size // world.size
    for step in range(steps):
        images, labels = global_batch(step, size, dtype)
        rows = slice(world.rank * b, (world.rank + 1) * b)
        if perturb_step is not None and step >= perturb_step and world.rank == 1:
            weight = dict(run.named)[PERTURBED]
            weight.data = weight.data + weight.data.dtype.type(1e-6)
        run.train_step(images[rows], labels[rows])
    return dict(run.replica_tensors())     # the state every rank holds alike (not rank 0's loss averages)


def main(out, model_name, dtype, steps, size, sync_bn, bucket_bytes, check_every="0", perturb_step="-1"):
    world = world_lib.world()
    dtype, steps, size, bucket_bytes = np.dtype(dtype), int(steps), int(size), int(bucket_bytes)
    run = build_run(model_name, dtype, size // world.size, sync_bn == "1", world, f"{out}/dir{world.rank}",
                    None if bucket_bytes < 0 else bucket_bytes, int(check_every))
    with world_lib.abort_on_error(world):
        state = train(run, steps, size, dtype, world, None if int(perturb_step) < 0 else int(perturb_step))
    np.savez(f"{out}/rank{world.rank}.npz", **state)


if __name__ == "__main__":
    main(*sys.argv[1:])
