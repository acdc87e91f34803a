"""Sample generators and TF twins of the sweep's rows (op_table.py) but the windowed ops
(op_table_windows.py): basic ops, losses, lrn and the batch norm family.

Each generator is samples(sample, dtype, rng) and yields sample(desc, arrays, params,
tf_params, wrt=..., parity_key=...) (op_table.Sample). Values are standard normal (order 1)
unless an op needs otherwise (denominators and fractional powers away from 0, variances
positive); `view` samples hand the op a transposed, non-contiguous view of the same values.
"""
import itertools

import numpy as np
import tensorflow as tf

import op_table_windows as win
from tinybn import ops


def as_view(a, view=True):
    """The same values as a transposed (non-contiguous) view, when asked and rank >= 2."""
    return np.ascontiguousarray(a.T).T if view and a.ndim >= 2 else a


def randn(rng, shape, dtype, view=False):
    return as_view(np.asarray(rng.standard_normal(shape)).astype(dtype), view)


def away_from_zero(rng, shape, dtype, view=False):
    """Standard normal values pushed at least 0.5 away from 0 (denominators, powers)."""
    a = np.asarray(rng.standard_normal(shape))
    return as_view((np.where(a < 0, -1, 1) * (np.abs(a) + 0.5)).astype(dtype), view)


# ---- basic -------------------------------------------------------------------------------------

BROADCAST_PAIRS = [((2, 3), (2, 3)), ((2, 3, 4), (4,)), ((2, 3, 4), (3, 1)), ((2, 1, 4), (3, 1)),
                   ((2, 3), ()), ((), ()), ((1,), (2, 3)), ((1, 1), (1, 1)), ((0, 3), (3,)),
                   ((2, 0, 3), (1, 1, 3)), ((4, 3), (4, 1))]


def binary_samples(sample, dtype, rng, positive_y=False):
    for i, (sa, sb) in enumerate(BROADCAST_PAIRS):
        for a_shape, b_shape in dict.fromkeys([(sa, sb), (sb, sa)]):          # both directions
            view = i % 3 == 2
            y = away_from_zero(rng, b_shape, dtype, view) if positive_y else randn(rng, b_shape, dtype, view)
            yield sample(f"{a_shape}.{b_shape}{' view' if view else ''}", [randn(rng, a_shape, dtype, view), y])


def unary_samples(shapes, make=randn):
    def samples(sample, dtype, rng):
        for i, shape in enumerate(shapes):
            view = i % 2 == 1
            yield sample(f"{shape}{' view' if view else ''}", [make(rng, shape, dtype, view)])
    return samples


def pow_samples(sample, dtype, rng):
    for p, shape in itertools.product([2.0, 3.0, 0.5, -1.5, 1.0, 0.0], [(3, 4), (), (0, 2)]):
        x = np.abs(away_from_zero(rng, shape, dtype)) if p != int(p) else away_from_zero(rng, shape, dtype)
        yield sample(f"p={p} {shape}", [x], dict(exponent=p), dict(y=p))
    yield sample("p=2 view", [randn(rng, (3, 4), dtype, True)], dict(exponent=2.0), dict(y=2.0))


def matmul_samples(sample, dtype, rng):
    pairs = [((3, 4), (4, 2), False), ((1, 5), (5, 1), False), ((2, 3, 4), (2, 4, 5), False),
             ((2, 1, 3, 4), (3, 4, 2), False), ((3, 0), (0, 2), False), ((0, 4), (4, 2), False),
             ((4, 3), (3, 5), True), ((2, 3, 4), (2, 4, 2), True)]
    for a, b, view in pairs:
        yield sample(f"{a}@{b}{' views' if view else ''}", [randn(rng, a, dtype, view), randn(rng, b, dtype, view)])


def reshape_samples(sample, dtype, rng):
    for i, (shape, to) in enumerate([((2, 3, 4), (6, 4)), ((2, 3, 4), (-1,)), ((2, 3, 4), (4, -1, 2)),
                                     ((1,), ()), ((), (1, 1)), ((0, 3), (3, 0)), ((3, 4), (2, 6))]):
        yield sample(f"{shape}->{to}{' view' if i == 6 else ''}", [randn(rng, shape, dtype, i == 6)], dict(shape=to))


