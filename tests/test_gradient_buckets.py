"""GradientBuckets (tinybn.distributed.buckets): bucketed, overlapped averaging of gradients.

In one process the replicas are simulated: the other towers run first with a communicator that
records the buffers they send, then tower 0 runs with one that adds those recordings to its own
buffers, call by call, as an allreduce would. Values are small integers in float64 where a
closed form is compared, so every sum is exact; random floats where two ways of bucketing are
compared bitwise. On a GPU (skipped elsewhere) the same sums run in cupy buffers. The last test
runs the buckets under `mpiexec -n 2` on the tutorial model.
"""
import os
import subprocess
import sys
import threading

import numpy as np
import pytest
from mpi_launch import mpiexec_path

import tinybn.backend as backend
from tinybn import Tensor
from tinybn.backend import device_array
from tinybn.distributed.buckets import BUCKET_BYTES, GradientBuckets
from tinybn.nn.layers import Dense, ReLU, Sequential

HERE = os.path.dirname(os.path.abspath(__file__))
WIDTHS = (5, 7, 6, 3)        # a 3-layer perceptron: 6 tensors, of 3 to 42 elements


def perceptron(seed, integers=True, device=False):
    rng = np.random.default_rng(seed)
    layers = []
    for n_in, n_out in zip(WIDTHS, WIDTHS[1:]):
        layers += [Dense(n_in, n_out, dtype=np.float64), ReLU()]
    model = Sequential(*layers[:-1])
    for _, p in model.named_parameters():
        p.data = rng.integers(-2, 3, p.shape).astype(np.float64) if integers else rng.standard_normal(p.shape)
    return model.to_backend("cupy") if device else model


def tower_batch(k, integers=True, device=False):
    rng = np.random.default_rng(100 + k)
    x = rng.integers(-2, 3, (4, WIDTHS[0])).astype(np.float64) if integers else rng.standard_normal((4, WIDTHS[0]))
    return device_array(x, "cupy") if device else x


def tower_loss(model, x):
    y = model(Tensor(x))
    return (y * y).sum() * 0.5


class Recording:
    """A replica that keeps a copy of each buffer it is asked to sum (and sums nothing)."""

    def __init__(self, size):
        self.size, self.sent = size, []

    def sum_(self, flat):
        self.sent.append(flat.copy())


class Replay:
    """Replica 0: to each buffer, adds what the other replicas sent in the same call."""

    def __init__(self, others):
        self.size, self.others, self.calls = len(others) + 1, others, 0

    def sum_(self, flat):
        for other in self.others:
            flat += other.sent[self.calls]
        self.calls += 1


def step(model, x, communicator, **options):
    """One prepare / backward / finish; the parameters' gradients afterwards."""
    buckets = GradientBuckets(model.named_parameters(), communicator, **options)
    try:
        model.zero_grad()
        buckets.prepare()
        tower_loss(model, x).backward()
        buckets.finish()
    finally:
        buckets.close()
    return {name: p.grad for name, p in model.named_parameters()}, buckets


def replicas(k, integers=True, device=False, **options):
    """Tower 0's gradients after the bucketed sum over k simulated towers (same weights)."""
    others = []
    for tower in range(1, k):
        others.append(Recording(k))
        step(perceptron(0, integers, device), tower_batch(tower, integers, device), others[-1], **options)
    return step(perceptron(0, integers, device), tower_batch(0, integers, device), Replay(others), **options)


def tower_gradients(k, integers=True):
    model = perceptron(0, integers)
    model.zero_grad()
    tower_loss(model, tower_batch(k, integers)).backward()
    return {name: p.grad for name, p in model.named_parameters()}


@pytest.mark.parametrize("bucket_bytes, overlap", [(0, True), (200, True), (200, False), (BUCKET_BYTES, True)])
def test_each_gradient_becomes_the_mean_of_the_towers_gradients(bucket_bytes, overlap):
    k = 3
    grads, _ = replicas(k, bucket_bytes=bucket_bytes, overlap=overlap)
    towers = [tower_gradients(t) for t in range(k)]
    for name, g in grads.items():
        np.testing.assert_array_equal(g, (towers[0][name] + towers[1][name] + towers[2][name]) / 3, err_msg=name)
        assert g.dtype == np.float64 and g.shape == towers[0][name].shape


