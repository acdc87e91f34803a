"""The shuffle queue's bookkeeping on stream positions: which examples the buffer holds, which it picks.

Everything here is a function of the seed and the sizes alone, never of pixels or of thread timing
(queue.py's docstring has the whole design):

    Stream          stream position p is example perm_{p // N}[p % N]; epoch e's permutation is
                    drawn from the seed sequence (seed, 1, e)
    chunk_rng(k)    the Generator of chunk k's random draws, seeded by (seed, 2, k)
    ShuffleBuffer   the buffer as positions (and optional parallel payload arrays: pixels and
                    labels in one process, a shard's per-row random draws): whole chunks go in, in
                    chunk order, until it holds >= min_after_dequeue + batch_size; batch t picks
                    batch_size distinct slots with rng (seed, 3, t) and fills the holes from the tail
    checked_state   a restored state's numbers, refused with a ValueError unless this queue could
                    have reached them
    shard_rows      the rows [index*b, (index+1)*b) of a global batch that shard (index, count) takes

Floor: data (tests/test_layering.py): imports from tinybn only core, backend, ops, nn,
optim, the package root, models and data.
"""
import threading

import numpy as np

PERMUTATION, CHUNK, SELECT = 1, 2, 3
CONFIG = ("batch_size", "min_after_dequeue", "chunk_size", "num_examples")
MAX_REPLAY_BATCHES = 10 ** 6     # a state without its buffer is replayed batch by batch (well under 1 ms each)


def chunk_rng(seed, k):
    return np.random.default_rng([seed, CHUNK, k])


class Stream:
    """The examples in order, epoch after epoch, each epoch in its own permutation (any thread)."""

    def __init__(self, num_examples, seed):
        self.num_examples, self.seed = num_examples, seed
        self._perms, self._lock = {}, threading.Lock()

    def _permutation(self, epoch):
        with self._lock:
            if epoch not in self._perms:
                if len(self._perms) > 4:
                    self._perms.pop(min(self._perms))
                rng = np.random.default_rng([self.seed, PERMUTATION, epoch])
                self._perms[epoch] = rng.permutation(self.num_examples)
            return self._perms[epoch]

    def example_indices(self, positions):
        epochs, within = np.divmod(positions, self.num_examples)
        out = np.empty_like(positions)
        for e in np.unique(epochs):
            at = epochs == e
            out[at] = self._permutation(int(e))[within[at]]
        return out


class ShuffleBuffer:
    """The buffer's stream positions after `batches` batches, with payload arrays moved alongside."""

    def __init__(self, batch_size, min_after_dequeue, chunk_size, seed):
        self.batch_size, self.chunk_size, self.seed = batch_size, chunk_size, seed
        self.threshold = min_after_dequeue + batch_size
        self.positions = np.empty(self.threshold + chunk_size - 1, dtype=np.int64)
        self.payload = None            # arrays parallel to positions, allocated by the first store()
        self.reset(0, 0, np.empty(0, np.int64))

    def reset(self, batches, next_chunk, positions):
        self.batches, self.next_chunk, self.count = batches, next_chunk, len(positions)
        self.positions[:self.count] = positions

    def wants_chunk(self):
        return self.count < self.threshold

    def insert_chunk(self, arrays=None):
        """Append the positions of chunk next_chunk (and `arrays`, its payload rows); returns the chunk number."""
        k, n0, n1 = self.next_chunk, self.count, self.count + self.chunk_size
        self.positions[n0:n1] = k * self.chunk_size + np.arange(self.chunk_size)
        if arrays is not None:
            self.store(slice(n0, n1), arrays)
        self.count, self.next_chunk = n1, k + 1
        return k

    def store(self, rows, arrays):
        if self.payload is None:
            capacity = len(self.positions)
            self.payload = [np.empty((capacity,) + a.shape[1:], a.dtype) for a in arrays]
        for buffer, a in zip(self.payload, arrays):
            buffer[rows] = a

    def take(self, with_payload):
        """Batch `batches`: (its stream positions, its payload rows if with_payload); the buffer moves on."""
        count, keep = self.count, self.count - self.batch_size
        rng = np.random.default_rng([self.seed, SELECT, self.batches])
        picked = rng.choice(count, self.batch_size, replace=False)
        arrays = [self.positions] + (list(self.payload or ()) if with_payload else [])
        batch = [a[picked] for a in arrays]
        # the survivors in the tail [keep, count) move into the holes in [0, keep)
        holes = picked[picked < keep]
        tail_taken = np.zeros(count - keep, bool)
        tail_taken[picked[picked >= keep] - keep] = True
        movers = keep + np.flatnonzero(~tail_taken)
        for a in arrays:
            a[holes] = a[movers]
        self.count, self.batches = keep, self.batches + 1
        return batch[0], batch[1:]

    def state(self):
        return {"batches": self.batches, "next_chunk": self.next_chunk,
                "buffer": self.positions[:self.count].copy()}


