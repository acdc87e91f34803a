"""The op table of the TF sweep (test_tf_sweep.py), in the spirit of PyTorch's OpInfo: one row per
public op of tinybn.ops (`tinybn.ops.__all__`), naming its TF twin and a generator of samples.

A row: name (the tinybn.ops name), twin (the TF function, as text for the table), tf_fn (how TF
computes it; the same arguments unless a sample says otherwise), samples(sample, dtype, rng)
yielding Samples (arrays, keyword arguments), the dtypes TF accepts for it, the TOLERANCES key
its float32 errors go to (float64: "every op, float64 (sweep)", held to 1e-10), and the
elementwise limits where the default of parity.ELEMENTWISE is too tight for the op's sums.
The sweep runs every sample forward and backward (a random upstream gradient for every
output, through tf.GradientTape) on both sides and compares every output and input gradient.

What the samples cover, wherever TF accepts it: negative axes, axis=None, keepdims,
broadcasting of every binary op in both directions and against rank-0 scalars, size-1 and
size-0 dimensions, float32 and float64, transposed (non-contiguous) views, and for the
windowed ops the full matrix of op_table_windows.py (their samples and twins; the other
rows' are in op_table_samples.py).

Ops and helpers. An op here is a differentiable function of tensors with a TF twin; it is
in tinybn.ops.__all__ and needs a row (aliases such as `lrn` share their op's row).
NOT_OPS are the helpers tinybn.ops also exports, on plain arrays and without a gradient or
a TF twin: each is tested where it is used (tests/ and the BatchNorm layer's crosscheck).
test_every_public_op_has_a_row fails for an op without a row and for a new public function
that is neither an op in __all__ nor a helper listed here.

KNOWN_MISMATCHES: (op, dtype, sample) -> a one-line diagnosis, for the cases where tinybn
deliberately differs from TF. test_tf_sweep.py checks each of them by a test of its own that
asserts exactly what differs (and fails when it no longer does).
"""
import warnings
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import tensorflow as tf

import op_table_samples as smp
import op_table_windows as win
from tinybn import ops

NOT_OPS = {
    "sum_to": "the broadcasting gradient's reduction (arrays): TF's broadcast_gradient_args + reduce_sum",
    "separable_kernel": "the one conv2d kernel a spatially separable pair equals (arrays, no gradient)",
    "factor_separable": "rank-1 SVD factors of a conv kernel (arrays, no gradient)",
    "renorm_correction": "batch renorm's (r, d) constants (arrays, no gradient), checked by BatchNorm renorm vs Keras",
}

# TF's AvgPoolGrad (Eigen and oneDNN alike) is not the derivative of TF's own avg_pool2d in
# these SAME cases (a 5-wide window, stride 2..3, over 4 pixels): it spreads the window's dy
# over a pixel the forward does not average. tinybn's gradient is that derivative: it equals
# the exact adjoint of TF's forward (test_avg_pool_mismatches_are_tf_gradient_errors).
_AVG_POOL_TF_GRADIENT_ERRORS = [
    "SAME k1x5 s13 d11 x(1, 1, 4, 2)", "SAME k3x5 s13 d11 x(1, 1, 4, 1)", "SAME k5x5 s13 d11 x(1, 1, 4, 2) view",
    "SAME k2x5 s23 d11 x(1, 2, 4, 2) view", "SAME k4x5 s23 d11 x(1, 2, 4, 1)", "SAME k5x2 s31 d11 x(2, 4, 1, 2)",
    "SAME k5x4 s31 d11 x(2, 4, 1, 1) view", "SAME k5x1 s32 d11 x(2, 4, 2, 2)", "SAME k5x3 s32 d11 x(2, 4, 2, 1) view",
    "SAME k5x5 s32 d11 x(2, 4, 2, 2)", "SAME k1x5 s33 d11 x(1, 3, 4, 1)", "SAME k3x5 s33 d11 x(1, 3, 4, 2)",
    "SAME k5x2 s33 d11 x(2, 4, 3, 1) view", "SAME k5x4 s33 d11 x(2, 4, 3, 2)", "SAME k5x5 s33 d11 x(1, 3, 4, 1) view",
]
KNOWN_MISMATCHES = {
    **{("avg_pool2d", dtype, desc): "TF's AvgPoolGrad is not the derivative of its own forward here; tinybn's is"
       for dtype in ("float32", "float64") for desc in _AVG_POOL_TF_GRADIENT_ERRORS},
    # tinybn.ops.pool: gradients agree, the forward does not
    **{("max_pool2d", dtype, desc): "an all--inf window: TF's max starts from the lowest finite value and "
       "returns it (-3.4e38 in float32), tinybn returns -inf"
       for dtype in ("float32", "float64") for desc in
       ["-inf corner k[3, 3] s[1, 1] SAME", "-inf corner k[2, 3] s[2, 1] [[0, 0], [1, 1], [1, 0], [0, 0]]"]},
}


