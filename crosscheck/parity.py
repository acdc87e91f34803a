"""The parity bookkeeping of crosscheck/: one tolerance table, one error measure, one report.

Error measure (one number per comparison; docs/tf-conventions.md#tolerances):

    err = max|ours - tf| / max|tf|          (max|tf| floored at 1e-30)

Every comparison goes through `assert_parity(op, direction, ours, theirs)`,
which checks err against TOLERANCES[op][direction] and remembers the worst err
seen for that (op, direction). At the end of `pytest crosscheck/` the table of
worst errors is printed and written to crosscheck/parity-table.md;
`python crosscheck/parity.py` prints the last one again.

Beside it, an elementwise check (what numpy.testing.assert_allclose does):

    |ours - tf| <= atol + rtol * |tf|       at every entry

so that an error in the small entries cannot hide behind a large one (the max-normalised
measure above only sees errors as large as 1e-6 of the biggest entry). `assert_parity(...,
elementwise=(atol, rtol))` applies both; ELEMENTWISE holds the limits per dtype, for
inputs of order 1 (the sweep's samples are standard normal). rtol: float32 1e-5 (about 80
units in the last place), float64 1e-10 (the sweep's float64 limit). atol is what an entry
that cancels to about 0 keeps of the rounding of its terms: with those rtols, the sweep
needed at most 3e-8 (float32: matmul, fused_batch_norm, moments) and 8e-17 (float64), so
the defaults 1e-6 and 1e-15 leave 10x or more; conv2d's 50-term window sums against
oneDNN needed 1.1e-6 (its row: 1e-5), separable and spatially separable 7e-7 (5e-6).

Tolerances: float32 ops agree with TF to about 1e-7..2e-6 of the largest value
(docs/tf-conventions.md#tolerances: oneDNN conv vs numpy im2col differs by 1.6e-6 of
max|ref|); reductions over many terms (filter gradients, BN over N*H*W) get
more room. Each limit leaves roughly 5-10x headroom over what was measured.
"""
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
TABLE_PATH = os.path.join(HERE, "parity-table.md")

