"""The sweep: every row of op_table.py, every sample, forward and backward against TF.

For each sample, tinybn runs forward, a random upstream gradient is drawn for every output,
and both sides backprop it (tinybn's Tensor.backward; TF's tf.GradientTape.gradient with
output_gradients), as conftest.py's tf_forward_backward / tb_forward_backward do, extended to
several outputs. Every output and every input gradient must match in shape and dtype, within
the op's TOLERANCES (max-normalised; float64: "every op, float64 (sweep)", 1e-10) and
elementwise |tinybn - tf| <= atol + rtol * |tf| (parity.ELEMENTWISE, or the row's atol).

One test per (op, dtype) runs all its samples and reports every failing one. The samples in
op_table.KNOWN_MISMATCHES are left out of it and pinned by tests of their own, which assert
what differs and why (TF's avg_pool2d gradient against the adjoint of its own forward; the
max_pool2d output of an all--inf window), so they fail if either side changes. (An xfail
would count as a skip here, and a skip fails crosscheck/.) A run of the whole sweep writes the
op table (op, TF twin, what the samples cover, worst errors) to sweep-table.md.
"""
import os
import types
import zlib

import numpy as np
import pytest
import tensorflow as tf

import parity
from op_table import KNOWN_MISMATCHES, NOT_OPS, TABLE, Sample
import tinybn
from tinybn import ops

FLOAT64_KEY = "every op, float64 (sweep)"
SWEEP_TABLE_PATH = os.path.join(parity.HERE, "sweep-table.md")
ROWS = {row.name: row for row in TABLE}
CASES = [(row.name, dtype) for row in TABLE for dtype in row.dtypes]

_worst = {}        # (op, dtype, direction) -> worst max|tinybn - tf| / max|tf|
_ran = set()       # (op, dtype) whose samples all ran


def samples_of(row, dtype):
    rng = np.random.default_rng(zlib.crc32(f"{row.name} {dtype}".encode()))
    return list(row.samples(Sample, np.dtype(dtype).type, rng))


def _wrt(sample):
    if sample.wrt is not None:
        return list(sample.wrt)
    return [i for i, a in enumerate(sample.arrays) if np.asarray(a).dtype.kind == "f"]


def tb_forward_backward_all(row, sample, rng):
    """tinybn's outputs, the upstream gradients drawn for them, and the gradients of the wrt inputs."""
    wrt = _wrt(sample)
    tensors = [tinybn.Tensor(a, requires_grad=i in wrt) for i, a in enumerate(sample.arrays)]
    out = row.tinybn(*tensors, **sample.params)
    outs = list(out) if isinstance(out, tuple) else [out]
    upstreams = [rng.standard_normal(o.shape).astype(o.dtype) for o in outs]
    if len(outs) == 1:
        outs[0].backward(upstreams[0])
    else:    # sum_k <u_k, out_k>: its gradient is exactly each output's VJP added up
        total = (outs[0] * tinybn.Tensor(upstreams[0])).sum()
        for o, u in zip(outs[1:], upstreams[1:]):
            total = total + (o * tinybn.Tensor(u)).sum()
        total.backward()
    grads = [tensors[i].grad if tensors[i].grad is not None else np.zeros_like(sample.arrays[i]) for i in wrt]
    return [o.numpy() for o in outs], upstreams, grads


def tf_forward_backward_all(row, sample, upstreams):
    wrt = _wrt(sample)
    tensors = [tf.constant(a) for a in sample.arrays]
    with tf.GradientTape() as tape:
        for i in wrt:
            tape.watch(tensors[i])
        out = row.tf_fn(*tensors, **(sample.params if sample.tf_params is None else sample.tf_params))
    outs = list(out) if isinstance(out, (tuple, list)) else [out]
    grads = tape.gradient(outs, [tensors[i] for i in wrt], output_gradients=[tf.constant(u) for u in upstreams],
                          unconnected_gradients=tf.UnconnectedGradients.ZERO)
    return [o.numpy() for o in outs], [tf.convert_to_tensor(g).numpy() for g in grads]


