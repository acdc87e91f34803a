"""Cross-replica batch norm (ops/sync_batch_norm.py, nn.BatchNorm(synchronized=True)).

The replicas are threads of this process, one per replica, meeting at a barrier in
ThreadGroup.sum (the elementwise sum of every replica's array, in rank order). The
references: fused_batch_norm on the concatenation of the replicas' batches (one process,
one big batch), float64 finite differences of a function of every replica's outputs, and
fused_batch_norm itself for a group of one (bitwise).
"""
import threading

import numpy as np
import pytest

from tinybn import Tensor
from tinybn.backend import backend
from tinybn.gradcheck import numerical_gradient
from tinybn.nn.batchnorm import BatchNorm
from tinybn.ops import reduce_sum
from tinybn.ops.fused_batch_norm import fused_batch_norm
from tinybn.ops.sync_batch_norm import sync_batch_norm

EPS = 1e-3


class ThreadGroup:
    """`size` replicas in one process; member(rank) is replica rank's replica group."""

    def __init__(self, size):
        self.size, self.slots = size, [None] * size
        self.barrier = threading.Barrier(size, timeout=60)

    def member(self, rank):
        return _Member(self, rank)


class _Member:
    def __init__(self, shared, rank):
        self.shared, self.rank, self.size, self.calls = shared, rank, shared.size, 0

    def sum(self, array):
        shared = self.shared
        self.calls += 1
        shared.slots[self.rank] = array
        shared.barrier.wait()       # every replica's array is in
        total = shared.slots[0].copy()
        for other in shared.slots[1:]:
            total = total + other
        shared.barrier.wait()       # every replica has read them: the slots may be reused
        return total


class SoloGroup:
    """A group of one replica: sum is the identity (a copy), as the size-1 Communicator's."""
    size = 1

    def __init__(self):
        self.calls = 0

    def sum(self, array):
        self.calls += 1
        return array.copy()


