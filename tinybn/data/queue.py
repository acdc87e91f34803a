"""A shuffle-batch input queue (tf.train.shuffle_batch) that is deterministic despite threads and ranks.

What it does, as TF does: worker threads preprocess examples ahead of the
training step into a shuffle buffer; each batch is drawn at random from the
buffer once it holds at least min_after_dequeue + batch_size examples.

Why the order does not depend on thread timing (shuffle_buffer.py keeps this
bookkeeping, on stream positions alone):

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
               Before batch t it inserts whole chunks, in chunk order, until
               the buffer holds >= min_after_dequeue + batch_size; then it
               picks batch_size distinct slots with rng (seed, 3, t) and fills
               the holes from the buffer's tail. Its contents after t batches
               are therefore a function of (seed, t) only.

Shards (data parallelism): with shard=(index, count), batch_size is the GLOBAL
batch B and next_batch() returns rows [index*b, (index+1)*b) of global batch t,
b = B / count, so the count shards' batches, concatenated, are the single-process
batch t bitwise. Every rank keeps the single-process bookkeeping above, on
positions alone, so it knows which examples each batch takes without a pixel:

    follower   the buffer of the consumer's position; state_dict() is its state,
               the same on every rank and the same as the unsharded queue's.
    planner    the same buffer run ahead by `lookahead` batches; for each batch it
               plans, it hands the workers this shard's b positions. Instead of
               pixels its buffer carries each position's random draws: chunk k's
               are drawn whole from rng (seed, 2, k) as it goes in (cheap, and the
               very draws the single process makes).
    workers    compute planned batches in order, in any thread: the raw images
               of the b positions through the transform with their draws, so a
               rank preprocesses only its own slice. No buffer of pixels exists:
               at most `lookahead` batches of b rows (prefetch_chunks * chunk_size
               // b, at least 1) are planned and not yet consumed, fewer rows than
               the unsharded queue's buffer (>= B) plus its prefetch.
This needs a transform whose rows can be computed apart, declared with
image.rowwise(draw, apply): train_transform (crop, flip, brightness, contrast,
standardization, all per image) and mnist.scale_images (no draws). Any other
transform(images, rng) is run as the single process runs it: every rank
preprocesses every chunk into the full buffer and keeps its slice of each batch
(correct and bitwise equal, but without the saving).

Resume: `state_dict()` is {seed, batches, next_chunk, buffer (the stream
positions held), and the sizes it was made with}, all integers, so it fits an
npz checkpoint. The shard is not part of it: a state saved by shards of any
count loads in a queue of any other count, or none, with the same global batch
size, and continues the same global order, re-sliced. `load_state_dict` (or
`state=` at construction) recomputes the buffered examples from their chunks
(about as long as the first fill; a rows-only shard just redraws their params)
and continues with batch `batches`. A state with only seed and batches (say, a
global step) also works: the buffer bookkeeping is replayed on stream
positions alone, without pixels, at well under a millisecond per batch (up to
shuffle_buffer.MAX_REPLAY_BATCHES). A restored state is checked first: its sizes
must be this queue's (a data set of another size is named as such), and its
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
from .shuffle_buffer import CONFIG, ShuffleBuffer, Stream, checked_state, chunk_rng, shard_rows


class ShuffleQueue:
    """next_batch() -> (float32 images (B, ...), int32 labels (B,)), shuffled through a buffer;
    with shard=(index, count) this shard's B/count rows of each global batch of B.

    The workers run until close() (or the end of a `with` block); a queue that
    is never closed keeps its daemon threads parked until the program exits.
    """

    def __init__(self, images, labels, batch_size, min_after_dequeue, transform=train_transform,
                 seed=0, num_threads=2, chunk_size=None, prefetch_chunks=None, state=None, shard=None):
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
        self._rows = shard_rows(shard, self.batch_size)
        self.shard = None if shard is None else (int(shard[0]), int(shard[1]))
        self.num_examples = len(images)
        self._stream = Stream(self.num_examples, self.seed)
        sizes = (self.batch_size, self.min_after_dequeue, self.chunk_size, self.seed)
        self._book = ShuffleBuffer(*sizes)     # the consumer's buffer: state_dict() is its state
        # a shard whose transform splits by rows computes only its rows, planned ahead (module docstring)
        self._rows_only = shard is not None and getattr(transform, "rowwise", None) is not None
        if self._rows_only:
            self._plan, self._param_names = ShuffleBuffer(*sizes), None
            b = self._rows.stop - self._rows.start
            self.lookahead = max(1, self.prefetch_chunks * self.chunk_size // b)
        self._cond = threading.Condition()
        self._threads, self._closed = [], False
        if state is not None:
            self._restore(state)
        self._start()

    # -- what the workers compute (any thread) ------------------------------------------
    def _make_chunk(self, k):
        """Chunk k preprocessed whole: (images, labels) of its chunk_size stream positions."""
        idx = self._stream.example_indices(k * self.chunk_size + np.arange(self.chunk_size))
        return np.asarray(self.transform(self.images[idx], chunk_rng(self.seed, k))), self.labels[idx]

    def _make_rows(self, job):
        """(images, labels) of a shard's planned positions, each with its chunk's draws for its row."""
        positions, params = job
        idx = self._stream.example_indices(positions)
        apply = self.transform.rowwise[1]
        return np.asarray(apply(self.images[idx], dict(zip(self._param_names, params)))), self.labels[idx]

    # -- worker threads -------------------------------------------------------------------
    def _start(self):
        self._closed, self._error, self._ready = False, None, {}
        if self._rows_only:
            self._jobs = {}            # planned batch t -> (positions, params), until a worker claims it
            self._next_claim = self._book.batches
            self._replan()
        else:
            self._next_claim = self._book.next_chunk
        self._threads = [threading.Thread(target=self._work, name=f"ShuffleQueue-{i}", daemon=True)
                         for i in range(self.num_threads)]
        for t in self._threads:
            t.start()

    def _claim(self, n):
        """(Under the lock.) Job n when it may be computed now, else None."""
        if self._rows_only:      # a planned batch: the planner bounds how far ahead
            return self._jobs.pop(n, None)
        return n if n < self._book.next_chunk + self.prefetch_chunks else None

    def _work(self):
        compute = self._make_rows if self._rows_only else self._make_chunk
        while True:
            with self._cond:
                job = None
                while not self._closed and job is None:
                    job = self._claim(self._next_claim)
                    if job is None:
                        self._cond.wait()
                if self._closed:
                    return
                n, self._next_claim = self._next_claim, self._next_claim + 1
            try:
                result = compute(job)
            except BaseException as e:   # handed to the consumer, which would otherwise wait forever
                with self._cond:
                    self._error = self._error or e
                    self._cond.notify_all()
                return
            with self._cond:
                self._ready[n] = result
                self._cond.notify_all()

    def _fetch(self, n):
        with self._cond:
            while n not in self._ready:
                if self._error is not None:
                    raise RuntimeError("a ShuffleQueue worker failed") from self._error
                if self._closed:
                    raise RuntimeError("the ShuffleQueue is closed")
                self._cond.wait()
            return self._ready.pop(n)

    # -- the buffer (consumer thread only) ------------------------------------------
    def _top_up(self, fetch):
        book = self._book
        while book.wants_chunk():
            book.insert_chunk(None if fetch is None else fetch(book.next_chunk))
            with self._cond:   # a freed prefetch slot: wake the workers (they read next_chunk under the lock)
                self._cond.notify_all()

    def _take(self, with_payload):
        return self._book.take(with_payload)

    def next_batch(self):
        """The next (images, labels) batch; waits only if the workers are behind."""
        if self._closed:
            raise RuntimeError("the ShuffleQueue is closed")
        if self._rows_only:
            batch = self._fetch(self._book.batches)
            self._top_up(None)
            self._take(with_payload=False)
            self._plan_ahead()
            return batch
        self._top_up(self._fetch)
        _, (images, labels) = self._take(with_payload=True)
        if self._rows is not None:   # a transform that does not split: the whole batch was made, keep ours
            return images[self._rows].copy(), labels[self._rows].copy()
        return images, labels

    def __iter__(self):
        return self

    def __next__(self):
        return self.next_batch()

    # -- the planner of a rows-only shard (consumer thread only) --------------------------
    def _draws(self, k):
        """Chunk k's random draws for all its rows, as a list in _param_names order."""
        draw = self.transform.rowwise[0]
        params = draw(chunk_rng(self.seed, k), self.chunk_size, self.images.shape[1:])
        if self._param_names is None:
            self._param_names = sorted(params)
        return [np.asarray(params[name]) for name in self._param_names]

    def _replan(self):
        """Put the planner at the consumer's position, the draws of the buffered positions redrawn."""
        plan, book = self._plan, self._book
        plan.reset(book.batches, book.next_chunk, book.positions[:book.count])
        positions = plan.positions[:plan.count]
        chunks = positions // self.chunk_size
        for k in np.unique(chunks):
            rows = np.flatnonzero(chunks == k)
            plan.store(rows, [a[positions[rows] - k * self.chunk_size] for a in self._draws(int(k))])
        self._plan_ahead()

    def _plan_ahead(self):
        plan = self._plan
        while plan.batches < self._book.batches + self.lookahead:
            while plan.wants_chunk():
                plan.insert_chunk(self._draws(plan.next_chunk))
            t = plan.batches
            positions, params = plan.take(with_payload=True)
            with self._cond:
                self._jobs[t] = (positions[self._rows], [p[self._rows] for p in params])
                self._cond.notify_all()

    # -- resume --------------------------------------------------------------------------
    @property
    def position(self):
        """The number of batches consumed so far."""
        return self._book.batches

    def state_dict(self):
        state = {name: getattr(self, name) for name in CONFIG}
        state.update(seed=self.seed, **self._book.state())
        return state

    def load_state_dict(self, state):
        """Continue exactly where the queue that wrote `state` was (sharded or not, same global batch)."""
        self._stop()
        self._restore(state)
        self._start()

    def _restore(self, state):
        config = {name: getattr(self, name) for name in ("seed",) + CONFIG}
        batches, next_chunk, buffer = checked_state(state, config)
        book = self._book
        if buffer is not None:
            book.reset(batches, next_chunk, buffer)
        else:   # replay the bookkeeping on stream positions only
            book.reset(0, 0, np.empty(0, np.int64))
            for _ in range(batches):
                self._top_up(None)
                self._take(with_payload=False)
        if self._rows_only:      # no pixels are buffered: _start() replans from here
            return
        positions = book.positions[:book.count]
        chunks = positions // self.chunk_size
        for k in np.unique(chunks):
            rows = np.flatnonzero(chunks == k)
            images, labels = self._make_chunk(int(k))
            offsets = positions[rows] - k * self.chunk_size
            book.store(rows, (images[offsets], labels[offsets]))

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