def test_any_bucketing_with_or_without_overlap_equals_one_bucket_per_tensor_bitwise():
    reference, one_per_tensor = replicas(2, integers=False, bucket_bytes=0, overlap=False)
    assert one_per_tensor.stats["buckets"] == 6
    for bucket_bytes, overlap in [(0, True), (200, True), (200, False), (BUCKET_BYTES, True), (BUCKET_BYTES, False)]:
        grads, buckets = replicas(2, integers=False, bucket_bytes=bucket_bytes, overlap=overlap)
        assert buckets.stats["buckets"] == {0: 6, 200: 3, BUCKET_BYTES: 1}[bucket_bytes]
        for name, g in grads.items():
            assert g.tobytes() == reference[name].tobytes(), (name, bucket_bytes, overlap)


def test_buckets_hold_one_dtype_in_reverse_parameter_order_and_close_at_bucket_bytes():
    a, b, c, d = (Tensor(np.zeros(n, dtype), requires_grad=True) for n, dtype in
                  [(10, np.float64), (20, np.float32), (30, np.float64), (4, np.float64)])
    buckets = GradientBuckets([("a", a), ("b", b), ("c", c), ("d", d)], Recording(2), bucket_bytes=300)
    # d (32 bytes) + c (240) reach 272 < 300, then a closes the float64 bucket; b is alone in float32
    assert [bk.names for bk in buckets.buckets] == [["d", "c", "a"], ["b"]]
    assert [bk.flat.dtype for bk in buckets.buckets] == [np.float64, np.float32]
    assert buckets.stats["bytes"] == (44 + 3) * 8 + (20 + 1) * 4      # gradients and one flag each
    buckets.close()


def test_the_first_bucket_is_summed_while_backward_is_still_running():
    model = perceptron(0)
    log, first_sum = [], threading.Event()

    class Logging(Recording):
        def sum_(self, flat):
            log.append(f"sum_ {len(self.sent)}")
            super().sum_(flat)
            first_sum.set()

    buckets = GradientBuckets(model.named_parameters(), Logging(2), bucket_bytes=200)
    first_layer = next(model.named_parameters())[1]        # its gradient comes last
    assert buckets.buckets[-1].params[-1] is first_layer

    def last_gradient(t):
        first_sum.wait(60)      # released by the first bucket's sum_: only if it ran during backward
        log.append("last gradient")

    first_layer.register_post_accumulate_grad_hook(last_gradient)
    buckets.prepare()
    tower_loss(model, tower_batch(0)).backward()
    log.append("backward returned")
    buckets.finish()
    buckets.close()
    assert log.index("sum_ 0") < log.index("last gradient") < log.index("backward returned")


def test_buckets_are_summed_in_their_order_whatever_order_the_gradients_come_in():
    model = perceptron(0)
    named = list(model.named_parameters())[::-1]     # bucket 0: the first layer, whose gradients come last
    communicator = Recording(1)
    buckets = GradientBuckets(named, communicator, bucket_bytes=0)
    buckets.prepare()
    tower_loss(model, tower_batch(0)).backward()
    buckets.finish()
    buckets.close()
    assert [flat.size for flat in communicator.sent] == [p.size + 1 for _, p in named[::-1]]


def test_an_unused_parameter_contributes_zeros_and_one_unused_everywhere_keeps_its_grad():
    x = np.array([1.0, 2.0, 4.0])

    def steps(communicator, bucket_bytes, uses_extra):
        """One GradientBuckets over two steps; in step s `extra` is used when uses_extra[s]."""
        named = [(name, Tensor(np.full(3, v), requires_grad=True)) for name, v in (("w", 1.0), ("extra", 2.0),
                                                                                   ("never", 3.0))]
        (_, w), (_, extra), (_, never) = named
        buckets = GradientBuckets(named, communicator, bucket_bytes=bucket_bytes)
        for used in uses_extra:
            w.grad = extra.grad = None
            never.grad = np.full(3, 7.0)    # a gradient from before: nobody's business in this step
            buckets.prepare()
            ((w * x).sum() + ((extra * x).sum() if used else 0.0)).backward()
            buckets.finish()
        buckets.close()
        return {name: p.grad for name, p in named}

    for bucket_bytes in (0, BUCKET_BYTES):
        replica_1 = Recording(2)
        steps(replica_1, bucket_bytes, uses_extra=[True, False])       # its step 2 leaves extra unused
        grads = steps(Replay([replica_1]), bucket_bytes, uses_extra=[True, True])
        np.testing.assert_array_equal(grads["w"], [1.0, 2.0, 4.0])          # (x + x) / 2
        np.testing.assert_array_equal(grads["extra"], [0.5, 1.0, 2.0])      # (x + 0) / 2
        np.testing.assert_array_equal(grads["never"], np.full(3, 7.0))      # untouched


