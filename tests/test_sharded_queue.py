"""ShuffleQueue(shard=(index, count)): the count shards of global batch t, concatenated, are the
single-process batch t bitwise; each shard preprocesses only its own rows; the state is the global one.

The reference is the unsharded queue itself (its results are pinned by test_cifar10_data.py and
test_mnist_data.py); the rows each shard preprocesses are checked against the example ids of the
unsharded batches, read from images that carry their id in two pixels.
"""
import numpy as np
import pytest

from tinybn.data import cifar10, mnist
from tinybn.data.image import apply_train_transform, rowwise, train_transform
from tinybn.data.queue import ShuffleQueue

N = 50
# (seed, global batch, min_after_dequeue, chunk_size): no buffer, a buffer with small chunks, a chunk
# that does not divide the batch; 30 batches of 6 or 12 cross three or more epochs of 50 examples
SIZES = [(0, 6, 0, None), (3, 6, 10, 4), (5, 12, 7, 5), (1, 12, 20, None)]


def marked_images(n, size=32):
    """uint8 images whose pixels (0, 0, 0) and (0, 0, 1) hold their index, the rest random."""
    x = np.random.default_rng(n).integers(0, 256, (n, size, size, 3), dtype=np.uint8)
    x[:, 0, 0, 0], x[:, 0, 0, 1] = np.arange(n) % 256, np.arange(n) // 256
    return x


def example_ids(raw):
    return raw[:, 0, 0, 0].astype(int) + 256 * raw[:, 0, 0, 1].astype(int)


def batches(queue, n):
    return [queue.next_batch() for _ in range(n)]


def concatenated(shards, n):
    """n batches of each shard, the shards' batch t concatenated in shard order."""
    per_shard = [batches(q, n) for q in shards]
    return [tuple(np.concatenate(parts) for parts in zip(*row)) for row in zip(*per_shard)]


def assert_same_batches(got, expected):
    assert len(got) == len(expected)
    for t, ((gi, gl), (ei, el)) in enumerate(zip(got, expected)):
        assert gi.dtype == ei.dtype and gl.dtype == el.dtype == np.int32, t
        np.testing.assert_array_equal(gi, ei, err_msg=f"batch {t}")
        np.testing.assert_array_equal(gl, el, err_msg=f"batch {t}")


def assert_same_state(a, b):
    assert sorted(a) == sorted(b)
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)


def queues(x, labels, size, count, **kwargs):
    seed, batch, min_after_dequeue, chunk = size
    make = lambda shard: ShuffleQueue(x, labels, batch, min_after_dequeue, seed=seed,   # noqa: E731
                                      chunk_size=chunk, shard=shard, **kwargs)
    return make(None), [make((i, count)) for i in range(count)]


def close(*qs):
    for q in qs:
        q.close()


@pytest.mark.parametrize("count", [1, 2, 3])
@pytest.mark.parametrize("size", SIZES)
def test_shards_concatenated_are_the_unsharded_batches_and_state(size, count):
    x, labels = marked_images(N), (np.arange(N) * 7) % 10
    whole, shards = queues(x, labels, size, count)
    try:
        assert_same_batches(concatenated(shards, 30), batches(whole, 30))
        for q in shards:
            assert q.position == 30
            assert_same_state(q.state_dict(), whole.state_dict())
    finally:
        close(whole, *shards)


def counting_train_transform(calls, holder):
    """train_transform with its apply half recording (rows, batches consumed by then); holder holds
    the queue once its constructor returned (before, nothing was consumed)."""
    def counted_apply(images, params):
        calls.append((example_ids(images), holder[0].position if holder else 0))
        return apply_train_transform(images, params)

    @rowwise(train_transform.rowwise[0], counted_apply)
    def transform(images, rng):
        return counted_apply(images, train_transform.rowwise[0](rng, len(images), images.shape[1:]))
    return transform