# op -> {direction: tolerance on max|ours - tf| / max|tf|}
TOLERANCES = {
    # basic (tinybn.ops.basic)
    "add/sub/mul/div":   {"forward": 1e-6, "backward": 1e-6},
    "pow":               {"forward": 1e-6, "backward": 1e-6},
    "matmul":            {"forward": 1e-5, "backward": 1e-5},
    "reshape/transpose": {"forward": 0.0, "backward": 0.0},
    "reduce_sum/mean":   {"forward": 1e-6, "backward": 1e-6},
    "reduce_max":        {"forward": 0.0, "backward": 1e-6},
    "get_item/concat":   {"forward": 0.0, "backward": 0.0},
    "relu":              {"forward": 0.0, "backward": 0.0},
    "bias_add":          {"forward": 1e-6, "backward": 1e-6},
    "dropout":           {"forward": 1e-6, "backward": 1e-6},
    "neg":               {"forward": 0.0, "backward": 0.0},
    # every op of the sweep (test_tf_sweep.py) in float64, against TF's float64 kernels
    "every op, float64 (sweep)": {"forward": 1e-10, "backward": 1e-10},
    # conv (tinybn.ops.conv)
    "conv2d":            {"forward": 1e-5, "backward": 1e-5},
    "spatially_separable_conv2d": {"forward": 1e-5, "backward": 1e-5},
    "depthwise_conv2d":  {"forward": 1e-5, "backward": 1e-5},
    "separable_conv2d":  {"forward": 1e-5, "backward": 1e-5},
    "SeparableConv2D vs Keras": {"forward": 1e-5, "backward": 1e-5},
    # pool (tinybn.ops.pool)
    # a pixel that is the maximum of several windows sums their dy in float32 in another order
    # than TF: when they cancel (4 dy summing to 0.029 on a 2x2 image) that is 1.0e-6 of max|tf|
    "max_pool2d":        {"forward": 0.0, "backward": 5e-6},
    "avg_pool2d":        {"forward": 1e-6, "backward": 1e-6},
    # batch norm (tinybn.ops.batchnorm, tinybn.nn.BatchNorm)
    "moments":           {"forward": 1e-5, "backward": 1e-5},
    "batch_normalization": {"forward": 1e-6, "backward": 1e-5},
    "fused_batch_norm (training)":  {"forward": 1e-5, "backward": 1e-5},
    "fused_batch_norm (inference)": {"forward": 1e-6, "backward": 1e-5},
    "BatchNorm vs Keras":        {"forward": 1e-5, "backward": 1e-5, "moving statistics": 1e-5},
    "BatchNorm renorm vs Keras": {"forward": 1e-5, "backward": 1e-5, "moving statistics": 1e-5},
    # lrn (tinybn.ops.lrn)
    "local_response_normalization": {"forward": 1e-6, "backward": 1e-5},
    # losses (tinybn.ops.losses)
    "softmax":           {"forward": 1e-6, "backward": 1e-6},
    "log_softmax":       {"forward": 1e-6, "backward": 1e-6},
    "softmax_cross_entropy_with_logits":        {"forward": 1e-6, "backward": 1e-6},
    "sparse_softmax_cross_entropy_with_logits": {"forward": 1e-6, "backward": 1e-6},
    "l2_loss":           {"forward": 1e-6, "backward": 0.0},
    # the fast CIFAR recipe's ops (tinybn.ops.activations, tinybn.ops.losses), float32, in
    # test_tf_fast_ops.py (normal x 3, every float32 step of [-6, 6] in 1/256, the tails) and the
    # sweep; worst seen: gelu 1.5e-8 / 1.5e-7, its tanh form 8.5e-8 / 3.6e-6 (1 + tanh and
    # 1 - tanh**2 cancel beyond |x| = 2, TF's tanh is Eigen's), the loss 1.4e-7 / 2.3e-7
    "gelu":              {"forward": 1e-6, "backward": 1e-6},
    "gelu (tanh form)":  {"forward": 1e-6, "backward": 2e-5},
    "sparse_softmax_cross_entropy_with_label_smoothing": {"forward": 1e-6, "backward": 1e-6},
    # CIFAR-10 preprocessing (tinybn.data.image), same random draws as TF. TF's float32
    # reduce_std is off by ~7e-7 (ours by 1.6e-7, both vs float64); a low contrast
    # factor before standardization amplifies the mean's rounding (1.1e-6 seen).
    "adjust_brightness/crop/flip": {"forward": 0.0},
    "adjust_contrast":   {"forward": 1e-6},
    "per_image_standardization": {"forward": 5e-6},
    "cifar10 train preprocessing": {"forward": 1e-5},
    "cifar10 eval preprocessing":  {"forward": 5e-6},
    # CIFAR-10 models (tinybn.models.cifar10) vs crosscheck/tf_models.py (test_tf_models.py).
    # forward/backward: one float32 step (logits, loss, BN moving stats / every parameter
    # gradient); worst over 12 seeds 1.1e-6 / 7.5e-6, errors adding up over the layers.
    # "after 20 steps": float64 parameters, moving stats, inference logits; worst seen
    # 7e-15 (GD), 2e-11 (Adam: its eps-hat step amplifies the noise of near-zero gradients).
    "model tutorial":    {"forward": 1e-5, "backward": 5e-5, "after 20 steps": 1e-13},
    "model tutorial_bn": {"forward": 1e-5, "backward": 5e-5, "after 20 steps": 1e-13},
    "model bn":          {"forward": 1e-5, "backward": 5e-5, "after 20 steps": 2e-10},
    # resnet_v2_50 (tinybn.models.resnet_v2) vs crosscheck/tf_resnet.py, batch 2 at 64x64
    # (test_tf_resnet.py): forward = float32 logits, end points, loss, moving stats; backward =
    # every parameter gradient in float64 (float32 relu-kink flips, see there). Worst over 6
    # seeds: 9.7e-5 (training; 2.0e-5 inference), 1.4e-12, float64 forward 4.7e-13.
    "resnet_v2":         {"forward": 5e-4, "backward": 1e-11, "float64 forward": 5e-12},
    # MNIST models (tinybn.models.mnist) vs tf.nn in test_tf_mnist.py: one step at batch 8, float32
    # (cnn_bn's conv gradients in float64: max-pool near-ties); worst seen 1.5e-6 / 4.4e-6 / 5.5e-7
    "model cnn_bn":      {"forward": 1e-5, "backward": 5e-5, "moving statistics": 1e-5},
    "model fc-bn":       {"forward": 1e-5, "backward": 5e-5, "moving statistics": 1e-5},
    # the fast CIFAR model (tinybn.models.cifar_fast) vs its tf.nn build in test_tf_fast_model.py:
    # one float64 step of a narrow model (logits and loss / every parameter gradient / the BN moving
    # statistics); worst over 2 seeds 1.2e-15 / 8.5e-14 / 3.9e-15
    "model fast":        {"forward": 1e-13, "backward": 1e-12, "moving statistics": 1e-13},
    # the fast recipe's whole run (tinybn.tasks.fast_recipe) vs airbench94's loop written in TF
    # (test_tf_fast_trajectory.py): 40 float64 steps of the narrow model through the schedule, the
    # whitening-bias freeze and the Lookahead average; every weight and moving statistic at the end.
    # Worst over 2 seeds: 3.7e-16 (the per-step losses), 1.1e-13 (after 40 steps)
    "recipe fast":       {"loss": 1e-12, "after 40 steps": 1e-11},
    # optimizers and schedules (tinybn.optim), after 10 float32 steps: bit-exact (test_tf_optim.py)
    "GradientDescent":   {"parameters": 0.0},
    "Momentum":          {"parameters": 0.0},
    "Adam":              {"parameters": 0.0},
    "ExponentialMovingAverage": {"shadow": 0.0},
    # TF's pow is Eigen's (faithful), tinybn's libm's double pow rounded once: one float32 ulp
    "exponential_decay": {"learning rate": 2.0 ** -23},
}

