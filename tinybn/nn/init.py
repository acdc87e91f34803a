"""Initializers as TF has them. Each is a callable `init(shape, rng, dtype) -> array`.

    truncated_normal(stddev, mean=0)   TF's: draws beyond 2 stddev are redrawn
                                       (the CIFAR tutorial's weights)
    constant(value), zeros()           (the tutorial's biases: 0.0 and 0.1)
    variance_scaling(scale, mode, distribution)
                                       Keras / tf.initializers.VarianceScaling:
                                       n = fan_in, fan_out or their mean;
                                       "truncated_normal": stddev sqrt(scale/n)/0.8796...
                                       (so the truncated draw has variance scale/n);
                                       "untruncated_normal": stddev sqrt(scale/n);
                                       "uniform": U(-sqrt(3 scale/n), +sqrt(3 scale/n))
    glorot_uniform()                   variance_scaling(1, "fan_avg", "uniform"), Keras's default

Fans follow TF's `_compute_fans`: a (in, out) matrix has fan_in=in, fan_out=out; an
HWIO filter has fan_in = KH*KW*I and fan_out = KH*KW*O.

Floor: nn (tests/test_layering.py): imports from tinybn only core, backend, ops and nn.
"""
import math

import numpy as np

# stddev of a standard normal truncated to [-2, 2] (scipy.stats.truncnorm.std(-2, 2))
_TRUNCATED_STD = 0.87962566103423978


def _truncated(rng, shape, mean, stddev):
    out = rng.standard_normal(shape)
    bad = np.abs(out) > 2.0
    while bad.any():                      # redraw, as TF's TruncatedNormal does
        out[bad] = rng.standard_normal(int(bad.sum()))
        bad = np.abs(out) > 2.0
    return mean + stddev * out


def truncated_normal(stddev=1.0, mean=0.0):
    def init(shape, rng, dtype=np.float32):
        return _truncated(rng, shape, mean, stddev).astype(dtype)
    return init


def constant(value=0.0):
    def init(shape, rng, dtype=np.float32):
        return np.full(shape, value, dtype=dtype)
    return init


def zeros():
    return constant(0.0)


def ones():
    return constant(1.0)


def compute_fans(shape):
    if len(shape) < 1:
        return 1, 1
    if len(shape) == 1:
        return shape[0], shape[0]
    receptive = math.prod(shape[:-2])
    return receptive * shape[-2], receptive * shape[-1]


def variance_scaling(scale=1.0, mode="fan_in", distribution="truncated_normal"):
    if scale <= 0:
        raise ValueError(f"variance_scaling: scale must be positive, got {scale}")
    if mode not in ("fan_in", "fan_out", "fan_avg"):
        raise ValueError(f"variance_scaling: mode must be fan_in, fan_out or fan_avg, got {mode!r}")
    if distribution not in ("truncated_normal", "untruncated_normal", "normal", "uniform"):
        raise ValueError(f"variance_scaling: unknown distribution {distribution!r}")

    def init(shape, rng, dtype=np.float32):
        fan_in, fan_out = compute_fans(shape)
        n = {"fan_in": fan_in, "fan_out": fan_out, "fan_avg": (fan_in + fan_out) / 2}[mode]
        variance = scale / max(1.0, n)
        if distribution == "truncated_normal":
            out = _truncated(rng, shape, 0.0, math.sqrt(variance) / _TRUNCATED_STD)
        elif distribution in ("untruncated_normal", "normal"):
            out = math.sqrt(variance) * rng.standard_normal(shape)
        else:
            limit = math.sqrt(3.0 * variance)
            out = rng.uniform(-limit, limit, shape)
        return out.astype(dtype)
    return init


def glorot_uniform():
    return variance_scaling(1.0, "fan_avg", "uniform")