@pytest.mark.parametrize("overlap", [True, False])
def test_an_error_in_the_sum_is_raised_by_finish_and_no_later_bucket_is_summed(overlap):
    class Failing(Recording):
        def sum_(self, flat):
            super().sum_(flat)
            if len(self.sent) == 2:
                raise ConnectionError("link down")

    model, communicator = perceptron(0), Failing(2)
    buckets = GradientBuckets(model.named_parameters(), communicator, bucket_bytes=0, overlap=overlap)
    buckets.prepare()
    tower_loss(model, tower_batch(0)).backward()
    with pytest.raises(ConnectionError, match="link down") as raised:
        buckets.finish()
    if sys.version_info >= (3, 11):      # exception notes (add_note) are new in 3.11
        assert "gradient allreduce of bucket 1 (4/kernel)" in raised.value.__notes__[0]
    assert len(communicator.sent) == 2
    buckets.close()
    assert buckets._thread is None or not buckets._thread.is_alive()


def test_two_backwards_in_one_step_are_refused():
    model = perceptron(0)
    buckets = GradientBuckets(model.named_parameters(), Recording(2))
    buckets.prepare()
    loss = tower_loss(model, tower_batch(0))
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="twice in one step"):
        loss.backward()
    buckets.close()


def test_close_unhooks_the_parameters_and_ends_the_thread():
    model = perceptron(0)
    buckets = GradientBuckets(model.named_parameters(), Recording(2))
    buckets.close()
    assert not buckets._thread.is_alive()
    assert all(not p._post_accumulate_grad_hooks for p in model.parameters())


@pytest.mark.parametrize("make, error, words", [
    (lambda p: GradientBuckets([("w", p)], object()), TypeError, "needs .size and .sum_"),
    (lambda p: GradientBuckets([("w", p)], Recording(2), bucket_bytes=-1), ValueError, "bucket_bytes"),
    (lambda p: GradientBuckets([("w", p), ("v", p)], Recording(2)), ValueError, "'v' is the same tensor as 'w'"),
    (lambda p: GradientBuckets([("w", Tensor(np.ones(2)))], Recording(2)), ValueError, "'w' is not a leaf"),
])
def test_bad_arguments_are_refused_in_one_line(make, error, words):
    with pytest.raises(error, match=words):
        make(Tensor(np.ones(2), requires_grad=True))


def _no_gpu():
    """None if CuPy imports and sees a device, else why not."""
    try:
        import cupy
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as e:    # ImportError, or CUDARuntimeError when there is no driver
        return f"no CUDA GPU / CuPy: {type(e).__name__}: {e}"
    return None if count > 0 else "no CUDA GPU / CuPy: CuPy sees 0 devices"


NO_GPU = _no_gpu()


@pytest.mark.gpu
@pytest.mark.skipif(NO_GPU is not None, reason=NO_GPU or "")
@pytest.mark.parametrize("overlap", [True, False])
def test_cupy_parameters_are_summed_in_device_buffers_to_the_same_numbers(overlap):
    import cupy
    with backend.backend("cupy"):
        grads, buckets = replicas(3, device=True, bucket_bytes=200, overlap=overlap)
    assert all(isinstance(b.flat, cupy.ndarray) for b in buckets.buckets)
    on_host, _ = replicas(3, bucket_bytes=200, overlap=overlap)
    for name, g in grads.items():
        assert isinstance(g, cupy.ndarray), name
        np.testing.assert_array_equal(cupy.asnumpy(g), on_host[name], err_msg=name)


def test_two_mpi_ranks_bucketed_and_overlapped_equal_a_per_tensor_allreduce_and_the_mean():
    root = os.path.dirname(HERE)
    env = dict(os.environ, PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""),
               OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", NUMBA_NUM_THREADS="1")
    env.pop("TINYBN_BACKEND", None)
    cmd = [mpiexec_path(), "-n", "2", sys.executable, os.path.join(HERE, "mpi_scripts", "buckets_allreduce.py")]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=root)
    assert done.returncode == 0, f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    assert done.stdout.count("equal") == 2, done.stdout