def run_replicas(size, replica):
    """[replica(rank, group) for each rank], each in its own thread, all at once."""
    shared, results, errors = ThreadGroup(size), [None] * size, []

    def run(rank):
        try:
            results[rank] = replica(rank, shared.member(rank))
        except BaseException as e:     # noqa: B902  (re-raised below, in the test's thread)
            errors.append(e)
            shared.barrier.abort()      # the others stop waiting for this one

    threads = [threading.Thread(target=run, args=(r,)) for r in range(size)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return results


def _slices(rows, tail, c, seed):
    """Replica batches of rows[r] examples of shape tail + (c,), with a large mean (two-pass matters)."""
    rng = np.random.default_rng(seed)
    xs = [rng.standard_normal((m,) + tail + (c,)) * 1.5 + 4.0 for m in rows]
    return rng, xs


CASES = [((3, 5), (), 3), ((2, 3, 3), (), 2), ((0, 3, 2), (), 2),     # (N, C); one replica empty
         ((1, 2), (2, 3), 2), ((2, 1, 1), (3, 2), 3)]                   # NHWC


@pytest.mark.parametrize("rows,tail,c", CASES)
@pytest.mark.parametrize("bessel", [True, False])
def test_replicas_equal_one_big_batch(rows, tail, c, bessel):
    rng, xs = _slices(rows, tail, c, seed=sum(rows) + c)
    scale, offset = rng.uniform(0.5, 1.5, c), rng.standard_normal(c)
    dys = [rng.standard_normal(x.shape) for x in xs]

    big_x, big_scale, big_offset = (Tensor(a, requires_grad=True) for a in (np.concatenate(xs), scale, offset))
    big_y, big_mean, big_var = fused_batch_norm(big_x, big_scale, big_offset, epsilon=EPS, bessel_correction=bessel)
    big_y.backward(np.concatenate(dys))

    def replica(rank, group):
        x, s, o = (Tensor(a, requires_grad=True) for a in (xs[rank], scale, offset))
        y, mean, var = sync_batch_norm(x, s, o, EPS, group, bessel_correction=bessel)
        # the job's loss is the sum of the replicas' losses: replica r seeds its own slice of dy
        y.backward(dys[rank])
        return y.data, mean.data, var.data, x.grad, s.grad, o.grad

    results = run_replicas(len(rows), replica)
    starts = np.cumsum((0,) + rows)
    for r, (y, mean, var, dx, _, _) in enumerate(results):
        rows_of_r = slice(starts[r], starts[r + 1])
        np.testing.assert_allclose(y, big_y.data[rows_of_r], rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(mean, big_mean.data, rtol=1e-12)
        np.testing.assert_allclose(var, big_var.data, rtol=1e-12)
        np.testing.assert_allclose(dx, big_x.grad[rows_of_r], rtol=1e-12, atol=1e-12)
    # dscale, doffset are each replica's own; their sum (what the gradient allreduce forms) is the big batch's
    np.testing.assert_allclose(sum(res[4] for res in results), big_scale.grad, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(sum(res[5] for res in results), big_offset.grad, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("rows,tail,c", [((2, 3), (), 2), ((1, 1, 1), (2, 1), 2)])
@pytest.mark.parametrize("outputs", [("y", "mean", "variance"), ("mean", "variance"), ("y",)])
def test_gradients_through_the_group_match_finite_differences(rows, tail, c, outputs):
    rng, xs = _slices(rows, tail, c, seed=len(rows))
    scale, offset = rng.uniform(0.5, 1.5, c), rng.standard_normal(c)
    # upstream gradients of every replica's outputs: L = sum over replicas and outputs of <G, output>
    upstream = [{"y": rng.standard_normal(x.shape), "mean": rng.standard_normal(c),
                 "variance": rng.standard_normal(c)} for x in xs]

    def replica_loss(rank, group, x, s, o):
        y, mean, var = sync_batch_norm(x, s, o, EPS, group)
        named = {"y": y, "mean": mean, "variance": var}
        loss = None
        for name in outputs:
            term = reduce_sum(named[name] * Tensor(upstream[rank][name]))
            loss = term if loss is None else loss + term
        return loss

    def analytic(rank, group):
        x, s, o = (Tensor(a, requires_grad=True) for a in (xs[rank], scale, offset))
        replica_loss(rank, group, x, s, o).backward()
        return [g if g is not None else np.zeros_like(t.data) for t, g in ((x, x.grad), (s, s.grad), (o, o.grad))]

    def job_loss():
        return sum(float(v.data) for v in run_replicas(
            len(rows), lambda rank, group: replica_loss(rank, group, Tensor(xs[rank]), Tensor(scale), Tensor(offset))))

    grads = run_replicas(len(rows), analytic)
    for r, x in enumerate(xs):
        np.testing.assert_allclose(grads[r][0], numerical_gradient(job_loss, x), rtol=1e-6, atol=1e-7,
                                   err_msg=f"dx of replica {r}")
    # scale and offset are shared: the job's gradient is the sum of the replicas' local ones
    np.testing.assert_allclose(sum(g[1] for g in grads), numerical_gradient(job_loss, scale), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(sum(g[2] for g in grads), numerical_gradient(job_loss, offset), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(7, 3), (2, 3, 2, 4)])
@pytest.mark.parametrize("bessel", [True, False])
def test_group_of_one_is_fused_batch_norm_bitwise(dtype, shape, bessel):
    rng = np.random.default_rng(3)
    c = shape[-1]
    x, scale, offset = (rng.standard_normal(shape) * 2 + 3).astype(dtype), rng.uniform(0.5, 1.5, c).astype(dtype), \
        rng.standard_normal(c).astype(dtype)
    gy, gmean, gvar = rng.standard_normal(shape).astype(dtype), rng.standard_normal(c).astype(dtype), \
        rng.standard_normal(c).astype(dtype)
    group = SoloGroup()

    def run(op):
        ts = [Tensor(a, requires_grad=True) for a in (x, scale, offset)]
        outs = op(*ts)
        loss = reduce_sum(outs[0] * Tensor(gy)) + reduce_sum(outs[1] * Tensor(gmean)) + \
            reduce_sum(outs[2] * Tensor(gvar))
        loss.backward()
        return [o.data for o in outs] + [t.grad for t in ts]

    with backend("numpy"):      # the reference primitives (numba's sum in blocks: within an ulp)
        fused = run(lambda *ts: fused_batch_norm(*ts, epsilon=EPS, bessel_correction=bessel))
        sync = run(lambda *ts: sync_batch_norm(*ts, EPS, group, bessel_correction=bessel))
    for name, a, b in zip(("y", "mean", "variance", "dx", "dscale", "doffset"), sync, fused):
        assert a.dtype == b.dtype == dtype, name
        np.testing.assert_array_equal(a, b, err_msg=name)
    assert group.calls == 3     # forward: (count, sum), centered sum of squares; backward: one, stacked


STEPS = 3


@pytest.mark.parametrize("kwargs", [{}, {"moving_variance_rule": "bessel"}, {"zero_debias_moving_mean": True},
                                    {"center": False, "scale": False}])
def test_layer_moving_statistics_equal_one_big_batch(kwargs):
    rng = np.random.default_rng(11)
    batches = [rng.standard_normal((8, 2, 2, 3)) * 2 + 1 for _ in range(STEPS)]
    single = BatchNorm(3, decay=0.8, dtype=np.float64, **kwargs)
    big_ys = [single(x).data for x in batches]

    def replica(rank, group):
        layer = BatchNorm(3, decay=0.8, dtype=np.float64, synchronized=True, **kwargs)
        layer.replica_group = group
        ys = [layer(x[rank * 4:(rank + 1) * 4]).data for x in batches]
        return ys, layer.state_dict()

    results = run_replicas(2, replica)
    for rank, (ys, state) in enumerate(results):
        for y, big_y in zip(ys, big_ys):
            np.testing.assert_allclose(y, big_y[rank * 4:(rank + 1) * 4], rtol=1e-12, atol=1e-12)
        expected = single.state_dict()
        assert state.keys() == expected.keys()
        for name in expected:
            np.testing.assert_allclose(state[name], expected[name], rtol=1e-12, err_msg=name)


def test_layer_without_a_group_of_several_computes_as_today():
    x = np.random.default_rng(2).standard_normal((6, 3)).astype(np.float32)
    plain = BatchNorm(3, moving_variance_rule="bessel")
    expected = plain(x).data
    for group in (None, SoloGroup()):
        layer = BatchNorm(3, moving_variance_rule="bessel", synchronized=True)
        layer.replica_group = group
        np.testing.assert_array_equal(layer(x).data, expected)
        np.testing.assert_array_equal(layer.moving_variance.data, plain.moving_variance.data)
        if group is not None:
            assert group.calls == 0     # a group of one: the local path, no sums
    assert "synchronized" in repr(layer)


def test_renorm_refused():
    with pytest.raises(ValueError, match="synchronized .* not supported with renorm"):
        BatchNorm(3, renorm=True, synchronized=True)
    layer = BatchNorm(3, renorm=True)
    layer.synchronized = True       # as a trainer may set it, after construction
    with pytest.raises(ValueError, match="synchronized .* not supported with renorm"):
        layer(np.ones((4, 3), np.float32))


def test_bad_inputs():
    x, scale, offset = np.ones((4, 2)), np.ones(2), np.zeros(2)
    with pytest.raises(TypeError, match="group must be a replica group"):
        sync_batch_norm(x, scale, offset, EPS, object())
    with pytest.raises(ValueError, match=r"scale must have shape \(2,\)"):
        sync_batch_norm(x, np.ones(3), offset, EPS, SoloGroup())
    with pytest.raises(ValueError, match="offset has dtype float32"):
        sync_batch_norm(x, scale, offset.astype(np.float32), EPS, SoloGroup())
    with pytest.raises(ValueError, match="rank >= 2"):
        sync_batch_norm(np.ones(4), scale, offset, EPS, SoloGroup())
    with pytest.raises(ValueError, match="epsilon must be >= 0"):
        sync_batch_norm(x, scale, offset, -1.0, SoloGroup())


def test_empty_global_batch_refused_on_every_replica():
    errors = []

    def replica(rank, group):
        layer = BatchNorm(2, dtype=np.float64, synchronized=True)
        layer.replica_group = group
        try:
            layer(np.ones((0, 2)))
        except ValueError as e:
            errors.append(str(e))

    run_replicas(2, replica)
    assert len(errors) == 2 and all("hold no rows" in e for e in errors)
