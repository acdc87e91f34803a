"""TensorBoard event files without TensorFlow (the CSV log is tinybn/csv_log.py).

An event file is a TFRecord stream: each record is
    uint64 length (little endian) | uint32 masked_crc32c(length bytes)
    | data | uint32 masked_crc32c(data)
where crc32c is CRC-32 with the Castagnoli polynomial (reflected 0x82F63B78)
and masked(c) = ((c >> 15) | (c << 17)) + 0xa282ead8 mod 2^32. Each record's
data is a serialized tensorflow.Event protobuf, hand-encoded here:
    Event          wall_time double = 1, step int64 = 2, file_version string = 3,
                   summary Summary = 5, session_log SessionLog = 7
                   (6 is the deprecated log_message)
    SessionLog     status enum = 1 (START = 1), checkpoint_path string = 2, msg string = 3
    Summary        repeated Value value = 1
    Summary.Value  tag string = 1, simple_value float = 2, histo HistogramProto = 5
    HistogramProto min = 1, max = 2, num = 3, sum = 4, sum_squares = 5 (double),
                   bucket_limit = 6, bucket = 7 (packed repeated double)
The first record is Event{wall_time, file_version: "brain.Event:2"}, and files
are named events.out.tfevents.<10-digit unix time>.<hostname><suffix>, as TF's
EventsWriter does. TensorBoard shows simple_value as scalars and HistogramProto
as histograms (its legacy, still supported, formats).

A run resumed from a checkpoint at step S repeats the steps after S that the
crashed run had logged. SummaryWriter(purge_step=S + 1) writes, right after the
file version, Event{step: S + 1, session_log: {status: START}}: reading it,
TensorBoard drops the events of the run's earlier files whose step is >= S + 1
(TF's SessionLog START convention, tensorboardX's purge_step). csv_log.CSVLogger's
purge_step drops the same rows from a CSV log.

Histogram buckets: bins="tf" (default) reproduces tf.compat.v1.summary.histogram:
TF's fixed exponential limits (+-1e-12 * 1.1^k up to 1e20, 0, +-DBL_MAX), a
value v counted in the first bucket whose limit is > v, and runs of empty
buckets collapsed into one entry carrying the run's last limit. bins=<int n>
gives n equal-width buckets over [min, max] (np.histogram), bucket_limit being
each bucket's right edge. Non-finite values are refused, as TF's op does.

Floor: training (tests/test_layering.py): imports from tinybn only core, backend, ops, nn,
optim, the package root, models, data and training.
"""
import os
import socket
import struct
import time

import numpy as np

FILE_VERSION = "brain.Event:2"
SESSION_START = 1       # SessionLog.SessionStatus.START


# --- crc32c and TFRecord framing ---------------------------------------------------
def _crc32c_table():
    table = []
    for n in range(256):
        c = n
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return tuple(table)


_CRC_TABLE = _crc32c_table()


