"""tinybn's event files read by TensorFlow's own readers; histograms equal to TF's histogram op."""
import warnings

import numpy as np
import pytest
import tensorflow as tf
from hypothesis import given, strategies as st
from hypothesis.extra import numpy as hnp

from tinybn.summary import SummaryWriter, histogram_proto

Event = tf.compat.v1.Event
HistogramProto = tf.compat.v1.HistogramProto


def tf_events(path):
    """Every record through tf.data (which verifies both CRCs of each record), parsed by TF's Event."""
    return [Event.FromString(r.numpy()) for r in tf.data.TFRecordDataset(str(path))]


def tf_histogram(values):
    """TF1's histogram summary op on float64 values, as a HistogramProto."""
    with warnings.catch_warnings():   # it warns that no TF2 default writer is set, which is irrelevant here
        warnings.simplefilter("ignore")
        serialized = tf.compat.v1.summary.histogram("h", tf.constant(values, tf.float64)).numpy()
    return tf.compat.v1.Summary.FromString(serialized).value[0].histo


def test_tf_reads_scalars_and_histograms(tmp_path):
    rng = np.random.default_rng(0)
    w = SummaryWriter(tmp_path, filename_suffix=".tinybn")
    scalars = [("loss", 2.302585, 0), ("loss", 1.5, 100), ("learning_rate", 0.1, 100), ("neg_step", -7.0, -5)]
    for tag, value, step in scalars:
        w.scalar(tag, value, step)
    weights = rng.normal(0, 0.05, size=(5, 5, 3, 64)).astype(np.float32)
    w.histogram("conv1/kernel", weights, 100)
    logits = rng.normal(size=1000)
    w.histogram("logits", logits, 200, bins=30)
    w.scalars({"a": 1.0, "b": 2.0}, 300)
    w.close()

    events = tf_events(w.path)
    assert events[0].file_version == "brain.Event:2" and not events[0].HasField("summary")
    # the deprecated v1 iterator goes through TF's C++ record reader: it must agree
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert list(tf.compat.v1.train.summary_iterator(w.path)) == events

    got = [(e.summary.value[0].tag, e.summary.value[0].simple_value, e.step) for e in events[1:5]]
    assert got == [(t, np.float32(v), s) for t, v, s in scalars]
    assert all(e.wall_time > 1e9 for e in events)

    h = events[5].summary.value[0]
    assert (h.tag, events[5].step) == ("conv1/kernel", 100)
    want = tf_histogram(weights.astype(np.float64))
    assert list(h.histo.bucket_limit) == list(want.bucket_limit) and list(h.histo.bucket) == list(want.bucket)
    assert (h.histo.min, h.histo.max, h.histo.num) == (want.min, want.max, want.num)

    h = events[6].summary.value[0].histo
    counts, edges = np.histogram(logits, bins=30)
    assert list(h.bucket) == counts.tolist() and list(h.bucket_limit) == edges[1:].tolist()
    assert (h.min, h.max, h.num, h.sum) == (logits.min(), logits.max(), 1000, logits.sum())
    assert h.sum_squares == pytest.approx((logits ** 2).sum(), rel=1e-14)

    assert [(v.tag, v.simple_value) for v in events[7].summary.value] == [("a", 1.0), ("b", 2.0)]
    assert events[7].step == 300 and len(events) == 8


# No subnormals: TF's CPU kernels run with flush-to-zero and denormals-are-zero, so TF buckets and
# sums a subnormal as 0 while its min/max may keep it (make fuzz: [5e-324], [0, -4.9e-324, -3.8e-305]);
# tinybn's histogram keeps the values as they are, which no TensorBoard view can tell apart.
@given(hnp.arrays(np.float64, st.integers(0, 60),
                  elements=st.floats(-1e30, 1e30, allow_nan=False, allow_subnormal=False)
                  | st.sampled_from([0.0, -0.0, 1e-12, -5e-13])))
def test_tf_bins_equal_tf_histogram_op(values):
    ours = HistogramProto.FromString(histogram_proto(values))
    want = tf_histogram(values)
    assert list(ours.bucket_limit) == list(want.bucket_limit)
    assert list(ours.bucket) == list(want.bucket)
    assert (ours.min, ours.max, ours.num) == (want.min, want.max, want.num)
    # TF sums sequentially, numpy pairwise: equal up to float64 rounding of the sums
    scale = np.abs(values).sum() if values.size else 0.0
    assert abs(ours.sum - want.sum) <= 1e-13 * scale
    # + the smallest normal double: squares of values near 1e-160 land in the subnormal range
    assert abs(ours.sum_squares - want.sum_squares) <= 1e-13 * (values * values).sum() + np.finfo(np.float64).tiny


def test_tf_detects_a_damaged_record(tmp_path):
    # proves the CRCs are the ones TF checks: the intact file reads, a one-bit change does not
    w = SummaryWriter(tmp_path)
    w.scalar("loss", 1.0, 1)
    w.close()
    assert len(tf_events(w.path)) == 2
    data = bytearray(open(w.path, "rb").read())
    data[-6] ^= 0x01   # inside the last record's data
    open(w.path, "wb").write(bytes(data))
    with pytest.raises(tf.errors.DataLossError):
        tf_events(w.path)
