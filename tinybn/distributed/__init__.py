"""Synchronous data parallelism on MPI: the CIFAR-10 tutorial's multi-GPU towers, one process each.

    mpiexec -n K python -m tinybn.train cifar ...      K replicas on this machine
    mpiexec -f hosts -n K python -m tinybn.train ...   across machines (Hydra's host file)
    srun -n K python -m tinybn.train ...               under SLURM

A world of more than one process turns data parallelism on by itself; a plain
`python -m tinybn.train` is a world of one and runs as it always has. What each rank
does, with the names of TF's cifar10_multi_gpu_train.py:

Start       rank 0 restores --train-dir's newest checkpoint (if any); its parameters, BN
            moving statistics, optimizer slots, EMA shadows and input position are then
            broadcast, so every tower starts from the same state. Only rank 0 reads or
            writes --train-dir.
Batch       --batch-size is per replica, as each tower's: a step consumes K * batch_size
            images of the global input order (below).
Gradients   each rank computes its tower loss (mean cross-entropy of its slice + weight
            decay) and its gradients. They are summed over the replicas by allreduce and
            divided by K: the mean of the tower gradients (average_gradients in the
            tutorial). The sums run in a few flat buckets (buckets.py), each started as soon
            as backward has produced all its gradients, so communication overlaps the rest
            of backward, as PyTorch's DistributedDataParallel and Horovod do.
Update      the optimizer step and the moving averages of the weights (EMA) run on every
            rank on identical numbers, so the parameters stay bitwise identical without
            being sent again. --check-replicas N verifies it every N steps (a hash per
            tensor) and stops naming the first tensor that diverged.
Schedule    the learning rate counts global steps; the tutorial schedule's decay_steps is
            int(50000 / batch_size / K * 350), as in cifar10_multi_gpu_train.py.
Batch norm  by default each tower normalises with its own batch statistics, and after each
            step the moving statistics are averaged over the replicas, so every rank holds
            the same state. --sync-bn normalises with cross-replica statistics instead
            (tinybn.ops.sync_batch_norm: an allreduce of the sums, then of the centred sums of
            squares); K replicas of b images then compute what one process computes on K*b.
Input       the global order is the single-process one with a batch of K * batch_size:
            global batch t is cut into K contiguous slices and rank r takes slice r,
            preprocessing only its own examples. A checkpoint records that one global
            position. Resuming with another K is refused, with the K the checkpoint needs:
            the global batch, the schedule and hence the run would be different ones.
Files       checkpoints, event files, train.csv and the progress bar are rank 0's alone,
            written atomically as in one process. Evaluation is unchanged: any process, any
            backend, on the same checkpoint files.
Faults      an error on any rank aborts the whole job (MPI_Abort), so no rank waits forever
            in a collective for one that is gone; if a rank is killed, mpiexec ends the
            others. The last checkpoint stays valid and the same command resumes from it.
            Ctrl-C or SIGTERM is agreed on each step (an allreduce of the stop flags): every
            rank finishes the step, rank 0 saves, all exit 0. Flags that differ between
            ranks (model, batch size, seed, data set size...) are refused at start, naming
            the rank and the flag.

Modules: world.py (the MPI world, communicators, the fault and agreement helpers),
nccl.py (GPU buffers summed by NCCL), buckets.py (the bucketed, overlapped gradient
allreduce), data_parallel.py (what the trainer calls).

Floor: distributed (tests/test_layering.py), between data and training; imports from
tinybn only the floors below it, and mpi4py and cupy only when a job asks for them.
"""
