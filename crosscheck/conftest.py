"""crosscheck/: tinybn against TensorFlow. TF is required here, never skipped.

Helpers shared by every crosscheck file:
    tf_forward_backward(fn, arrays, upstream)  TF's output and input gradients
    tb_forward_backward(fn, arrays, upstream)  tinybn's, the same way
Both seed the backward with the same upstream gradient, so the comparison is
of vector-Jacobian products exactly as tf.GradientTape.gradient(y, x, dy).
"""
import os
import sys
import zlib

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

try:
    import tensorflow as tf  # noqa: E402
except ImportError as e:  # a missing TF is a set-up error, not a reason to skip parity
    raise ImportError("crosscheck/ needs TensorFlow: pip install -e '.[test]' (see README)") from e

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import parity  # noqa: E402

import tinybn  # noqa: E402


def tf_forward_backward(fn, arrays, upstream=None, wrt=None):
    """TF's fn(*arrays) and, when upstream is given, the gradients of every float input."""
    wrt = [i for i, a in enumerate(arrays) if np.asarray(a).dtype.kind == "f"] if wrt is None else wrt
    tensors = [tf.constant(a) for a in arrays]
    with tf.GradientTape() as tape:
        for i in wrt:
            tape.watch(tensors[i])
        y = fn(*tensors)
    if upstream is None:
        return y.numpy(), None
    grads = tape.gradient(y, [tensors[i] for i in wrt], output_gradients=tf.constant(upstream))
    return y.numpy(), [None if g is None else tf.convert_to_tensor(g).numpy() for g in grads]


def tb_forward_backward(fn, arrays, upstream=None, wrt=None):
    """tinybn's fn(*arrays) and, when upstream is given, the gradients of every float input."""
    wrt = [i for i, a in enumerate(arrays) if np.asarray(a).dtype.kind == "f"] if wrt is None else wrt
    tensors = [tinybn.Tensor(np.asarray(a), requires_grad=i in wrt) for i, a in enumerate(arrays)]
    y = fn(*tensors)
    if upstream is None:
        return y.numpy(), None
    y.backward(upstream)
    return y.numpy(), [tensors[i].grad for i in wrt]


@pytest.fixture
def rng(request):
    return np.random.default_rng(zlib.crc32(request.node.name.encode()))


_skipped = []


def pytest_runtest_logreport(report):
    if report.skipped and "crosscheck" in report.nodeid:
        _skipped.append(report.nodeid)


def pytest_sessionfinish(session, exitstatus):
    if parity._worst and parity.complete():     # a partial run leaves the last full table in place
        parity.write_table()
    if _skipped:   # parity that was not checked is not proven: a skip fails the run
        session.exitstatus = 1


def pytest_terminal_summary(terminalreporter):
    if parity._worst:
        terminalreporter.section("tinybn vs TensorFlow parity (worst max|diff|/max|tf|)")
        terminalreporter.write_line(parity.table_markdown())
        terminalreporter.write_line(f"(written to {parity.TABLE_PATH})" if parity.complete() else
                                    f"(a partial run: {parity.TABLE_PATH} keeps the last full run's table)")
    if _skipped:
        terminalreporter.section("crosscheck tests were skipped: this run fails", red=True)
        for nodeid in _skipped:
            terminalreporter.write_line(nodeid)