@dataclass
class Sample:
    desc: str
    arrays: list
    params: dict = field(default_factory=dict)
    tf_params: dict = None      # TF's arguments where they differ from tinybn's (None: params)
    wrt: list = None            # which arrays get gradients (None: every float array)
    parity_key: str = None      # the TOLERANCES key, where not the row's


@dataclass
class OpInfo:
    name: str
    twin: str
    tf_fn: Callable
    samples: Callable
    covers: str
    dtypes: tuple = ("float32", "float64")
    parity_key: str = None      # the TOLERANCES key of its float32 comparisons (None: name)
    atol: dict = field(default_factory=dict)    # dtype -> elementwise atol, where wider than the default
    tb_fn: Callable = None      # how tinybn is called (None: the op with the same arguments)

    @property
    def op(self):
        return getattr(ops, self.name)

    def tinybn(self, *arrays, **params):
        return (self.tb_fn or self.op)(*arrays, **params)


# ---- samples of the fast CIFAR recipe's ops (tinybn.ops.activations, the label-smoothed loss) --------

def gelu_samples(sample, dtype, rng):
    """Both forms; 3 x standard normal with exact zeros and the tails (erfc small, tanh at 1)."""
    for approximate, key in ((False, "gelu"), (True, "gelu (tanh form)")):
        for i, shape in enumerate([(3, 4), (2, 3, 4), (), (0, 2), (2, 2, 3, 5)]):
            x = np.asarray(3 * smp.randn(rng, shape, dtype))
            x.reshape(-1)[:5] = [1.5, 0.0, -9.0, 9.0, -30.0][:x.size]
            yield sample(f"{shape} approximate={approximate}{' view' if i % 2 else ''}", [smp.as_view(x, i % 2 == 1)],
                         dict(approximate=approximate), parity_key=key)


def tf_label_smoothed_xent(labels, logits, label_smoothing):
    """Keras's categorical_crossentropy (from_logits, label_smoothing) on tf.one_hot labels, per example
    (the function Keras's CategoricalCrossentropy calls, without its cast of the inputs to float32)."""
    onehot = tf.one_hot(labels, logits.shape[-1], dtype=logits.dtype)
    with warnings.catch_warnings():       # Keras warns of one class (K = 1), a sample here on purpose
        warnings.simplefilter("ignore", SyntaxWarning)
        return tf.keras.losses.categorical_crossentropy(onehot, logits, from_logits=True,
                                                        label_smoothing=label_smoothing)


def label_smoothed_xent_samples(sample, dtype, rng):
    cases = [((4,), 5, np.int32, 0.2), ((2, 3), 4, np.int64, 0.5), ((3,), 1, np.int32, 0.2), ((6,), 10, np.int64, 0.0),
             ((5,), 10, np.int32, 1.0), ((0,), 3, np.int64, 0.2)]
    for i, (lead, k, label_dtype, s) in enumerate(cases):
        labels = rng.integers(0, k, lead).astype(label_dtype)
        yield sample(f"labels {lead} {np.dtype(label_dtype).name} K={k} s={s}",
                     [labels, 3 * smp.randn(rng, lead + (k,), dtype, i == 1)], dict(label_smoothing=s), wrt=[1])


# ---- the table ---------------------------------------------------------------------------------

