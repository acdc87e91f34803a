"""A shuffle-batch input queue (tf.train.shuffle_batch) that is deterministic despite threads.

What it does, as TF does: worker threads preprocess examples ahead of the
training step into a shuffle buffer; each batch is drawn at random from the
buffer once it holds at least min_after_dequeue + batch_size examples.

Why the order does not depend on thread timing:

    stream     the examples in order, epoch after epoch; epoch e visits them in
               the permutation drawn from seed sequence (seed, 1, e). Stream
               position p is example perm_{p // N}[p % N].
    chunks     the stream is cut into chunks of `chunk_size` positions (default
               batch_size). Chunk k is preprocessed by `transform(images, rng)`
               with rng seeded by (seed, 2, k), so its pixels depend on k alone.
    workers    claim chunk numbers in order and compute them in any order and
               thread; finished chunks wait in a reorder dict keyed by k. At
               most `prefetch_chunks` chunks exist beyond the buffer, which
               bounds memory (the TF queue's `capacity`).
    buffer     only the consumer (the thread calling next_batch) touches it.
               Before batch b it inserts whole chunks, in chunk order, until
               the buffer holds >= min_after_dequeue + batch_size; then it
               picks batch_size distinct slots with rng (seed, 3, b) and fills
               the holes from the buffer's tail. Its contents after b batches
               are therefore a function of (seed, b) only.

Resume: `state_dict()` is {seed, batches, next_chunk, buffer (the stream
positions held), and the sizes it was made with}, all integers, so it fits an
npz checkpoint. `load_state_dict` (or `state=` at construction) recomputes the
buffered examples from their chunks (about as long as the first fill) and
continues with batch `batches`. A state with only seed and batches (say, a
global step) also works: the buffer bookkeeping is replayed on stream
positions alone, without pixels, at well under a millisecond per batch
(up to MAX_REPLAY_BATCHES). A restored state is checked first: its sizes must
be this queue's (a data set of another size is named as such), and its
position, chunk count and buffer must be ones the queue could have reached;
anything else is a ValueError, not a hang or a silently different order.
The same numpy version gives the same order (Generator streams are only
guaranteed stable within a numpy version).

Floor: data (tests/test_layering.py): imports from tinybn only core, backend, ops, nn,
optim, the package root, models and data.
"""
import threading

import numpy as np

from .image import train_transform

_PERMUTATION, _CHUNK, _SELECT = 1, 2, 3
_CONFIG = ("batch_size", "min_after_dequeue", "chunk_size", "num_examples")
MAX_REPLAY_BATCHES = 10 ** 6     # a state without its buffer is replayed batch by batch (well under 1 ms each)


def _integer(state, name):
    """state[name] as a Python int, or a ValueError naming it."""
    value = np.asarray(state[name])
    if value.ndim != 0 or value.dtype.kind not in "iu":
        raise ValueError(f"state {name} must be an integer, got {value.dtype} of shape {value.shape}")
    return int(value)


