"""GradientBuckets: the tower gradients averaged over the replicas in a few flat buffers, each
bucket's sum started during backward as soon as backward has produced all its gradients.

    buckets = GradientBuckets(model.named_parameters(), communicator)
    buckets.prepare(); loss.backward(); buckets.finish()    # each p.grad := its mean over the replicas
    buckets.stats                                           # the step's allreduce time, wait, buckets, bytes
    buckets.close()                                         # stops the background thread and unhooks

`communicator` is any object with `.size` (the number of replicas) and `.sum_(flat)` (a blocking
in-place elementwise sum of a contiguous 1-D array over the replicas; world.py's Communicator).
Every replica must call the same methods in the same order, as for any collective.

Layout. The parameters are taken in reverse order, the order in which backward produces their
gradients (the last layer first), and packed into flat buckets of one dtype each; a bucket is
closed once it holds bucket_bytes or more, so a tensor is never split (bucket_bytes=0: one
bucket per tensor). Each flat buffer holds the bucket's gradients, then one element per
parameter: 1 if this replica gave it a gradient in this step, else 0. Replicas of one model build
the same layout, and bucket i goes to the communicator only after buckets 0..i-1, so the
replicas' calls pair up in whatever order their gradients arrive (PyTorch DDP's Reducer keeps
the same rule).

Overlap. Each parameter's post-accumulate-grad hook (Tensor.register_post_accumulate_grad_hook)
marks it ready. When all of a bucket's parameters are ready, the main thread copies their
gradients into the bucket's buffer and queues it for a background thread, the only caller of
communicator.sum_, which sums it while backward goes on with the layers below: the scheme of
PyTorch's DistributedDataParallel and of Horovod's background thread. overlap=False sums every
bucket in finish() instead, on the calling thread (the reference the tests compare with).

finish() queues the buckets not yet sent (a parameter that got no gradient in this backward
contributes zeros), waits for all of them, then sets each parameter's .grad to its slice of the
sum divided by the number of replicas, in its shape and dtype: the mean of the tower gradients
(average_gradients in TF's cifar10_multi_gpu_train.py). The division makes a new array, so the
buffers are reused from step to step, and no graph saved the old .grad (nothing to
mark_modified). A parameter that no replica gave a gradient (its flags sum to 0) keeps its
.grad as it was: None after zero_grad, as in one process, where the optimizer then skips it
(PyTorch's DDP also leaves a parameter unused on every rank alone).

Errors. An exception raised by sum_ is kept by the thread and raised again by finish(), with a
note naming the bucket; the thread sums no later bucket of that step, so no collective runs out
of turn after a failed one. finish() never waits for a bucket that will not come.

GPU. The buffers are allocated with the parameters' array module (tinybn.backend.array_module),
so cupy parameters are summed on device buffers. The copy into a buffer runs on the main
thread's current stream; an event recorded after it is waited for on the background thread's
stream before sum_, and one recorded after sum_ on the main thread's before the division, so
neither side reads a half-written buffer, whatever streams the two threads use.

Floor: distributed (tests/test_layering.py); imports tinybn.tensor, tinybn.backend's array
helpers and the standard library; cupy only through array_module, when handed cupy arrays.
"""
import queue
import threading
import time

from ..backend import array_module, on_device, to_numpy
from ..tensor import Tensor

# The bucket size trades the latency of each sum_ call (a few microseconds over shared memory,
# tens across a network, a kernel launch for NCCL) against the overlap: a bucket can only start
# once its last gradient exists, and the last bucket is never overlapped. PyTorch's DDP uses
# 25 MiB (1 MiB for its first bucket), sized for large models on fast links. Our models hold
# 0.1-25M parameters (0.5-100 MB in float32); at 2 MiB the tutorial model's dense layers (3.7 MB)
# form the first bucket, summed while conv2 and conv1 run backward, and its convolutions
# (0.4 MB) the second; resnet_v2_50 gets 26 buckets of about 4 MB, where the per-call latency
# is about 1% of the transfer at 10 Gb/s.
BUCKET_BYTES = 2 * 2**20

_STOP = object()        # queued by close(): the thread ends