# dtype -> (atol, rtol) of the elementwise check |ours - tf| <= atol + rtol * |tf| (see above)
ELEMENTWISE = {"float32": (1e-6, 1e-5), "float64": (1e-15, 1e-10)}

_worst = {}   # (op, direction) -> worst err seen this session


def _comparable(ours, theirs):
    """Both as float64 arrays of one shape; None when there is nothing to compare, and
    "nan" when NaNs sit in different places (an infinite error)."""
    ours = np.asarray(ours, dtype=np.float64)
    theirs = np.asarray(theirs, dtype=np.float64)
    if ours.shape != theirs.shape:
        raise AssertionError(f"shape mismatch: tinybn {ours.shape} vs TF {theirs.shape}")
    if theirs.size == 0:
        return None
    if not np.array_equal(np.isnan(ours), np.isnan(theirs)):
        return "nan"
    return ours, theirs


def relative_error(ours, theirs, scale=0.0):
    """max|ours - tf| / max(max|tf|, scale). `scale`, for a result that is a sum whose terms may
    cancel far below their size: the largest sum of |terms|, which is what rounding is relative to."""
    pair = _comparable(ours, theirs)
    if pair is None or isinstance(pair, str):
        return 0.0 if pair is None else float("inf")
    ours, theirs = np.nan_to_num(pair[0]), np.nan_to_num(pair[1])
    return float(np.abs(ours - theirs).max() / max(np.abs(theirs).max(), scale, 1e-30))