def check_sample(row, dtype, sample):
    rng = np.random.default_rng(zlib.crc32(sample.desc.encode()))
    ours, upstreams, our_grads = tb_forward_backward_all(row, sample, rng)
    theirs, their_grads = tf_forward_backward_all(row, sample, upstreams)
    key = FLOAT64_KEY if dtype == "float64" else sample.parity_key or row.parity_key or row.name
    atol, rtol = parity.ELEMENTWISE[dtype]
    limits = (row.atol.get(dtype, atol), rtol)
    assert len(ours) == len(theirs), f"{len(ours)} outputs, TF has {len(theirs)}"
    pairs = [("forward", f"output {k}", a, b) for k, (a, b) in enumerate(zip(ours, theirs))]
    pairs += [("backward", f"gradient of input {i}", a, b) for i, a, b in zip(_wrt(sample), our_grads, their_grads)]
    for direction, what, a, b in pairs:
        assert np.shape(a) == np.shape(b) and np.asarray(a).dtype == b.dtype, \
            f"{what}: tinybn {np.asarray(a).dtype}{np.shape(a)} vs TF {b.dtype}{np.shape(b)}"
        for measure, err in ((direction, parity.relative_error(a, b)),
                             ("elementwise", parity.elementwise_excess(a, b, *limits))):
            _worst[row.name, dtype, measure] = max(_worst.get((row.name, dtype, measure), 0.0), err)
        parity.assert_parity(key, direction, a, b, what, elementwise=limits)


