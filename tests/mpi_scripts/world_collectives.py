"""Run by tests/test_distributed_world.py under `mpiexec -n 2`: every collective of
tinybn.distributed.world on known inputs; each rank writes what it got to OUT/rank<r>.json,
and the test compares both files with the closed forms.

    mpiexec -n 2 python tests/mpi_scripts/world_collectives.py OUT
"""
import json
import os
import sys
import threading

import numpy as np

from tinybn.distributed.world import check_same_flags, communicator, first_divergence, world

ROUNDS = 200        # collectives per thread in the two-thread check


def collectives(w):
    r = w.rank
    grid = np.arange(6, dtype=np.float64).reshape(2, 3) * (r + 1)
    ints = np.array([1, -2, 3], np.int32) * (r + 1)
    sums = {"grid": w.allreduce(grid), "ints": w.allreduce(ints),
            "scalar": w.allreduce(np.float64(r + 0.5))}
    picks = np.array([r, -r, 2.5])
    flags = np.array([r == 1, True, False])
    return {
        "sum_grid": sums["grid"].tolist(), "sum_grid_shape": list(sums["grid"].shape),
        "sum_ints": sums["ints"].tolist(), "sum_ints_dtype": str(sums["ints"].dtype),
        "sum_scalar": float(sums["scalar"]), "sum_scalar_shape": list(sums["scalar"].shape),
        "input_untouched": grid.tolist() == (np.arange(6.0).reshape(2, 3) * (r + 1)).tolist(),
        "max": w.allreduce(picks, op="max").tolist(), "min": w.allreduce(picks, op="min").tolist(),
        "bool_max": w.allreduce(flags, op="max").tolist(), "bool_min": w.allreduce(flags, op="min").tolist(),
        "bcast_0": w.bcast_object({"from": r}), "bcast_1": w.bcast_object({"from": r}, root=1),
        "allgather": w.allgather_object(("rank", r * 10)),
    }


def communicators(w):
    comm = communicator(w, "numpy")
    buf = np.full(5, w.rank + 1.0, np.float32)
    before = buf.__array_interface__["data"][0]
    comm.sum_(buf)
    shaped = np.arange(4, dtype=np.int64).reshape(2, 2).T * (w.rank + 1)    # not C-contiguous
    total = comm.sum(shaped)
    return {"comm_name": comm.name, "comm_size": comm.size, "sum_in_place": buf.tolist(),
            "sum_in_place_same_buffer": buf.__array_interface__["data"][0] == before,
            "sum_in_place_dtype": str(buf.dtype), "sum_shaped": total.tolist(),
            "sum_shaped_dtype": str(total.dtype)}


def two_threads(w):
    """The gradient thread's pattern: a dup()'ed world's communicator summing in a thread while
    the main thread runs its own collectives on the original world."""
    gradient = communicator(w.dup(), "numpy")
    from_thread, from_main = [], []

    def thread():
        for i in range(ROUNDS):
            buf = np.array([i * (w.rank + 1.0)])
            gradient.sum_(buf)
            from_thread.append(float(buf[0]))

    t = threading.Thread(target=thread)
    t.start()
    for i in range(ROUNDS):
        from_main.append(w.allreduce(np.array([-i, w.rank], np.int64)).tolist())
    t.join()
    return {"thread_sums": from_thread, "main_sums": from_main}


def divergence(w):
    r = w.rank
    same = [("a", np.zeros((2, 3))), ("b", np.arange(4, dtype=np.float32))]
    return {
        "equal": first_divergence(w, same),
        "equal_dict": first_divergence(w, dict(same)),
        "second": first_divergence(w, same + [("c", np.full(3, float(r))), ("d", np.full(3, float(r)))]),
        "dtype_only": first_divergence(w, same + [("e", np.zeros(2, np.float32 if r == 0 else np.int32))]),
        "shape_only": first_divergence(w, same + [("f", np.zeros((2, 3) if r == 0 else (3, 2)))]),
        "extra_on_rank_1": first_divergence(w, same + [("g", np.ones(1))] * r),
    }


def main(out):
    from mpi4py import MPI
    w = world()
    check_same_flags(w, {"model": "tutorial", "batch_size": 128})      # equal: returns
    result = {"size": w.size, "rank": w.rank, "local_rank": w.local_rank, "local_size": w.local_size,
              "is_root": w.is_root, "library": w.library, "cached": world() is w,
              "thread_multiple": MPI.Query_thread() == MPI.THREAD_MULTIPLE}
    for part in (collectives, communicators, two_threads, divergence):
        result.update(part(w))
    w.barrier()
    with open(os.path.join(out, f"rank{w.rank}.json"), "w") as f:
        json.dump(result, f)


if __name__ == "__main__":
    main(sys.argv[1])