class _Bucket:
    """Some parameters' gradients (and used flags) in one flat buffer, and this step's state."""

    def __init__(self, index, named):
        self.index = index
        self.names = [name for name, _ in named]
        self.params = [p for _, p in named]
        self.slices, start = [], 0
        for p in self.params:
            self.slices.append(slice(start, start + p.size))
            start += p.size
        self.count = start          # gradient elements; the used flags follow
        self.flat = array_module(self.params[0].data).zeros(start + len(self.params), self.params[0].dtype)
        self.done = threading.Event()
        self.reset()

    def reset(self):
        self.ready = [False] * len(self.params)
        self.pending = len(self.params)
        self.sent, self.seconds = False, 0.0
        self.copied = self.summed = None      # GPU events: the buffer filled / summed
        self.done.clear()

    def fill(self):
        """Copy this step's gradients into the buffer (zeros where none came), then the flags."""
        xp = array_module(self.flat)
        for p, where, ready in zip(self.params, self.slices, self.ready):
            if ready and p.grad is not None:
                self.flat[where] = p.grad.reshape(-1)
            else:
                self.flat[where] = 0
        self.flat[self.count:] = xp.asarray(self.ready, dtype=self.flat.dtype)
        self.copied = _event_after_writes(self.flat)

    def describe(self):
        names = ", ".join(self.names[:3]) + (f" and {len(self.names) - 3} more" if len(self.names) > 3 else "")
        return f"bucket {self.index} ({names})"


class GradientBuckets:
    """Bucketed, overlapped averaging of the parameters' gradients (see the module docstring)."""

    def __init__(self, named_params, communicator, bucket_bytes=BUCKET_BYTES, overlap=True):
        named = list(named_params)
        _check_arguments(named, communicator, bucket_bytes)
        self.communicator, self.size, self.overlap = communicator, int(communicator.size), bool(overlap)
        self.buckets = [_Bucket(i, group) for i, group in enumerate(_layout(named, bucket_bytes))]
        self._where = {id(p): (b, i) for b in self.buckets for i, p in enumerate(b.params)}
        self._armed = False         # between prepare() and finish(): hooks count
        self._next = 0              # the first bucket not yet sent
        self._error = None          # the first exception sum_ raised in this step
        self._closed = False
        self.stats = {"allreduce_seconds": 0.0, "wait_seconds": 0.0, "buckets": len(self.buckets),
                      "bytes": sum(b.flat.nbytes for b in self.buckets)}
        self._queue = queue.SimpleQueue()
        self._thread = None
        if self.overlap:
            self._thread = threading.Thread(target=self._serve, name="tinybn-gradient-allreduce", daemon=True)
            self._thread.start()
        self._handles = [p.register_post_accumulate_grad_hook(self._on_ready) for _, p in named]

    def prepare(self):
        """Before backward(): every parameter not ready yet (a step that never finished is drained)."""
        if self._closed:
            raise RuntimeError("GradientBuckets.prepare() after close()")
        self._wait(self.buckets[:self._next])
        for b in self.buckets:
            b.reset()
        self._next, self._error, self._armed = 0, None, True

    def finish(self):
        """After backward(): every bucket summed, each used parameter's .grad := sum / size."""
        if not self._armed:
            raise RuntimeError("GradientBuckets.finish() without prepare() before backward()")
        self._armed = False
        start = time.perf_counter()
        self._send()
        self._wait(self.buckets)
        self.stats["wait_seconds"] = time.perf_counter() - start
        self.stats["allreduce_seconds"] = sum(b.seconds for b in self.buckets)
        if self._error is not None:
            raise self._error
        for b in self.buckets:
            _wait_for(b.summed, b.flat)
            used = to_numpy(b.flat[b.count:])
            size = b.flat.dtype.type(self.size)
            for p, where, replicas in zip(b.params, b.slices, used):
                if replicas > 0:
                    p.grad = (b.flat[where] / size).reshape(p.shape)

    def close(self):
        """Stop the background thread (after the sums it has) and unhook the parameters."""
        if self._closed:
            return
        self._closed = True
        for handle in self._handles:
            handle.remove()
        if self._thread is not None:
            self._queue.put(_STOP)
            self._thread.join()

    # --- during backward ------------------------------------------------------
    def _on_ready(self, param):
        if not self._armed:
            return          # a backward outside prepare()/finish() is none of our business
        bucket, i = self._where[id(param)]
        if bucket.ready[i]:
            raise RuntimeError(f"GradientBuckets: {bucket.names[i]} got a gradient twice in one step (two "
                               "backward() calls between prepare() and finish()); call prepare() before each")
        bucket.ready[i] = True
        bucket.pending -= 1
        if self.overlap and bucket.pending == 0 and bucket.index == self._next:
            self._send(only_ready=True)

    def _send(self, only_ready=False):
        """Hand buckets _next.. on, in order, to the thread (or sum them here without overlap);
        only_ready: up to the first bucket still waiting for a gradient."""
        while self._next < len(self.buckets) and not (only_ready and self.buckets[self._next].pending):
            bucket = self.buckets[self._next]
            bucket.fill()
            bucket.sent = True
            self._next += 1
            if self.overlap:
                self._queue.put(bucket)
            else:
                self._sum(bucket)

    # --- the communicator's side ------------------------------------------------
    def _serve(self):
        while True:
            bucket = self._queue.get()
            if bucket is _STOP:
                return
            self._sum(bucket)

    def _sum(self, bucket):
        try:
            if self._error is None:     # after a failed sum the replicas are out of step: no more
                _wait_for(bucket.copied, bucket.flat)
                start = time.perf_counter()
                try:
                    self.communicator.sum_(bucket.flat)
                finally:
                    bucket.seconds = time.perf_counter() - start
                bucket.summed = _event_after_writes(bucket.flat)
        except BaseException as error:       # noqa: B902  (it reaches finish(), whatever it is)
            if hasattr(error, "add_note"):
                error.add_note(f"raised by the gradient allreduce of {bucket.describe()}")
            self._error = error
        finally:
            bucket.done.set()

    def _wait(self, buckets):
        for b in buckets:
            while b.sent and not b.done.wait(1.0):
                if self._thread is None or not self._thread.is_alive():     # never wait on a dead thread
                    raise RuntimeError(f"GradientBuckets: the allreduce thread stopped before {b.describe()}")