def transpose_samples(sample, dtype, rng):
    for i, (shape, perm) in enumerate([((2, 3, 4), None), ((2, 3, 4), (1, 0, 2)), ((3, 3, 3), (0, -1, 1)),
                                       ((2, 3, 4), (0, -1, 1)), ((2, 3, 4), (-1, -3, -2)),
                                       ((2, 3, 4, 5), (-2, 0, -1, 1)), ((0, 3), (1, 0)), ((), None),
                                       ((5,), (-1,)), ((3, 4), (-1, -2))]):
        # TF's own transpose gradient refuses negative axes (InvertPermutation): TF gets them normalised
        tf_perm = None if perm is None else [a % len(shape) for a in perm]
        yield sample(f"{shape} perm={perm}{' view' if i % 3 == 1 else ''}", [randn(rng, shape, dtype, i % 3 == 1)],
                     dict(perm=perm), dict(perm=tf_perm))


REDUCTIONS = [((2, 3, 4), None), ((2, 3, 4), 1), ((2, 3, 4), -1), ((2, 3, 4), (0, -1)), ((2, 3, 4), (-3, 1)),
              ((5,), 0), ((), None), ((1, 3, 1), (0, 2)), ((2, 3), -2), ((0, 3), 1)]


def reduction_samples(empty_axis_ok, ties=False):
    def samples(sample, dtype, rng):
        for i, ((shape, axis), keepdims) in enumerate(itertools.product(REDUCTIONS, [False, True])):
            view = i % 3 == 2
            x = randn(rng, shape, dtype, view)
            if ties and i % 4 == 1:
                x = as_view(np.round(x), view)    # several maxima in a row: TF shares the gradient equally
            yield sample(f"{shape} axis={axis} keepdims={keepdims}{' view' if view else ''}", [x],
                         dict(axis=axis, keepdims=keepdims))
        if empty_axis_ok:
            yield sample("(2, 0) axis=1", [randn(rng, (2, 0), dtype)], dict(axis=1))
    return samples


def get_item_samples(sample, dtype, rng):
    for i, index in enumerate([(slice(1, 3),), (Ellipsis, 1), (slice(None, None, -1), slice(0, 4, 2)), (-1,),
                               (slice(1, 3), None, -2), (slice(2, 2),), (1, Ellipsis, slice(-2, None))]):
        yield sample(f"[{index}]", [randn(rng, (4, 5, 3), dtype, i % 2 == 1)], dict(index=index))
    yield sample("gather [0, 3, 3, 1]", [randn(rng, (4, 5), dtype)], dict(index=np.array([0, 3, 3, 1])),
                 dict(index=np.array([0, 3, 3, 1]), gather=True))


def tf_get_item(x, index, gather=False):
    return tf.gather(x, index) if gather else x[index]


def concat_samples(sample, dtype, rng):
    for i, (shapes, axis) in enumerate([([(2, 3), (2, 1)], 1), ([(2, 3), (2, 1)], -1), ([(2, 3), (1, 3), (0, 3)], 0),
                                        ([(2, 3, 4), (2, 1, 4)], -2), ([(3,)], 0)]):
        yield sample(f"{shapes} axis={axis}", [randn(rng, s, dtype, i % 2 == 1) for s in shapes], dict(axis=axis))


def relu_samples(sample, dtype, rng):
    for i, shape in enumerate([(3, 4), (2, 3, 4), (), (0, 2)]):
        x = randn(rng, shape, dtype, i == 1)
        x = as_view(np.where(np.abs(x) < 0.3, 0, x).astype(dtype), i == 1)   # exact zeros: ReluGrad gives 0
        yield sample(f"{shape} with zeros", [x])


def bias_add_samples(sample, dtype, rng):
    for i, shape in enumerate([(4, 3), (2, 3, 4, 5), (0, 3), (3, 2)]):
        yield sample(f"{shape}{' view' if i == 3 else ''}", [randn(rng, shape, dtype, i == 3),
                                                               randn(rng, shape[-1:], dtype)])


def dropout_samples(sample, dtype, rng):
    for i, (shape, rate, noise) in enumerate([((6, 5), 0.3, None), ((6, 5), 0.5, (6, 1)),
                                              ((2, 3, 4), 0.7, (1, 3, 1)), ((4, 4), 0.0, None)]):
        yield sample(f"{shape} rate={rate} noise_shape={noise}", [randn(rng, shape, dtype, i == 1)],
                     dict(rate=rate, noise_shape=noise, seed=(i, 7)))


class _FixedDraw:
    """A stand-in numpy Generator whose random() returns TF's keep mask as 1 (kept) / 0 (dropped)."""

    def __init__(self, keep):
        self.keep = keep

    def random(self, shape):
        assert tuple(shape) == self.keep.shape
        return self.keep.astype(np.float64)