def elementwise_excess(ours, theirs, atol, rtol):
    """max of |ours - tf| / (atol + rtol * |tf|) over the entries: <= 1 passes, inf for a NaN mismatch."""
    pair = _comparable(ours, theirs)
    if pair is None or isinstance(pair, str):
        return 0.0 if pair is None else float("inf")
    ours, theirs = pair
    same = (ours == theirs) | (np.isnan(ours) & np.isnan(theirs))    # equal infinities, NaNs: no error
    diff = np.where(same, 0.0, np.abs(ours - theirs))
    return float((diff / (atol + rtol * np.abs(np.nan_to_num(theirs)))).max())


def assert_elementwise(ours, theirs, atol, rtol, what=""):
    """Assert |ours - tf| <= atol + rtol * |tf| at every entry, naming the worst entry if not."""
    excess = elementwise_excess(ours, theirs, atol, rtol)
    if excess <= 1:
        return excess
    ours, theirs = np.asarray(ours, np.float64), np.asarray(theirs, np.float64)
    diff = np.abs(ours - theirs) / (atol + rtol * np.abs(np.nan_to_num(theirs)))
    at = np.unravel_index(np.nanargmax(np.where(np.isnan(diff), np.inf, diff)), diff.shape)
    raise AssertionError(f"{what}: |tinybn - tf| > {atol:g} + {rtol:g} * |tf| at {tuple(int(i) for i in at)}: "
                         f"tinybn {ours[at]!r} vs TF {theirs[at]!r} ({excess:.3g} times the limit)")


def assert_parity(op, direction, ours, theirs, what="", elementwise=None, scale=0.0):
    """Assert tinybn's `ours` equals TF's `theirs` within TOLERANCES[op][direction].

    elementwise=(atol, rtol) also asserts |ours - tf| <= atol + rtol * |tf| at every entry.
    scale: see relative_error (the size of the terms of a sum that may cancel).
    """
    tol = TOLERANCES[op][direction]
    err = relative_error(ours, theirs, scale)
    key = (op, direction)
    _worst[key] = max(_worst.get(key, 0.0), err)
    assert err <= tol, (f"{op} {direction}{' ' + what if what else ''}: "
                        f"max|tinybn - tf| / max|tf| = {err:.3g} > tolerance {tol:g}")
    if elementwise is not None:
        assert_elementwise(ours, theirs, *elementwise, what=f"{op} {direction}{' ' + what if what else ''}")
    return err


def table_markdown():
    """One row per op: worst forward, backward and other (named) comparison, and the limits."""
    lines = ["| op | forward | backward | other check | tolerance (fwd / bwd / other) |",
             "|---|---|---|---|---|"]
    for op, tols in TOLERANCES.items():
        other = [d for d in tols if d not in ("forward", "backward")]
        cells, limits = [], []
        for direction in ("forward", "backward", other[0] if other else None):
            if direction not in tols:
                cells.append("-")
                limits.append("-")
                continue
            worst = _worst.get((op, direction))
            cell = "not run" if worst is None else f"{worst:.1e}"
            cells.append(cell + (f" ({direction})" if direction in other else ""))
            limits.append(f"{tols[direction]:g}")
        lines.append(f"| {op} | {' | '.join(cells)} | {' / '.join(limits)} |")
    return "\n".join(lines)


def complete():
    """Whether this session checked every (op, direction) of TOLERANCES: a whole-suite run."""
    return all((op, d) in _worst for op, tols in TOLERANCES.items() for d in tols)


def write_table():
    with open(TABLE_PATH, "w") as f:
        f.write("Worst error max|tinybn - tf| / max|tf| over every case of `pytest crosscheck/`\n\n")
        f.write(table_markdown() + "\n")


if __name__ == "__main__":
    if not os.path.exists(TABLE_PATH):
        sys.exit("no parity table yet: run `pytest crosscheck/` first")
    print(open(TABLE_PATH).read())