def _layout(named, bucket_bytes):
    """[[(name, param)]]: the buckets, each of one dtype and array module, in reverse parameter
    order; a bucket closes once it holds bucket_bytes."""
    open_buckets, closed = {}, []       # (dtype, array module) -> [its open bucket, its bytes]
    for name, p in reversed(named):
        key = (p.dtype, array_module(p.data).__name__)
        group = open_buckets.setdefault(key, [[], 0])
        group[0].append((name, p))
        group[1] += p.data.nbytes
        if group[1] >= bucket_bytes:
            closed.append(open_buckets.pop(key)[0])
    closed.extend(group for group, _ in open_buckets.values())
    order = {id(p): i for i, (_, p) in enumerate(reversed(named))}
    return sorted(closed, key=lambda group: order[id(group[0][1])])


def _check_arguments(named, communicator, bucket_bytes):
    if not (hasattr(communicator, "size") and callable(getattr(communicator, "sum_", None))):
        raise TypeError("GradientBuckets: the communicator needs .size and .sum_(flat), got "
                        f"{type(communicator).__name__}")
    if isinstance(bucket_bytes, bool) or not isinstance(bucket_bytes, int) or bucket_bytes < 0:
        raise ValueError("GradientBuckets: bucket_bytes must be an int >= 0 (0: one bucket per tensor), "
                         f"got {bucket_bytes!r}")
    seen = {}
    for name, p in named:
        if not isinstance(p, Tensor) or p.creator is not None or not p.requires_grad:
            raise ValueError(f"GradientBuckets: parameter {name!r} is not a leaf Tensor that requires grad")
        if id(p) in seen:
            raise ValueError(f"GradientBuckets: {name!r} is the same tensor as {seen[id(p)]!r}; list each once")
        seen[id(p)] = name


def _event_after_writes(flat):
    """A GPU buffer: an event on the current stream, after the writes queued into it so far."""
    if not on_device(flat):
        return None
    cuda = array_module(flat).cuda
    with flat.device:
        event = cuda.Event(disable_timing=True)
        event.record(cuda.get_current_stream())
    return event


def _wait_for(event, flat):
    """This thread's current stream (on flat's GPU) waits for `event` before what it queues next."""
    if event is not None:
        cuda = array_module(flat).cuda
        with flat.device:
            cuda.get_current_stream().wait_event(event)