def tf_keep_mask(shape, dtype, rate, seed):
    kept = tf.nn.experimental.stateless_dropout(tf.ones(shape, dtype), rate, seed=seed)
    return kept.numpy() != 0


def tb_dropout(x, rate, noise_shape, seed):
    """tinybn's dropout with the mask TF draws for the seed (handed over through its rng argument)."""
    shape = noise_shape if noise_shape is not None else x.shape
    return ops.dropout(x, rate, noise_shape, rng=_FixedDraw(tf_keep_mask(shape, x.dtype, rate, seed)))


def tf_dropout(x, rate, noise_shape, seed):
    return tf.nn.experimental.stateless_dropout(x, rate, seed=seed, noise_shape=noise_shape)


# ---- losses, lrn ------------------------------------------------------------------------------

SOFTMAX_CASES = [((3, 5), -1), ((2, 3, 4), 1), ((2, 3, 4), -2), ((2, 3, 4), 0), ((4, 1), -1), ((0, 3), -1),
                 ((5,), 0)]


def softmax_samples(sample, dtype, rng):
    for i, (shape, axis) in enumerate(SOFTMAX_CASES):
        x = 3 * randn(rng, shape, dtype, i % 3 == 1)
        yield sample(f"{shape} axis={axis}{' view' if i % 3 == 1 else ''}", [x], dict(axis=axis))


def xent_samples(sample, dtype, rng):
    for i, ((shape, axis), kind) in enumerate(itertools.product(SOFTMAX_CASES[:4] + [((0, 3), -1)],
                                                                ["soft", "unnormalised"])):
        labels = rng.random(shape).astype(dtype) * 2
        if kind == "soft":
            labels = (labels / labels.sum(axis=axis, keepdims=True)).astype(dtype)
        # TF's axis must be non-negative: a negative one other than -1 fails in its _move_dim_to_end
        yield sample(f"{shape} axis={axis} {kind}", [labels, 3 * randn(rng, shape, dtype, i % 3 == 1)],
                     dict(axis=axis), dict(axis=axis % len(shape)))


def sparse_xent_samples(sample, dtype, rng):
    for i, (lead, k, label_dtype) in enumerate([((4,), 5, np.int32), ((2, 3), 4, np.int64), ((3,), 1, np.int32),
                                                ((0,), 3, np.int64)]):
        labels = rng.integers(0, k, lead).astype(label_dtype)
        yield sample(f"labels {lead} {np.dtype(label_dtype).name} K={k}",
                     [labels, 3 * randn(rng, lead + (k,), dtype, i == 1)], wrt=[1])


LRN_CASES = [((2, 3, 3, 8), {}), ((2, 2, 3, 6), dict(depth_radius=2, bias=2.0, alpha=0.5, beta=1.0)),
             ((1, 2, 2, 5), dict(depth_radius=7, bias=1.0, alpha=0.3, beta=0.75)),
             ((2, 2, 2, 1), dict(depth_radius=3, bias=1.0, alpha=1.0, beta=0.5)),
             ((2, 3, 3, 16), dict(depth_radius=4, bias=1.0, alpha=0.001 / 9.0, beta=0.75)),
             ((0, 2, 2, 4), dict(depth_radius=1))]


def lrn_samples(sample, dtype, rng):
    for i, (shape, kwargs) in enumerate(LRN_CASES):
        x = 2 * win.image(rng, dtype, shape[0], shape[1:3], shape[3], i % 2 == 1)
        yield sample(f"{shape} {kwargs}{' view' if i % 2 else ''}", [x], kwargs)


# ---- batch norm family ------------------------------------------------------------------------

def moments_samples(sample, dtype, rng):
    for i, ((shape, axes), keepdims) in enumerate(itertools.product(
            [((6, 3), [0]), ((2, 3, 4, 5), [0, 1, 2]), ((2, 3, 4, 5), [-1]), ((2, 3, 4, 5), [0, -2]),
             ((4, 3), 1), ((3, 1, 2), [0, 1])], [False, True])):
        x = 2 * randn(rng, shape, dtype, i % 3 == 2) + 0.5
        yield sample(f"{shape} axes={axes} keepdims={keepdims}", [x], dict(axes=axes, keepdims=keepdims))