@pytest.mark.parametrize("op, dtype", CASES, ids=[f"{op}-{dtype}" for op, dtype in CASES])
def test_sweep(op, dtype):
    row = ROWS[op]
    failures = []
    samples = [s for s in samples_of(row, dtype) if (op, dtype, s.desc) not in KNOWN_MISMATCHES]
    for sample in samples:
        try:
            check_sample(row, dtype, sample)
        except Exception as e:   # every failing sample is reported, not only the first
            failures.append(f"{sample.desc}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
    _ran.add((op, dtype))
    assert not failures, f"{op} {dtype}: {len(failures)} of {len(samples)} samples fail:\n" + "\n".join(failures[:20])


def test_known_mismatches_name_real_samples():
    for op, dtype, desc in KNOWN_MISMATCHES:
        assert op in ROWS and dtype in ROWS[op].dtypes, (op, dtype)
        assert desc in [s.desc for s in samples_of(ROWS[op], dtype)], f"{op} {dtype}: no sample {desc!r}"


def known_mismatches_of(name):
    """(dtype, desc, sample, the rng check_sample would use) of op `name`'s KNOWN_MISMATCHES."""
    for op, dtype, desc in KNOWN_MISMATCHES:
        if op == name:
            sample = next(s for s in samples_of(ROWS[op], dtype) if s.desc == desc)
            yield dtype, desc, sample, np.random.default_rng(zlib.crc32(desc.encode()))


def tf_avg_pool_adjoint(x, dy, ksize, strides, padding):
    """The exact VJP of TF's avg_pool2d forward (a linear map): its Jacobian from basis images."""
    n, h, w, c = x.shape
    basis = np.eye(h * w, dtype=x.dtype).reshape(h * w, h, w, 1)
    jacobian = tf.nn.avg_pool2d(basis, ksize, strides, padding).numpy().reshape(h * w, -1)
    per_image = dy.transpose(0, 3, 1, 2).reshape(n * c, -1) @ jacobian.T          # (N*C, H*W)
    return per_image.reshape(n, c, h, w).transpose(0, 2, 3, 1)


def test_avg_pool_mismatches_are_tf_gradient_errors():
    """In avg_pool2d's KNOWN_MISMATCHES tinybn's gradient is the adjoint of TF's own forward
    and TF's AvgPoolGrad is not: the mismatch is TF's gradient kernel, not tinybn."""
    row = ROWS["avg_pool2d"]
    for dtype, desc, sample, rng in known_mismatches_of("avg_pool2d"):
        _, (dy,), (ours,) = tb_forward_backward_all(row, sample, rng)
        _, (theirs,) = tf_forward_backward_all(row, sample, [dy])
        adjoint = tf_avg_pool_adjoint(sample.arrays[0], dy, **sample.params)
        tol = 1e-6 if dtype == "float32" else 1e-12
        assert parity.relative_error(ours, adjoint) <= tol, f"{dtype} {desc}: tinybn vs TF's forward adjoint"
        assert parity.relative_error(theirs, adjoint) > 0.01, f"{dtype} {desc}: TF's AvgPoolGrad is right here"


def test_max_pool_all_inf_mismatch_is_the_forward_only():
    """In max_pool2d's KNOWN_MISMATCHES the gradients agree; the outputs differ exactly where TF
    gives the lowest finite value for a window of -inf and tinybn gives -inf."""
    row = ROWS["max_pool2d"]
    for dtype, desc, sample, rng in known_mismatches_of("max_pool2d"):
        (ours,), upstreams, (our_grad,) = tb_forward_backward_all(row, sample, rng)
        (theirs,), (their_grad,) = tf_forward_backward_all(row, sample, upstreams)
        parity.assert_parity(FLOAT64_KEY if dtype == "float64" else "max_pool2d", "backward", our_grad, their_grad,
                             desc, elementwise=parity.ELEMENTWISE[dtype])
        differ = ours != theirs
        assert differ.any() and np.all(ours[differ] == -np.inf) and np.all(theirs[differ] == np.finfo(dtype).min)


def coverage_problems(namespace, table, not_ops):
    """Why `table` does not cover the ops of `namespace` (tinybn.ops): [] when it does."""
    covered = {id(row.op) for row in table}
    public = list(namespace.__all__)
    problems = [f"public op without a row in crosscheck/op_table.py: {name}"
                for name in public if id(getattr(namespace, name)) not in covered]
    functions = {name for name, v in vars(namespace).items() if callable(v) and not name.startswith("_")}
    problems += [f"public function of tinybn.ops neither in its __all__ nor in op_table.NOT_OPS: {name}"
                 for name in sorted(functions - set(public) - set(not_ops))]
    problems += [f"op_table.NOT_OPS names no public function: {name}" for name in sorted(set(not_ops) - functions)]
    problems += [f"both an op and a helper: {name}" for name in sorted(set(not_ops) & set(public))]
    return problems


def test_every_public_op_has_a_row():
    """Every op of tinybn.ops.__all__ has a row (an alias shares its op's); every other public
    function of tinybn.ops is a helper named in op_table.NOT_OPS; sample descriptions are unique."""
    assert coverage_problems(ops, TABLE, NOT_OPS) == []
    for op, dtype in CASES:
        descs = [s.desc for s in samples_of(ROWS[op], dtype)]
        assert len(descs) == len(set(descs)), f"{op} {dtype}: repeated sample descriptions"


def test_coverage_check_finds_what_is_missing():
    """The check above can fail: a table without add's row, a new function nobody listed."""
    without_add = [row for row in TABLE if row.name != "add"]
    assert coverage_problems(ops, without_add, NOT_OPS) == ["public op without a row in crosscheck/op_table.py: add"]
    namespace = types.SimpleNamespace(**vars(ops))
    namespace.new_op = lambda x: x
    assert coverage_problems(namespace, TABLE, NOT_OPS) == [
        "public function of tinybn.ops neither in its __all__ nor in op_table.NOT_OPS: new_op"]
    namespace.__all__ = list(ops.__all__) + ["new_op"]
    assert coverage_problems(namespace, TABLE, NOT_OPS) == ["public op without a row in crosscheck/op_table.py: new_op"]


def sweep_table_markdown():
    def worst(name, dtype):
        if dtype not in ROWS[name].dtypes:
            return "(TF: no kernel)"
        errs = [_worst.get((name, dtype, d)) for d in ("forward", "backward", "elementwise")]
        return " / ".join("-" if e is None else f"{e:.1e}" for e in errs[:2]) + \
            ("" if errs[2] is None else f" ({errs[2]:.2f})")
    lines = ["| op | TF twin | samples cover | float32 fwd / bwd (elementwise) | float64 fwd / bwd (elementwise) |",
             "|---|---|---|---|---|"]
    for row in TABLE:
        n = {dtype: len(samples_of(row, dtype)) for dtype in row.dtypes}
        lines.append(f"| {row.name} | {row.twin} | {row.covers} ({max(n.values())} samples) | "
                     f"{worst(row.name, 'float32')} | {worst(row.name, 'float64')} |")
    return "\n".join(lines)


@pytest.fixture(scope="module", autouse=True)
def write_sweep_table():
    yield
    if _ran == set(CASES):       # a partial run leaves the last full table in place
        with open(SWEEP_TABLE_PATH, "w") as f:
            f.write("Worst error max|tinybn - tf| / max|tf| per op over every sample of crosscheck/test_tf_sweep.py "
                    "(forward: every output; backward: every input gradient); in brackets the worst elementwise "
                    "|tinybn - tf| / (atol + rtol * |tf|), which must stay <= 1 (parity.ELEMENTWISE)\n\n")
            f.write(sweep_table_markdown() + "\n")
