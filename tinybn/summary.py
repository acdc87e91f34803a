"""TensorBoard event files through tensorboardX (the CSV log is tinybn/csv_log.py).

tensorboardX gives the Event/Summary protobufs and the TFRecord framing with its CRC-32C;
images are PNG-encoded by Pillow. This module decides what goes into which event:

    SummaryWriter(logdir, purge_step=S)   a new event file in logdir
      .scalar(tag, value, step)            simple_value (float32), the legacy scalar TensorBoard shows
      .scalars({tag: value}, step)         several in one event
      .histogram(tag, values, step)        HistogramProto in TF's buckets (bins="tf") or n equal ones
      .images(tag, batch, step)            tf.summary.image's "tag/image/i", TF's float scaling

Why tensorboardX's record layer and not its SummaryWriter: tensorboardX.SummaryWriter hands
events to a daemon thread through a queue of 10. On a full disk that thread dies with the
error, nothing tells the trainer, and the 11th event blocks it forever; its file name (the
second and the host) is opened with "wb", so two writers started in one second in one
directory share, and truncate, one file. Here events are written in the caller's thread
(an OSError naming the file reaches the command line as one line), the file is created
exclusively, and TFRecord framing is tensorboardX's RecordWriter over that file.

Files are named events.out.tfevents.<10-digit unix time>.<hostname><suffix>, as TF's
EventsWriter does, and start with Event{wall_time, file_version: "brain.Event:2"}.

A run resumed from a checkpoint at step S repeats the steps after S that the crashed run
had logged. SummaryWriter(purge_step=S + 1) writes, right after the file version,
Event{step: S + 1, session_log: {status: START}}: reading it, TensorBoard drops the events
of the run's earlier files whose step is >= S + 1 (TF's SessionLog START convention, the
event tensorboardX's purge_step writes). csv_log.CSVLogger's purge_step drops the same rows.

Histogram buckets: bins="tf" (default) reproduces tf.compat.v1.summary.histogram: TF's
fixed exponential limits (+-1e-12 * 1.1^k up to 1e20, 0, +-DBL_MAX), a value v counted in
the first bucket whose limit is > v, and runs of empty buckets collapsed into one entry
carrying the run's last limit (tensorboardX's own "tensorflow" bins only trim the empty
ends, so their buckets differ from TF's). bins=<int n> gives n equal-width buckets over
[min, max] (np.histogram), bucket_limit being each bucket's right edge. Non-finite values
are refused, as TF's op does.

Images: a float image is scaled as TF's image summary does, each image on its own: all
values >= 0: v * 255 / max; otherwise v * 127 / max(|min|, max) + 128; in float32, then
truncated to uint8 (a largest |v| under 1e-6 gives scale 0). uint8 images are written as
they are; non-finite values are refused (TF paints them red).

Floor: training (tests/test_layering.py): imports from tinybn only core, backend, ops, nn,
optim, the package root, models, data and training.
"""
import importlib.util
import io
import os
import socket
import time

import numpy as np
from tensorboardX.proto.event_pb2 import Event, SessionLog
from tensorboardX.proto.summary_pb2 import HistogramProto, Summary
from tensorboardX.record_writer import RecordWriter

FILE_VERSION = "brain.Event:2"
HAVE_PILLOW = importlib.util.find_spec("PIL") is not None


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


def histogram(values, bins="tf"):
    """HistogramProto of `values` (see the module docstring for `bins`)."""
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
        # bucket i counts limit[i-1] <= v < limit[i]: differences of the counts below each limit
        # (a sort and 1500 look-ups: 3x faster than a look-up per value on a conv's activations)
        counts = np.diff(np.searchsorted(np.sort(x), _TF_LIMITS, side="left"), prepend=0)
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
    return HistogramProto(min=lo, max=hi, num=float(x.size), sum=s, sum_squares=ss,
                          bucket_limit=[float(v) for v in limits], bucket=[float(c) for c in kept_counts])


def histogram_proto(values, bins="tf"):
    """The serialized HistogramProto of `values`."""
    return histogram(values, bins).SerializeToString()


def image_uint8(image):
    """An (H, W, C) image as TF's image summary stores it (the module docstring's scaling)."""
    x = np.asarray(image)
    if x.dtype == np.uint8:
        return x
    x = x.astype(np.float32)     # TF scales in float32: v * scale + offset rounds as there
    if not np.all(np.isfinite(x)):
        raise ValueError("images: non-finite values (NaN or Inf)")
    lo, hi = x.min(), x.max()
    top, offset = (np.float32(255), np.float32(0)) if lo >= 0 else (np.float32(127), np.float32(128))
    peak = hi if lo >= 0 else max(-lo, hi)
    scale = np.float32(0) if peak < 1e-6 else top / peak      # TF's zero threshold: a flat image is black
    return np.clip(np.trunc(x * scale + offset), 0, 255).astype(np.uint8)