@pytest.mark.parametrize("count", [2, 3])
@pytest.mark.parametrize("size", SIZES[1:])
def test_each_shard_preprocesses_only_its_rows_and_at_most_lookahead_batches_ahead(size, count):
    x, labels = marked_images(N), np.arange(N) % 10
    seed, batch, min_after_dequeue, chunk = size
    b, consumed = batch // count, 20
    ids = lambda images: example_ids(images.astype(np.uint8))   # noqa: E731
    with ShuffleQueue(x, labels, batch, min_after_dequeue, transform=lambda a, rng: a * np.float32(1),
                      seed=seed, chunk_size=chunk) as plain:
        expected = [ids(images) for images, _ in batches(plain, consumed)]
    for index in range(count):
        calls, holder = [], []
        q = ShuffleQueue(x, labels, batch, min_after_dequeue, transform=counting_train_transform(calls, holder),
                         seed=seed, chunk_size=chunk, num_threads=1, prefetch_chunks=2, shard=(index, count))
        holder.append(q)
        batches(q, consumed)
        q.close()
        # closed form of the lookahead; its rows never exceed what the unsharded queue buffers
        assert q.lookahead == max(1, 2 * (chunk or batch) // b)
        assert q.lookahead * b <= min_after_dequeue + batch + 2 * (chunk or batch)
        # one worker computes planned batches in order: call t is batch t, this shard's b rows alone
        assert consumed <= len(calls) <= consumed + q.lookahead
        for t, (rows, _) in enumerate(calls[:consumed]):
            np.testing.assert_array_equal(rows, expected[t][index * b:(index + 1) * b], err_msg=f"batch {t}")
        # a batch is computed only once fewer than lookahead are waiting unconsumed
        for t, (_, position) in enumerate(calls):
            assert t < position + q.lookahead, (t, position)


def test_a_transform_that_does_not_split_runs_the_single_process_pipeline_on_every_shard():
    x, labels = marked_images(N), np.arange(N) % 10
    calls = {}

    def noisy(tag):
        def transform(images, rng):   # any callable(images, rng): it cannot be split by rows
            calls.setdefault(tag, []).append(example_ids(images))
            return images.astype(np.float32) + rng.random(images.shape, dtype=np.float32)
        return transform
    kwargs = dict(batch_size=6, min_after_dequeue=10, seed=2, chunk_size=4, num_threads=1)
    with ShuffleQueue(x, labels, transform=noisy("whole"), **kwargs) as whole:
        expected = batches(whole, 25)
        inserted = whole.state_dict()["next_chunk"]
    shards = [ShuffleQueue(x, labels, transform=noisy(i), shard=(i, 2), **kwargs) for i in range(2)]
    try:
        got = concatenated(shards, 25)
        for q in shards:
            assert q.state_dict()["next_chunk"] == inserted
    finally:
        close(*shards)
    assert_same_batches(got, expected)
    # every shard transformed every chunk whole, in chunk order, as the single process does
    for i in range(2):
        assert len(calls[i]) >= inserted
        for k in range(inserted):
            np.testing.assert_array_equal(calls[i][k], calls["whole"][k])
            assert len(calls[i][k]) == 4


@pytest.mark.parametrize("with_buffer", [True, False])
@pytest.mark.parametrize("saved_by, resumed_by", [(None, 2), (2, None), (2, 3), (3, 1)])
def test_resume_across_shard_counts_continues_bitwise(saved_by, resumed_by, with_buffer):
    x, labels = marked_images(N), np.arange(N) % 10
    kwargs = dict(batch_size=6, min_after_dequeue=10, seed=4, chunk_size=4)
    with ShuffleQueue(x, labels, **kwargs) as whole:
        batches(whole, 12)
        state = whole.state_dict()
        expected = batches(whole, 15)
    if saved_by is not None:   # the same state, written by the shards of another count
        shards = [ShuffleQueue(x, labels, shard=(i, saved_by), **kwargs) for i in range(saved_by)]
        concatenated(shards, 12)
        for q in shards:
            assert_same_state(q.state_dict(), state)
        state = shards[-1].state_dict()
        close(*shards)
    if not with_buffer:
        state = {"seed": state["seed"], "batches": state["batches"]}
    count = resumed_by or 1
    resumed = [ShuffleQueue(x, labels, state=state, shard=resumed_by and (i, count), **kwargs)
               for i in range(count)]
    try:
        assert all(q.position == 12 for q in resumed)
        assert_same_batches(concatenated(resumed, 15), expected)
        for q in resumed:          # load_state_dict on a running queue, too
            q.next_batch()
            q.load_state_dict(state)
        assert_same_batches(concatenated(resumed, 15), expected)
    finally:
        close(*resumed)


BAD_SHARDS = {
    "index out of range": ((2, 2), r"^shard index 2 is out of range for 2 shards \(0\.\.1\)$"),
    "negative index": ((-1, 2), r"^shard index -1 is out of range for 2 shards \(0\.\.1\)$"),
    "count 0": ((0, 0), r"^shard count must be >= 1, got 0$"),
    "batch not divisible": ((0, 4), r"^batch_size 6 \(the global batch\) is not divisible by the shard count 4$"),
    "not a pair": (3, r"^shard must be a pair \(index, count\), got 3$"),
    "fractional count": ((0, 2.0), r"^shard count must be an integer, got 2\.0$"),
}


@pytest.mark.parametrize("case", BAD_SHARDS)
def test_bad_shard_is_a_one_line_value_error(case):
    shard, message = BAD_SHARDS[case]
    x, labels = marked_images(10), np.arange(10) % 10
    with pytest.raises(ValueError, match=message):
        ShuffleQueue(x, labels, 6, 4, shard=shard)


def test_cifar_training_queue_passes_the_shard_on():
    x, labels = marked_images(N), np.arange(N) % 10
    with cifar10.training_queue(x, labels, 8, seed=1) as whole:
        expected = batches(whole, 16)
    shards = [cifar10.training_queue(x, labels, 8, seed=1, shard=(i, 2)) for i in range(2)]
    try:
        assert all(q.next_batch()[0].shape == (4, 24, 24, 3) for q in shards)
        assert_same_batches(concatenated(shards, 15), expected[1:])
    finally:
        close(*shards)


@pytest.mark.parametrize("count", [2, 3])
def test_mnist_train_batches_with_a_shard_scale_only_their_rows(count, monkeypatch):
    x = np.random.default_rng(0).integers(0, 256, (20, 28, 28, 1), dtype=np.uint8)
    labels, rows = np.arange(20) % 10, []
    with mnist.train_batches(x, labels, 6, seed=3) as whole:
        expected = batches(whole, 14)          # 84 examples: four epochs and a bit
    scale = mnist.scale_images

    def counted_rows(images, params):
        rows.append(len(images))
        return scale(images)

    @rowwise(lambda rng, n, shape: {}, counted_rows)
    def counted_scale(images, rng=None):
        raise AssertionError("a rowwise transform is applied by rows")
    monkeypatch.setattr(mnist, "scale_images", counted_scale)
    shards = [mnist.train_batches(x, labels, 6, seed=3, shard=(i, count)) for i in range(count)]
    try:
        assert_same_batches(concatenated(shards, 14), expected)
        assert all(q.state_dict()["batches"] == 14 for q in shards)
    finally:
        close(*shards)
    assert set(rows) == {6 // count}            # b rows a call, one call per planned batch
    lookahead = shards[0].lookahead
    assert count * 14 <= len(rows) <= count * (14 + lookahead)
