"""Run by tests/test_distributed_world.py under `mpiexec -n 2`: the fault and agreement helpers
of tinybn.distributed.world, one case per launch (each ends the job).

    flags   rank 1 is started with another --batch-size: check_same_flags refuses on both ranks
            (a JobExit: inside abort_on_error, each rank exits by itself, nothing is aborted)
    bug     rank 1 raises a RuntimeError inside abort_on_error while rank 0 waits in a barrier
    error   the same with SystemExit("error: ..."), a one-line error
"""
import sys

from tinybn.distributed.world import abort_on_error, check_same_flags, world


def main(case):
    w = world()
    with abort_on_error(w):
        if case == "flags":
            check_same_flags(w, {"model": "tutorial", "batch_size": 128 if w.rank == 0 else 64, "seed": 1})
            print(f"rank {w.rank} passed the flag check", flush=True)
            return
        if w.rank == 1:
            if case == "bug":
                raise RuntimeError("a deliberate bug on rank 1")
            raise SystemExit("error: a deliberate error on rank 1")
        w.barrier()             # never completes: rank 1 is gone
        print("rank 0 passed the barrier", flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