class ShuffleQueue:
    """next_batch() -> (float32 images (B, ...), int32 labels (B,)), shuffled through a buffer.

    The workers run until close() (or the end of a `with` block); a queue that
    is never closed keeps its daemon threads parked until the program exits.
    """

    def __init__(self, images, labels, batch_size, min_after_dequeue, transform=train_transform,
                 seed=0, num_threads=2, chunk_size=None, prefetch_chunks=None, state=None):
        if len(images) != len(labels) or len(images) == 0:
            raise ValueError(f"images and labels must be non-empty and equally long, "
                             f"got {len(images)} and {len(labels)}")
        for name, value, low in (("batch_size", batch_size, 1), ("min_after_dequeue", min_after_dequeue, 0),
                                 ("seed", seed, 0), ("num_threads", num_threads, 1)):
            if int(value) != value or value < low:
                raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
        self.images, self.labels = images, np.asarray(labels, dtype=np.int32)
        self.batch_size, self.min_after_dequeue = int(batch_size), int(min_after_dequeue)
        self.transform, self.seed, self.num_threads = transform, int(seed), int(num_threads)
        self.chunk_size = int(chunk_size or batch_size)
        self.prefetch_chunks = int(prefetch_chunks or 2 * num_threads)
        if self.chunk_size < 1 or self.prefetch_chunks < 1:
            raise ValueError("chunk_size and prefetch_chunks must be positive")
        self.num_examples = len(images)
        self._threshold = self.min_after_dequeue + self.batch_size
        self._positions = np.empty(self._threshold + self.chunk_size - 1, dtype=np.int64)
        self._payload = None           # (images, labels) arrays parallel to _positions
        self._perms, self._perm_lock = {}, threading.Lock()
        self._cond = threading.Condition()
        self._threads, self._closed = [], False
        self._reset(0, 0, np.empty(0, np.int64))
        if state is not None:
            self._restore(state)
        self._start()

    # -- the stream and its chunks (any thread) ------------------------------------
    def _permutation(self, epoch):
        with self._perm_lock:
            if epoch not in self._perms:
                if len(self._perms) > 4:
                    self._perms.pop(min(self._perms))
                rng = np.random.default_rng([self.seed, _PERMUTATION, epoch])
                self._perms[epoch] = rng.permutation(self.num_examples)
            return self._perms[epoch]

    def _example_indices(self, positions):
        epochs, within = np.divmod(positions, self.num_examples)
        out = np.empty_like(positions)
        for e in np.unique(epochs):
            at = epochs == e
            out[at] = self._permutation(int(e))[within[at]]
        return out

    def _make_chunk(self, k):
        positions = k * self.chunk_size + np.arange(self.chunk_size)
        idx = self._example_indices(positions)
        rng = np.random.default_rng([self.seed, _CHUNK, k])
        return np.asarray(self.transform(self.images[idx], rng)), self.labels[idx]

    # -- worker threads ---------------------------------------------------------------
    def _start(self):
        self._closed, self._error, self._ready = False, None, {}
        self._next_claim = self._next_chunk
        self._threads = [threading.Thread(target=self._work, name=f"ShuffleQueue-{i}", daemon=True)
                         for i in range(self.num_threads)]
        for t in self._threads:
            t.start()

    def _work(self):
        while True:
            with self._cond:
                while not self._closed and self._next_claim >= self._next_chunk + self.prefetch_chunks:
                    self._cond.wait()
                if self._closed:
                    return
                k, self._next_claim = self._next_claim, self._next_claim + 1
            try:
                chunk = self._make_chunk(k)
            except BaseException as e:   # handed to the consumer, which would otherwise wait forever
                with self._cond:
                    self._error = self._error or e
                    self._cond.notify_all()
                return
            with self._cond:
                self._ready[k] = chunk
                self._cond.notify_all()

    def _fetch(self, k):
        with self._cond:
            while k not in self._ready:
                if self._error is not None:
                    raise RuntimeError("a ShuffleQueue worker failed") from self._error
                if self._closed:
                    raise RuntimeError("the ShuffleQueue is closed")
                self._cond.wait()
            return self._ready.pop(k)

    # -- the buffer (consumer thread only) ------------------------------------------
    def _reset(self, batches, next_chunk, positions):
        self._batches, self._next_chunk, self._count = batches, next_chunk, len(positions)
        self._positions[:self._count] = positions

    def _top_up(self, fetch):
        while self._count < self._threshold:
            k, n0, n1 = self._next_chunk, self._count, self._count + self.chunk_size
            self._positions[n0:n1] = k * self.chunk_size + np.arange(self.chunk_size)
            if fetch is not None:
                images, labels = fetch(k)
                self._store(slice(n0, n1), images, labels)
            self._count = n1
            with self._cond:   # a freed prefetch slot: wake the workers
                self._next_chunk = k + 1
                self._cond.notify_all()

    def _store(self, rows, images, labels):
        if self._payload is None:
            capacity = len(self._positions)
            self._payload = (np.empty((capacity,) + images.shape[1:], images.dtype),
                             np.empty(capacity, np.int32))
        self._payload[0][rows], self._payload[1][rows] = images, labels

    def _take(self, with_payload):
        count, keep = self._count, self._count - self.batch_size
        rng = np.random.default_rng([self.seed, _SELECT, self._batches])
        picked = rng.choice(count, self.batch_size, replace=False)
        arrays = [self._positions] + (list(self._payload) if with_payload else [])
        batch = [a[picked] for a in arrays[1:]]
        # the survivors in the tail [keep, count) move into the holes in [0, keep)
        holes = picked[picked < keep]
        tail_taken = np.zeros(count - keep, bool)
        tail_taken[picked[picked >= keep] - keep] = True
        movers = keep + np.flatnonzero(~tail_taken)
        for a in arrays:
            a[holes] = a[movers]
        self._count, self._batches = keep, self._batches + 1
        return batch

    def next_batch(self):
        """The next (images, labels) batch; waits only if the workers are behind."""
        if self._closed:
            raise RuntimeError("the ShuffleQueue is closed")
        self._top_up(self._fetch)
        images, labels = self._take(with_payload=True)
        return images, labels

    def __iter__(self):
        return self

    def __next__(self):
        return self.next_batch()

    # -- resume --------------------------------------------------------------------------
    @property
    def position(self):
        """The number of batches consumed so far."""
        return self._batches

    def state_dict(self):
        state = {name: getattr(self, name) for name in _CONFIG}
        state.update(seed=self.seed, batches=self._batches, next_chunk=self._next_chunk,
                     buffer=self._positions[:self._count].copy())
        return state

    def load_state_dict(self, state):
        """Continue exactly where the queue that wrote `state` was."""
        self._stop()
        self._restore(state)
        self._start()

    def _restore(self, state):
        batches, next_chunk, buffer = self._checked(state)
        if buffer is not None:
            self._reset(batches, next_chunk, buffer)
        else:   # replay the bookkeeping on stream positions only
            self._reset(0, 0, np.empty(0, np.int64))
            for _ in range(batches):
                self._top_up(None)
                self._take(with_payload=False)
        positions = self._positions[:self._count]
        chunks = positions // self.chunk_size
        for k in np.unique(chunks):
            rows = np.flatnonzero(chunks == k)
            images, labels = self._make_chunk(int(k))
            offsets = positions[rows] - k * self.chunk_size
            self._store(rows, images[offsets], labels[offsets])

    def _checked(self, state):
        """(batches, next_chunk, buffer or None) of `state`, refused with a ValueError unless it is
        one this queue could have written: a checkpoint's numbers are not trusted blindly (an
        absurd position would replay for hours, a wrong buffer would silently change the order)."""
        missing = {"seed", "batches"} - set(state)
        if missing:
            raise ValueError(f"state lacks {sorted(missing)}")
        values = {name: _integer(state, name) for name in ("seed", "batches", "next_chunk") + _CONFIG
                  if name in state}
        if "num_examples" in values and values["num_examples"] != self.num_examples:
            raise ValueError(f"the checkpoint was made with a data set of {values['num_examples']} images, "
                             f"this one has {self.num_examples}; resume with the same data")
        if "min_after_dequeue" in values and values["min_after_dequeue"] != self.min_after_dequeue \
                and "num_examples" not in values:
            raise ValueError(f"state min_after_dequeue is {values['min_after_dequeue']} but this queue has "
                             f"{self.min_after_dequeue}: the checkpoint was probably made with a data set of "
                             f"another size than this one's {self.num_examples} images")
        for name in ("seed",) + _CONFIG:
            if name in values and values[name] != getattr(self, name):
                raise ValueError(f"state {name} is {values[name]} but this queue has {getattr(self, name)}")
        batches = values["batches"]
        if batches < 0:
            raise ValueError(f"state batches is {batches}: a position cannot be negative")
        if "buffer" not in state:
            if batches > MAX_REPLAY_BATCHES:
                raise ValueError(f"state batches is {batches} without a buffer: replaying more than "
                                 f"{MAX_REPLAY_BATCHES} batches is refused (a full state_dict() resumes at once)")
            return batches, 0, None
        if "next_chunk" not in values:
            raise ValueError("state has a buffer but lacks next_chunk")
        next_chunk, buffer = values["next_chunk"], np.asarray(state["buffer"])
        inserted = next_chunk * self.chunk_size        # stream positions that went into the buffer so far
        if buffer.ndim != 1 or buffer.dtype.kind not in "iu":
            raise ValueError(f"state buffer must be a 1-D integer array, got {buffer.dtype} of shape {buffer.shape}")
        low, high = (0, 0) if batches == 0 else (self.min_after_dequeue, self.min_after_dequeue + self.chunk_size - 1)
        if not (0 <= next_chunk and inserted < 2 ** 62 and low <= len(buffer) <= high
                and len(buffer) == inserted - batches * self.batch_size):
            raise ValueError(f"queue state is inconsistent: {batches} batches of {self.batch_size} and "
                             f"{next_chunk} chunks of {self.chunk_size} cannot leave {len(buffer)} examples "
                             f"in the buffer (a damaged or edited checkpoint)")
        buffer = buffer.astype(np.int64)
        if len(buffer) and (buffer.min() < 0 or buffer.max() >= inserted or len(np.unique(buffer)) != len(buffer)):
            raise ValueError(f"state buffer holds positions outside [0, {inserted}) or twice "
                             f"(a damaged or edited checkpoint)")
        return batches, next_chunk, buffer

    # -- shutdown ------------------------------------------------------------------------
    def _stop(self):
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        for t in self._threads:
            t.join()
        self._threads = []

    def close(self):
        """Stop the workers (each finishes at most the chunk in hand) and wait for them."""
        self._stop()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