def crc32c(data, crc=0):
    """CRC-32C (Castagnoli) of `data`; pass a previous result as `crc` to continue it."""
    crc ^= 0xFFFFFFFF
    table = _CRC_TABLE
    for byte in data:
        crc = table[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def masked_crc32c(data):
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def tfrecord(data):
    """One TFRecord: length, masked CRC of the length, data, masked CRC of the data."""
    length = struct.pack("<Q", len(data))
    return length + struct.pack("<I", masked_crc32c(length)) + data + struct.pack("<I", masked_crc32c(data))


# --- protobuf encoding -------------------------------------------------------------------
def _varint(n):
    n &= 0xFFFFFFFFFFFFFFFF   # int64 negatives are 10-byte two's complement varints
    out = bytearray()
    while True:
        bits = n & 0x7F
        n >>= 7
        if n:
            out.append(bits | 0x80)
        else:
            out.append(bits)
            return bytes(out)


def _key(field, wire_type):
    return _varint((field << 3) | wire_type)


def _double(field, x):
    return _key(field, 1) + struct.pack("<d", x)


def _float(field, x):
    return _key(field, 5) + struct.pack("<f", x)


def _bytes(field, b):
    return _key(field, 2) + _varint(len(b)) + b


def _packed_doubles(field, xs):
    return _bytes(field, np.asarray(xs, dtype="<f8").tobytes())


def encode_event(wall_time, step=0, file_version=None, summary=None, session_log=None):
    """Serialized Event; `summary` and `session_log` are already encoded messages."""
    out = _double(1, wall_time)
    if step:
        out += _key(2, 0) + _varint(int(step))
    if file_version is not None:
        out += _bytes(3, file_version.encode("utf-8"))
    if summary is not None:
        out += _bytes(5, summary)
    if session_log is not None:
        out += _bytes(7, session_log)
    return out


def encode_session_log(status, checkpoint_path="", msg=""):
    """Serialized SessionLog (status: SESSION_START, ...); empty strings are left out, as proto3 does."""
    out = _key(1, 0) + _varint(status)
    if checkpoint_path:
        out += _bytes(2, checkpoint_path.encode("utf-8"))
    if msg:
        out += _bytes(3, msg.encode("utf-8"))
    return out


def encode_summary(values):
    """Serialized Summary from [(tag, "simple_value" | "histo", payload)]."""
    out = b""
    for tag, kind, payload in values:
        value = _bytes(1, tag.encode("utf-8"))
        value += _float(2, payload) if kind == "simple_value" else _bytes(5, payload)
        out += _bytes(1, value)
    return out


def encode_histogram(min, max, num, sum, sum_squares, bucket_limit, bucket):
    return (_double(1, min) + _double(2, max) + _double(3, num) + _double(4, sum)
            + _double(5, sum_squares) + _packed_doubles(6, bucket_limit) + _packed_doubles(7, bucket))


# --- histograms -------------------------------------------------------------------------------
def _tf_bucket_limits():
    positive = []
    v = 1.0e-12
    while v < 1.0e20:   # the same float64 recurrence as TF's GenerateDefaultBucketLimits
        positive.append(v)
        v *= 1.1
    dbl_max = np.finfo(np.float64).max
    return np.array([-dbl_max] + [-p for p in reversed(positive)] + [0.0] + positive + [dbl_max])


_TF_LIMITS = _tf_bucket_limits()


def histogram_proto(values, bins="tf"):
    """Encoded HistogramProto of `values` (see the module docstring for `bins`)."""
    x = np.asarray(values, dtype=np.float64).ravel()
    if not np.all(np.isfinite(x)):
        raise ValueError("values: histogram of non-finite values (NaN or Inf)")
    if x.size == 0:   # TF reports its running min/max's initial values for an empty histogram
        lo, hi, s, ss = float(np.finfo(np.float64).max), float(-np.finfo(np.float64).max), 0.0, 0.0
    else:
        lo, hi, s, ss = float(x.min()), float(x.max()), float(x.sum()), float(np.dot(x, x))
    if isinstance(bins, str):
        if bins != "tf":
            raise ValueError(f"bins: expected 'tf' or a positive int, got {bins!r}")
        counts = np.bincount(np.searchsorted(_TF_LIMITS, x, side="right"), minlength=_TF_LIMITS.size)
        limits, kept_counts, i = [], [], 0
        while i < _TF_LIMITS.size:
            end, count = _TF_LIMITS[i], counts[i]
            i += 1
            if count <= 0:   # collapse a run of empty buckets into one, as TF's EncodeToProto
                while i < _TF_LIMITS.size and counts[i] <= 0:
                    end, count = _TF_LIMITS[i], counts[i]
                    i += 1
            limits.append(end)
            kept_counts.append(count)
    else:
        if isinstance(bins, bool) or not isinstance(bins, (int, np.integer)) or bins < 1:
            raise ValueError(f"bins: expected 'tf' or a positive int, got {bins!r}")
        kept_counts, edges = np.histogram(x, bins=int(bins), range=(lo, hi) if x.size else None)
        limits = edges[1:]
    return encode_histogram(lo, hi, float(x.size), s, ss, limits, np.asarray(kept_counts, dtype=np.float64))


# --- writers ------------------------------------------------------------------------------------
def _check_tag(tag):
    if not isinstance(tag, str) or not tag:
        raise ValueError(f"tag: expected a non-empty string, got {tag!r}")


def _check_step(step):
    if isinstance(step, (bool, np.bool_)) or not isinstance(step, (int, np.integer)):
        raise ValueError(f"step: expected an int, got {step!r}")
    return int(step)


def _naming(e, path):
    """The OSError `e` of a write to `path`, naming the file (a failed write or flush names none)."""
    return e if e.filename else OSError(e.errno, e.strerror, path)


class SummaryWriter:
    """Appends scalar and histogram events to a new TensorBoard event file in `logdir`.

    Events are buffered and flushed by flush(), close(), and at the first write after
    `flush_secs` seconds since the last flush (TF's default is 120). purge_step: see the
    module docstring. No empty event file is left behind: one whose first records cannot
    be written (a full disk) is removed, and so is one whose `with` block fails before
    it holds a summary."""

    def __init__(self, logdir, filename_suffix="", flush_secs=120, purge_step=None):
        self.logdir = os.fspath(logdir)
        if purge_step is not None:
            purge_step = _check_step(purge_step)
        os.makedirs(self.logdir, exist_ok=True)
        now = time.time()
        base = f"events.out.tfevents.{int(now):010d}.{socket.gethostname()}"
        name, n = base + filename_suffix, 0
        while True:   # two writers started in the same second must not share a file
            try:
                self._file = open(os.path.join(self.logdir, name), "xb")
                break
            except FileExistsError:
                n += 1
                name = f"{base}.{n}{filename_suffix}"
        self.path = os.path.join(self.logdir, name)
        self.flush_secs = flush_secs
        self._last_flush = now
        self.num_summaries = 0
        try:
            self._write(encode_event(now, file_version=FILE_VERSION))
            if purge_step is not None:
                self._write(encode_event(now, purge_step, session_log=encode_session_log(SESSION_START)))
            self.flush()
        except OSError:
            self._discard()
            raise

    def _discard(self):
        """Close without flushing what could not be written, and remove the file."""
        file, self._file = self._file, None
        try:
            file.close()
        except OSError:
            pass
        try:
            os.unlink(self.path)
        except OSError:
            pass

    def _write(self, event):
        if self._file is None:
            raise ValueError(f"SummaryWriter for {self.path!r} is closed")
        try:
            self._file.write(tfrecord(event))
        except OSError as e:
            raise _naming(e, self.path) from None
        if time.time() - self._last_flush >= self.flush_secs:
            self.flush()

    def _summary(self, values, step, wall_time):
        step = _check_step(step)
        self._write(encode_event(time.time() if wall_time is None else wall_time, step,
                                 summary=encode_summary(values)))
        self.num_summaries += 1

    def scalar(self, tag, value, step, wall_time=None):
        """One scalar (stored as a float32 simple_value, like TF's scalar summaries)."""
        self.scalars({tag: value}, step, wall_time)

    def scalars(self, values, step, wall_time=None):
        """Several scalars {tag: value} in one event."""
        entries = []
        for tag, value in values.items():
            _check_tag(tag)
            try:
                entries.append((tag, "simple_value", float(value)))
            except (TypeError, ValueError):
                raise ValueError(f"value for tag {tag!r}: expected a real number, got {value!r}") from None
        self._summary(entries, step, wall_time)

    def histogram(self, tag, values, step, bins="tf", wall_time=None):
        """Histogram of `values` (any shape); bins="tf" (TF's exponential buckets) or an int."""
        _check_tag(tag)
        self._summary([(tag, "histo", histogram_proto(values, bins))], step, wall_time)

    def flush(self):
        if self._file is not None:
            try:
                self._file.flush()
            except OSError as e:
                raise _naming(e, self.path) from None
        self._last_flush = time.time()

    def close(self):
        file, self._file = self._file, None
        if file is not None:
            try:
                file.close()        # flushes; the file is closed even when that fails
            except OSError as e:
                raise _naming(e, self.path) from None

    def __enter__(self):
        return self

    def __exit__(self, exc_type, *exc):
        if exc_type is not None and self.num_summaries == 0 and self._file is not None:
            self._discard()
        else:
            self.close()