def _integer(state, name):
    """state[name] as a Python int, or a ValueError naming it."""
    value = np.asarray(state[name])
    if value.ndim != 0 or value.dtype.kind not in "iu":
        raise ValueError(f"state {name} must be an integer, got {value.dtype} of shape {value.shape}")
    return int(value)


def checked_state(state, config):
    """(batches, next_chunk, buffer or None) of `state`, refused with a ValueError unless it is one
    the queue of `config` ({seed} and CONFIG's sizes) could have written: a checkpoint's numbers are
    not trusted blindly (an absurd position would replay for hours, a wrong buffer would silently
    change the order)."""
    missing = {"seed", "batches"} - set(state)
    if missing:
        raise ValueError(f"state lacks {sorted(missing)}")
    values = {name: _integer(state, name) for name in ("seed", "batches", "next_chunk") + CONFIG
              if name in state}
    num_examples, min_after_dequeue = config["num_examples"], config["min_after_dequeue"]
    if "num_examples" in values and values["num_examples"] != num_examples:
        raise ValueError(f"the checkpoint was made with a data set of {values['num_examples']} images, "
                         f"this one has {num_examples}; resume with the same data")
    if "min_after_dequeue" in values and values["min_after_dequeue"] != min_after_dequeue \
            and "num_examples" not in values:
        raise ValueError(f"state min_after_dequeue is {values['min_after_dequeue']} but this queue has "
                         f"{min_after_dequeue}: the checkpoint was probably made with a data set of "
                         f"another size than this one's {num_examples} images")
    for name in ("seed",) + CONFIG:
        if name in values and values[name] != config[name]:
            raise ValueError(f"state {name} is {values[name]} but this queue has {config[name]}")
    batches, batch_size, chunk_size = values["batches"], config["batch_size"], config["chunk_size"]
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
    inserted = next_chunk * chunk_size        # stream positions that went into the buffer so far
    if buffer.ndim != 1 or buffer.dtype.kind not in "iu":
        raise ValueError(f"state buffer must be a 1-D integer array, got {buffer.dtype} of shape {buffer.shape}")
    low, high = (0, 0) if batches == 0 else (min_after_dequeue, min_after_dequeue + chunk_size - 1)
    if not (0 <= next_chunk and inserted < 2 ** 62 and low <= len(buffer) <= high
            and len(buffer) == inserted - batches * batch_size):
        raise ValueError(f"queue state is inconsistent: {batches} batches of {batch_size} and "
                         f"{next_chunk} chunks of {chunk_size} cannot leave {len(buffer)} examples "
                         f"in the buffer (a damaged or edited checkpoint)")
    buffer = buffer.astype(np.int64)
    if len(buffer) and (buffer.min() < 0 or buffer.max() >= inserted or len(np.unique(buffer)) != len(buffer)):
        raise ValueError(f"state buffer holds positions outside [0, {inserted}) or twice "
                         f"(a damaged or edited checkpoint)")
    return batches, next_chunk, buffer


def shard_rows(shard, batch_size):
    """The rows of a global batch that shard (index, count) takes; None without a shard."""
    if shard is None:
        return None
    try:
        index, count = shard
    except (TypeError, ValueError):
        raise ValueError(f"shard must be a pair (index, count), got {shard!r}") from None
    for name, value in (("index", index), ("count", count)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise ValueError(f"shard {name} must be an integer, got {value!r}")
    if count < 1:
        raise ValueError(f"shard count must be >= 1, got {count}")
    if not 0 <= index < count:
        raise ValueError(f"shard index {index} is out of range for {count} shards (0..{count - 1})")
    if batch_size % count:
        raise ValueError(f"batch_size {batch_size} (the global batch) is not divisible by the shard count {count}")
    b = batch_size // count
    return slice(int(index) * b, (int(index) + 1) * b)
