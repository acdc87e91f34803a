"""local_response_normalization against tf.nn.local_response_normalization, forward and
backward (same upstream gradient), float32: the CIFAR tutorial's parameters, the op
defaults, beta=1, depth_radius > depth, depth 400 (TF's running-sum path), generated cases."""
import numpy as np
import pytest
import tensorflow as tf
from hypothesis import given
from hypothesis import strategies as st

import parity
from conftest import tb_forward_backward, tf_forward_backward
from tinybn.ops.lrn import local_response_normalization


def compare(x, rng, what, **kwargs):
    dy = rng.standard_normal(x.shape).astype(np.float32)
    tf_y, (tf_dx,) = tf_forward_backward(lambda t: tf.nn.local_response_normalization(t, **kwargs), [x], dy)
    tb_y, (tb_dx,) = tb_forward_backward(lambda t: local_response_normalization(t, **kwargs), [x], dy)
    what = f"{what} x{x.shape} {kwargs}"
    parity.assert_parity("local_response_normalization", "forward", tb_y, tf_y, what)
    parity.assert_parity("local_response_normalization", "backward", tb_dx, tf_dx, what)


CASES = {
    # name: (shape, kwargs, input scale)
    "cifar norm1": ((8, 12, 12, 64), dict(depth_radius=4, bias=1.0, alpha=0.001 / 9.0, beta=0.75), 3.0),
    "cifar large values": ((4, 6, 6, 64), dict(depth_radius=4, bias=1.0, alpha=0.001 / 9.0, beta=0.75), 30.0),
    "op defaults": ((4, 5, 5, 16), dict(), 1.0),
    "beta 1": ((4, 5, 5, 16), dict(depth_radius=2, bias=2.0, alpha=0.5, beta=1.0), 1.0),
    "radius > depth": ((4, 5, 5, 5), dict(depth_radius=7, bias=1.0, alpha=0.3, beta=0.75), 1.0),
    "tiny depth": ((4, 5, 5, 1), dict(depth_radius=3, bias=1.0, alpha=1.0, beta=0.5), 1.0),
    "depth 400 beta 0.5": ((2, 3, 3, 400), dict(depth_radius=5, bias=1.0, alpha=0.01, beta=0.5), 1.0),
    "depth 400 beta 0.75": ((2, 3, 3, 400), dict(depth_radius=20, bias=1.0, alpha=0.01, beta=0.75), 1.0),
}


@pytest.mark.parametrize("name", list(CASES))
def test_named_cases(name, rng):
    shape, kwargs, scale = CASES[name]
    compare((scale * rng.standard_normal(shape)).astype(np.float32), rng, name, **kwargs)


@given(st.tuples(st.integers(1, 3), st.integers(1, 4), st.integers(1, 4), st.integers(1, 40)),
       st.integers(0, 8), st.sampled_from([0.5, 1.0, 2.0]), st.sampled_from([1e-4, 0.01, 1.0]),
       st.sampled_from([0.5, 0.75, 1.0]), st.integers(0, 2**16))
def test_generated(shape, depth_radius, bias, alpha, beta, seed):
    rng = np.random.default_rng(seed)
    x = (2 * rng.standard_normal(shape)).astype(np.float32)
    compare(x, rng, "generated", depth_radius=depth_radius, bias=bias, alpha=alpha, beta=beta)