W = win.WINDOW_COVERS
BINARY = "broadcasting both ways, rank-0 scalars, size-1 and size-0 dims, views"
TABLE = [
    OpInfo("add", "tf.add", tf.add, smp.binary_samples, BINARY, parity_key="add/sub/mul/div"),
    OpInfo("sub", "tf.subtract", tf.subtract, smp.binary_samples, BINARY, parity_key="add/sub/mul/div"),
    OpInfo("mul", "tf.multiply", tf.multiply, smp.binary_samples, BINARY, parity_key="add/sub/mul/div"),
    OpInfo("div", "tf.divide", tf.divide, lambda *a: smp.binary_samples(*a, positive_y=True), BINARY,
           parity_key="add/sub/mul/div"),
    OpInfo("neg", "tf.negative", tf.negative, smp.unary_samples([(2, 3), (3, 4), (), (0, 2)]),
           "rank 0, size 0, views"),
    OpInfo("pow", "tf.pow", tf.pow, smp.pow_samples, "integer, fractional, negative and 0 exponents; rank 0, size 0"),
    OpInfo("matmul", "tf.matmul", tf.matmul, smp.matmul_samples, "batched, broadcast batch, K = 0, M = 0, views"),
    OpInfo("reshape", "tf.reshape", tf.reshape, smp.reshape_samples, "-1, to and from rank 0, size 0, views",
           parity_key="reshape/transpose"),
    OpInfo("transpose", "tf.transpose", tf.transpose, smp.transpose_samples,
           "perm None, negative axes, size 0, rank 0, views", parity_key="reshape/transpose"),
    OpInfo("reduce_sum", "tf.reduce_sum", tf.reduce_sum, smp.reduction_samples(True),
           "axis None/int/negative/tuple, keepdims, size 1 and 0, views", parity_key="reduce_sum/mean"),
    OpInfo("reduce_mean", "tf.reduce_mean", tf.reduce_mean, smp.reduction_samples(False),
           "axis None/int/negative/tuple, keepdims, size 1 and 0, views", parity_key="reduce_sum/mean"),
    OpInfo("reduce_max", "tf.reduce_max", tf.reduce_max, smp.reduction_samples(False, ties=True),
           "axis None/int/negative/tuple, keepdims, ties, size 1 and 0, views"),
    OpInfo("get_item", "Tensor.__getitem__ / tf.gather", smp.tf_get_item, smp.get_item_samples,
           "slices, negative steps, ellipsis, newaxis, empty slice, repeated gather", parity_key="get_item/concat"),
    OpInfo("concat", "tf.concat", lambda *xs, axis: tf.concat(list(xs), axis), smp.concat_samples,
           "negative axis, size-0 pieces, one piece, views", parity_key="get_item/concat",
           tb_fn=lambda *xs, axis: ops.concat(list(xs), axis)),
    OpInfo("relu", "tf.nn.relu", tf.nn.relu, smp.relu_samples, "exact zeros, rank 0, size 0, views"),
    OpInfo("bias_add", "tf.nn.bias_add", tf.nn.bias_add, smp.bias_add_samples, "2-D and 4-D, size 0, views"),
    OpInfo("dropout", "tf.nn.experimental.stateless_dropout (same mask)", smp.tf_dropout, smp.dropout_samples,
           "rates 0..0.7, noise_shape, views", tb_fn=smp.tb_dropout),
    OpInfo("conv2d", "tf.nn.conv2d", win.tf_conv2d, win.conv2d_samples,
           W.format(s="1..3 (every pair)", d="1..2 (every pair)", n="N = 0; "), atol={"float32": 1e-5}),
    OpInfo("depthwise_conv2d", "tf.nn.depthwise_conv2d", tf.nn.depthwise_conv2d, win.depthwise_samples,
           W.format(s="1..3 (equal)", d="1..2 (every pair, strides 1)", n="")),
    OpInfo("separable_conv2d", "tf.nn.separable_conv2d", tf.nn.separable_conv2d, win.separable_samples,
           W.format(s="1..3 (equal)", d="1..2 (every pair, strides 1)", n=""), atol={"float32": 5e-6}),
    OpInfo("spatially_separable_conv2d", "two tf.nn.conv2d (KHx1, then 1xKW)", win.tf_spatially_separable,
           win.spatially_separable_samples, W.format(s="1..3 (every pair)", d="1, 2", n="N = 0; "),
           atol={"float32": 5e-6}),
    OpInfo("max_pool2d", "tf.nn.max_pool2d", tf.nn.max_pool2d, win.max_pool_samples,
           W.format(s="1..3 (every pair)", d="(none)", n="N = 0; ") + "; ties; all--inf windows"),
    OpInfo("avg_pool2d", "tf.nn.avg_pool2d", tf.nn.avg_pool2d, win.avg_pool_samples,
           W.format(s="1..3 (every pair)", d="(none)", n="N = 0; ").replace("SAME/VALID/explicit", "SAME/VALID")),
    OpInfo("local_response_normalization", "tf.nn.local_response_normalization", tf.nn.local_response_normalization,
           smp.lrn_samples, "op defaults, beta 1 and 0.75, radius > depth, depth 1, N = 0, views", dtypes=("float32",)),
    OpInfo("softmax", "tf.nn.softmax", tf.nn.softmax, smp.softmax_samples, "axis -1/0/1/-2, one class, size 0, views"),
    OpInfo("log_softmax", "tf.nn.log_softmax", tf.nn.log_softmax, smp.softmax_samples,
           "axis -1/0/1/-2, one class, size 0, views"),
    OpInfo("softmax_cross_entropy_with_logits", "tf.nn.softmax_cross_entropy_with_logits",
           tf.nn.softmax_cross_entropy_with_logits, smp.xent_samples,
           "soft and unnormalised labels (both gradients), axis -1/0/1/-2, size 0, views"),
    OpInfo("sparse_softmax_cross_entropy_with_logits", "tf.nn.sparse_softmax_cross_entropy_with_logits",
           tf.nn.sparse_softmax_cross_entropy_with_logits, smp.sparse_xent_samples,
           "int32 and int64 labels, rank 1 and 2, one class, size 0, views"),
    OpInfo("l2_loss", "tf.nn.l2_loss", tf.nn.l2_loss, smp.unary_samples([(3, 4), (2, 3, 4), (), (0, 3)]),
           "rank 0, size 0, views", parity_key="l2_loss"),
    OpInfo("moments", "tf.nn.moments", tf.nn.moments, smp.moments_samples,
           "both outputs' gradients, axes lists/int/negative, keepdims, size 1, views"),
    OpInfo("batch_normalization", "tf.nn.batch_normalization", smp.tf_batch_normalization,
           smp.batch_normalization_samples,
           "(C,) and keepdims statistics, offset and scale None or given, all five gradients, views",
           tb_fn=smp.tb_batch_normalization),
    OpInfo("fused_batch_norm", "tf.compat.v1.nn.fused_batch_norm (+ tf ops for the statistics' gradients)",
           smp.tf_fused, smp.fused_samples, "training, exponential_avg_factor, inference; 2-D and 4-D; "
           "every output's gradient; views", dtypes=("float32",), parity_key="fused_batch_norm (training)",
           tb_fn=smp.tb_fused),
    # the atols are the tanh form's (its 1 + tanh(u) and 1 - tanh(u)**2 cancel for |x| > 2, TF's
    # float32 tanh is Eigen's rational one, and TF's chain rule sums in another order); the exact
    # form keeps parity.ELEMENTWISE's defaults in test_tf_fast_ops.py
    OpInfo("gelu", "tf.nn.gelu", tf.nn.gelu, gelu_samples,
           "both forms (TOLERANCES 'gelu', 'gelu (tanh form)'), exact zeros, tails to +-30, rank 0, size 0, views",
           atol={"float32": 5e-5, "float64": 2e-13}),
    OpInfo("sparse_softmax_cross_entropy_with_label_smoothing",
           "Keras categorical_crossentropy(tf.one_hot(labels), from_logits, label_smoothing)",
           tf_label_smoothed_xent, label_smoothed_xent_samples,
           "s 0, 0.2, 0.5 and 1, int32 and int64 labels, rank 1 and 2, one class, size 0, views"),
]