def batch_normalization_samples(sample, dtype, rng):
    for i, (shape, keepdims, with_offset, with_scale) in enumerate(itertools.product(
            [(5, 3), (2, 3, 3, 2)], [False, True], [False, True], [False, True])):
        c = shape[-1]
        stat = (1,) * (len(shape) - 1) + (c,) if keepdims else (c,)
        mean, offset, scale = (randn(rng, stat, dtype) for _ in range(3))
        variance = rng.uniform(0.3, 3, stat).astype(dtype)
        arrays = [2 * randn(rng, shape, dtype, i % 3 == 2) + 0.5, mean, variance, offset, scale]
        yield sample(f"{shape} stats {stat} offset={with_offset} scale={with_scale}", arrays,
                     dict(with_offset=with_offset, with_scale=with_scale))


def tb_batch_normalization(x, m, v, o, s, with_offset, with_scale):
    return ops.batch_normalization(x, m, v, o if with_offset else None, s if with_scale else None, 1e-3)


def tf_batch_normalization(x, m, v, o, s, with_offset, with_scale):
    return tf.nn.batch_normalization(x, m, v, o if with_offset else None, s if with_scale else None, 1e-3)


def fused_samples(sample, dtype, rng):
    for i, (shape, mode) in enumerate(itertools.product([(2, 3, 3, 4), (7, 3), (1, 2, 3, 2)],
                                                        ["training", "running", "inference"])):
        c = shape[-1]
        x = 2 * randn(rng, shape, dtype, i % 3 == 1) + 1
        arrays = [x, rng.uniform(0.5, 1.5, c).astype(dtype), randn(rng, (c,), dtype)]
        if mode != "training":
            arrays += [randn(rng, (c,), dtype), rng.uniform(0.3, 3, c).astype(dtype)]
        yield sample(f"{shape} {mode}", arrays, dict(mode=mode, epsilon=1e-3 if i % 2 else 1e-5),
                     parity_key=f"fused_batch_norm ({'inference' if mode == 'inference' else 'training'})")


def tb_fused(x, scale, offset, *running, mode, epsilon):
    if mode == "inference":
        return ops.fused_batch_norm(x, scale, offset, *running, epsilon=epsilon, is_training=False)
    return ops.fused_batch_norm(x, scale, offset, *running, epsilon=epsilon,
                                exponential_avg_factor=0.25 if mode == "running" else 1.0)


def _value_of_first_gradient_of_second(value, grad_carrier):
    """A TF tensor equal to `value` whose gradient is that of `grad_carrier` (a - a is exactly 0)."""
    return tf.stop_gradient(value) + (grad_carrier - tf.stop_gradient(grad_carrier))


def tf_fused(x, scale, offset, *running, mode, epsilon):
    """tf.compat.v1.nn.fused_batch_norm, with the gradient of every output.

    TF's fused op gives no gradient through its mean and variance outputs (nor to the
    inference mean and variance inputs), where tinybn's is the true derivative. Those
    gradients come from the same quantities written with tf ops: the batch mean, the
    Bessel-corrected variance and the running averages (training), the identity and
    tf.nn.batch_normalization's gradient w.r.t. mean and variance (inference).
    """
    shape = x.shape
    x4 = tf.reshape(x, (shape[0], 1, 1, shape[1])) if len(shape) == 2 else x   # TF's fused op is 4-D only
    kwargs = dict(epsilon=epsilon, is_training=mode != "inference")
    if mode == "running":
        kwargs["exponential_avg_factor"] = 0.25
    y, mean, variance = tf.compat.v1.nn.fused_batch_norm(x4, scale, offset, *running, **kwargs)[:3]
    y = tf.reshape(y, shape)
    axes = list(range(len(shape) - 1))
    if mode == "inference":
        m, v = running
        bn = tf.nn.batch_normalization(tf.stop_gradient(x), m, v, tf.stop_gradient(offset),
                                       tf.stop_gradient(scale), epsilon)
        return _value_of_first_gradient_of_second(y, y + bn), tf.identity(m), tf.identity(v)
    n = int(np.prod(shape[:-1]))
    batch_mean = tf.reduce_mean(x, axes)
    batch_var = tf.reduce_mean(tf.math.squared_difference(x, tf.stop_gradient(batch_mean)), axes) * (n / max(n - 1, 1))
    if mode == "running":
        batch_mean = 0.75 * running[0] + 0.25 * batch_mean
        batch_var = 0.75 * running[1] + 0.25 * batch_var
    return (y, _value_of_first_gradient_of_second(mean, batch_mean),
            _value_of_first_gradient_of_second(variance, batch_var))