def png(image):
    """Summary.Image of a uint8 (H, W, C) image, PNG-encoded by Pillow (imported here: only
    image summaries need it, and HAVE_PILLOW tells the trainer whether to write them)."""
    from PIL import Image
    height, width, channels = image.shape
    buffer = io.BytesIO()
    Image.fromarray(image[..., 0] if channels == 1 else image).save(buffer, format="PNG")
    return Summary.Image(height=height, width=width, colorspace=channels, encoded_image_string=buffer.getvalue())


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


class _Records(RecordWriter):
    """tensorboardX's TFRecord framing (write; flush with fsync; close) over a file opened here."""

    def __init__(self, file, path):     # RecordWriter's own __init__ would reopen `path` with "wb"
        self._writer, self.path = file, path


class SummaryWriter:
    """Appends scalar, histogram and image events to a new TensorBoard event file in `logdir`.

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
                file = open(os.path.join(self.logdir, name), "xb")
                break
            except FileExistsError:
                n += 1
                name = f"{base}.{n}{filename_suffix}"
        self.path = os.path.join(self.logdir, name)
        self._records = _Records(file, self.path)
        self.flush_secs = flush_secs
        self._last_flush = now
        self.num_summaries = 0
        try:
            self._write(Event(wall_time=now, file_version=FILE_VERSION))
            if purge_step is not None:
                self._write(Event(wall_time=now, step=purge_step, session_log=SessionLog(status=SessionLog.START)))
            self.flush()
        except OSError:
            self._discard()
            raise

    def _discard(self):
        """Close without flushing what could not be written, and remove the file."""
        records, self._records = self._records, None
        try:
            records.close()
        except OSError:
            pass
        try:
            os.unlink(self.path)
        except OSError:
            pass

    def _write(self, event):
        if self._records is None:
            raise ValueError(f"SummaryWriter for {self.path!r} is closed")
        try:
            self._records.write(event.SerializeToString())
        except OSError as e:
            raise _naming(e, self.path) from None
        if time.time() - self._last_flush >= self.flush_secs:
            self.flush()

    def _summary(self, values, step, wall_time):
        step = _check_step(step)
        self._write(Event(wall_time=time.time() if wall_time is None else wall_time, step=step,
                          summary=Summary(value=values)))
        self.num_summaries += 1

    def scalar(self, tag, value, step, wall_time=None):
        """One scalar (stored as a float32 simple_value, like TF's scalar summaries)."""
        self.scalars({tag: value}, step, wall_time)

    def scalars(self, values, step, wall_time=None):
        """Several scalars {tag: value} in one event. Tags are kept as given (TF's summary ops
        replace characters outside [-/\\w.] by "_"; tinybn's callers pass the tags TF writes)."""
        entries = []
        for tag, value in values.items():
            _check_tag(tag)
            try:
                entries.append(Summary.Value(tag=tag, simple_value=float(value)))
            except (TypeError, ValueError):
                raise ValueError(f"value for tag {tag!r}: expected a real number, got {value!r}") from None
        self._summary(entries, step, wall_time)

    def histogram(self, tag, values, step, bins="tf", wall_time=None):
        """Histogram of `values` (any shape); bins="tf" (TF's exponential buckets) or an int."""
        _check_tag(tag)
        self._summary([Summary.Value(tag=tag, histo=histogram(values, bins))], step, wall_time)

    def images(self, tag, images, step, max_outputs=3, wall_time=None):
        """The first `max_outputs` of a batch (N, H, W, C), C in 1, 3, 4, as tf.summary.image:
        one image "tag/image/i" each (a lone image: "tag/image"), PNG-encoded."""
        _check_tag(tag)
        batch = np.asarray(images)
        if batch.ndim != 4 or batch.shape[-1] not in (1, 3, 4):
            raise ValueError(f"images: expected a batch (N, H, W, C) with C in 1, 3, 4, got shape {batch.shape}")
        batch = batch[:max_outputs]
        names = [f"{tag}/image"] if len(batch) == 1 else [f"{tag}/image/{i}" for i in range(len(batch))]
        self._summary([Summary.Value(tag=name, image=png(image_uint8(image)))
                       for name, image in zip(names, batch)], step, wall_time)

    def flush(self):
        if self._records is not None:
            try:
                self._records.flush()
            except OSError as e:
                raise _naming(e, self.path) from None
        self._last_flush = time.time()

    def close(self):
        records, self._records = self._records, None
        if records is not None:
            try:
                records.close()        # flushes; the file is closed even when that fails
            except OSError as e:
                raise _naming(e, self.path) from None

    def __enter__(self):
        return self

    def __exit__(self, exc_type, *exc):
        if exc_type is not None and self.num_summaries == 0 and self._records is not None:
            self._discard()
        else:
            self.close()
