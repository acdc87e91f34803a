"""Event files (tensorboardX's records under tinybn.summary) read back by an independent
TFRecord/protobuf parser checking both CRC-32Cs bit by bit; CSV logging (csv_log)."""
import csv
import os
import re
import struct

import numpy as np
import pytest
from hypothesis import given, strategies as st

from tinybn import csv_log, summary
from tinybn.csv_log import CSVLogger
from tinybn.summary import SummaryWriter, histogram_proto


# --- an independent reader -----------------------------------------------------------------
def bitwise_crc32c(data):
    """CRC-32C one bit at a time (no table), straight from the definition."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 * (crc & 1))
    return crc ^ 0xFFFFFFFF


def mask(crc):
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) % 2**32


def read_records(path):
    data = open(path, "rb").read()
    records, pos = [], 0
    while pos < len(data):
        header = data[pos:pos + 8]
        (length,) = struct.unpack("<Q", header)
        assert struct.unpack("<I", data[pos + 8:pos + 12])[0] == mask(bitwise_crc32c(header))
        body = data[pos + 12:pos + 12 + length]
        assert len(body) == length
        assert struct.unpack("<I", data[pos + 12 + length:pos + 16 + length])[0] == mask(bitwise_crc32c(body))
        records.append(body)
        pos += 16 + length
    return records


def parse(buf):
    """Protobuf wire format -> {field: [values]}: varint ints, 8/4-byte raw bytes, length-delimited bytes."""
    fields, pos = {}, 0

    def varint():
        nonlocal pos
        shift = result = 0
        while True:
            b = buf[pos]
            pos += 1
            result |= (b & 0x7F) << shift
            shift += 7
            if not b & 0x80:
                return result

    while pos < len(buf):
        key = varint()
        field, wire = key >> 3, key & 7
        if wire == 0:
            value = varint()
        elif wire == 1:
            value, pos = buf[pos:pos + 8], pos + 8
        elif wire == 5:
            value, pos = buf[pos:pos + 4], pos + 4
        elif wire == 2:
            n = varint()
            value, pos = buf[pos:pos + n], pos + n
        else:
            raise AssertionError(f"unexpected wire type {wire}")
        fields.setdefault(field, []).append(value)
    return fields


def d(raw):
    return struct.unpack("<d", raw)[0]


def events(path):
    out = []
    for rec in read_records(path):
        ev = parse(rec)
        step = ev.get(2, [0])[0]
        step = step - 2**64 if step >= 2**63 else step
        values = [parse(v) for v in parse(ev[5][0]).get(1, [])] if 5 in ev else []
        out.append({"wall_time": d(ev[1][0]), "step": step, "version": ev.get(3, [None])[0], "values": values})
    return out


# --- crc32c ----------------------------------------------------------------------------------------
def test_bitwise_crc32c_known_vectors():
    """The reader's own CRC-32C (RFC 3720 appendix B.4 and the classic check value): what every
    record tinybn writes through tensorboardX is checked against below."""
    assert bitwise_crc32c(b"123456789") == 0xE3069283 and bitwise_crc32c(b"") == 0
    assert bitwise_crc32c(bytes(32)) == 0x8A9136AA and bitwise_crc32c(b"\xff" * 32) == 0x62A8AB43
    assert bitwise_crc32c(bytes(range(32))) == 0x46DD794E


@given(st.binary(max_size=200))
def test_tensorboardx_record_crc_is_the_bitwise_definition(data):
    from tensorboardX.record_writer import masked_crc32c
    assert masked_crc32c(data) == mask(bitwise_crc32c(data))


# --- event files ---------------------------------------------------------------------------------------
def test_event_file_round_trip(tmp_path):
    w = SummaryWriter(tmp_path, filename_suffix=".v1")
    assert re.fullmatch(r"events\.out\.tfevents\.\d{10}\..+\.v1", os.path.basename(w.path))
    w.scalar("loss", 2.25, 10, wall_time=1234.5)
    w.scalars({"lr": 0.1, "acc/top1": np.float32(0.75)}, step=2**40)
    w.scalar("neg", -1.0, -3)
    x = np.arange(-5.0, 6.0)
    w.histogram("w", x, 11, bins=4)
    w.close()
    evs = events(w.path)
    assert evs[0]["version"] == b"brain.Event:2" and evs[0]["values"] == []
    assert [e["step"] for e in evs] == [0, 10, 2**40, -3, 11]
    assert evs[1]["wall_time"] == 1234.5
    tags = [[v[1][0] for v in e["values"]] for e in evs[1:]]
    assert tags == [[b"loss"], [b"lr", b"acc/top1"], [b"neg"], [b"w"]]
    simple = [struct.unpack("<f", v[2][0])[0] for e in evs[1:4] for v in e["values"]]
    assert simple == [2.25, np.float32(0.1), 0.75, -1.0]
    h = parse(evs[4]["values"][0][5][0])
    zero = struct.pack("<d", 0.0)       # proto3 leaves a field at its default (sum 0.0) out
    assert [d(h.get(i, [zero])[0]) for i in range(1, 6)] == [-5.0, 5.0, 11.0, 0.0, float((x * x).sum())]
    limits, counts = np.frombuffer(h[6][0], "<f8"), np.frombuffer(h[7][0], "<f8")
    assert limits.tolist() == [-2.5, 0.0, 2.5, 5.0] and counts.tolist() == [3, 2, 3, 3]


def tf_histogram_reference(x):
    """TF's rule from its definition: value v goes to the first limit > v; empty runs merged."""
    limits = summary._TF_LIMITS
    counts = {}
    for v in x:
        b = next(i for i, lim in enumerate(limits) if lim > v)
        counts[b] = counts.get(b, 0) + 1
    out, prev = [], -1
    for b in sorted(counts):
        if b - prev > 1:   # the empty buckets between two filled ones become one entry
            out.append((limits[b - 1], 0.0))
        out.append((limits[b], float(counts[b])))
        prev = b
    if prev < len(limits) - 1:
        out.append((limits[-1], 0.0))
    return out


@given(st.lists(st.floats(-1e6, 1e6, allow_nan=False) | st.sampled_from([0.0, -0.0, 1e-12, -1e-13]), max_size=30))
def test_tf_buckets(values):
    h = parse(histogram_proto(values))
    got = list(zip(np.frombuffer(h[6][0], "<f8").tolist(), np.frombuffer(h[7][0], "<f8").tolist()))
    assert got == tf_histogram_reference(values)
    num = d(h[3][0]) if 3 in h else 0.0     # proto3 leaves num = 0 out
    assert num == len(values) and sum(c for _, c in got) == len(values)


def test_tf_limits_shape():
    lim = summary._TF_LIMITS
    assert np.all(np.diff(lim) > 0) and lim[0] == -lim[-1] == -np.finfo(np.float64).max
    assert lim[lim.size // 2] == 0.0 and lim[lim.size // 2 + 1] == 1e-12 and np.allclose(lim[-3] / lim[-4], 1.1)


def test_histogram_bad_input_and_closed_writer(tmp_path):
    with pytest.raises(ValueError, match="values: histogram of non-finite"):
        histogram_proto([1.0, np.nan])
    with pytest.raises(ValueError, match="bins: expected 'tf' or a positive int"):
        histogram_proto([1.0], bins=0)
    with pytest.raises(ValueError, match="bins: expected 'tf' or a positive int"):
        histogram_proto([1.0], bins="auto")
    with SummaryWriter(tmp_path) as w:
        with pytest.raises(ValueError, match="tag: expected a non-empty string"):
            w.scalar("", 1.0, 0)
        with pytest.raises(ValueError, match="step: expected an int"):
            w.scalar("a", 1.0, 1.5)
        with pytest.raises(ValueError, match="value for tag 'a': expected a real number"):
            w.scalar("a", "x", 1)
    with pytest.raises(ValueError, match="is closed"):
        w.scalar("a", 1.0, 2)
    assert len(read_records(w.path)) == 1


def test_two_writers_in_one_second_get_two_files(tmp_path):
    a, b = SummaryWriter(tmp_path), SummaryWriter(tmp_path)
    a.scalar("x", 1.0, 1)
    b.scalar("x", 2.0, 1)
    a.close(), b.close()
    assert a.path != b.path and len(os.listdir(tmp_path)) == 2
    assert len(read_records(a.path)) == len(read_records(b.path)) == 2


def test_flush_makes_events_visible(tmp_path):
    w = SummaryWriter(tmp_path, flush_secs=1e9)
    w.scalar("x", 1.0, 1)
    w.flush()
    assert len(read_records(w.path)) == 2
    w.close()


# --- CSV --------------------------------------------------------------------------------------------------
def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.reader(f))


def test_csv_logger_appends_and_resumes(tmp_path):
    path = tmp_path / "log.csv"
    log = CSVLogger(path, ["step", "loss", "note"])
    log.log({"step": 1, "loss": 0.5})
    assert read_csv(path) == [["step", "loss", "note"], ["1", "0.5", ""]]   # flushed per row
    log.log(step=2, loss=0.25, note="a, \"quoted\" note")
    log.close()
    with CSVLogger(path, ["step", "loss", "note"]) as log:   # a resumed run keeps the header
        log.log(step=3, loss=0.125)
    assert read_csv(path) == [["step", "loss", "note"], ["1", "0.5", ""], ["2", "0.25", 'a, "quoted" note'],
                              ["3", "0.125", ""]]


def test_csv_logger_cuts_a_row_left_half_written(tmp_path):
    path = tmp_path / "log.csv"
    path.write_text("step,loss\n1,0.5\n2,0.2")
    with CSVLogger(path, ["step", "loss"]) as log:
        log.log(step=3, loss=0.1)
    assert read_csv(path) == [["step", "loss"], ["1", "0.5"], ["3", "0.1"]]


def test_csv_logger_bad_input(tmp_path):
    path = tmp_path / "log.csv"
    path.write_text("step,acc\n")
    with pytest.raises(ValueError, match=r"fieldnames: .*log.csv' has header \['step', 'acc'\]"):
        CSVLogger(path, ["step", "loss"])
    assert path.read_text() == "step,acc\n"
    with pytest.raises(ValueError, match="fieldnames: expected distinct names"):
        CSVLogger(tmp_path / "b.csv", ["a", "a"])
    log = CSVLogger(tmp_path / "c.csv", ["a"])
    with pytest.raises(ValueError, match=r"row: unknown fields \['b'\]"):
        log.log(b=1)
    log.close()
    with pytest.raises(ValueError, match="is closed"):
        log.log(a=1)


# --- resuming: purge_step, and no empty event files ---------------------------------------------------
def test_purge_step_writes_a_session_log_start(tmp_path):
    with SummaryWriter(tmp_path, purge_step=5) as w:
        w.scalar("loss", 1.0, 5)
    records = [parse(r) for r in read_records(w.path)]
    assert records[0][3] == [b"brain.Event:2"] and 7 not in records[0]
    start = records[1]
    assert start[2] == [5] and sorted(start) == [1, 2, 7]  # step 5, session_log = 7 (6: log_message)
    assert parse(start[7][0]) == {1: [1]}                  # SessionLog{status: START}
    assert d(start[1][0]) == d(records[0][1][0])
    with pytest.raises(ValueError, match="step: expected an int"):
        SummaryWriter(tmp_path / "new", purge_step=2.5)
    assert not (tmp_path / "new").exists()


def test_tensorboard_drops_the_steps_a_resumed_run_repeats(tmp_path):
    """Run 1 logs steps 1..6 and crashes after its checkpoint at 4; run 2 resumes at 4 and logs
    5..8 with other values. TensorBoard shows 1..4 of run 1 and 5..8 of run 2, each step once."""
    from tensorboard.backend.event_processing import event_accumulator    # a test requirement (setup.cfg)
    with SummaryWriter(tmp_path, filename_suffix=".1") as first:
        for step in range(1, 7):
            first.scalar("loss", 1.0, step)
    with SummaryWriter(tmp_path, filename_suffix=".2", purge_step=5) as second:
        for step in range(5, 9):
            second.scalar("loss", 2.0, step)
    acc = event_accumulator.EventAccumulator(str(tmp_path))
    acc.Reload()
    assert [(e.step, e.value) for e in acc.Scalars("loss")] == [(1, 1.0), (2, 1.0), (3, 1.0), (4, 1.0),
                                                                (5, 2.0), (6, 2.0), (7, 2.0), (8, 2.0)]


def test_no_event_file_is_left_without_events(tmp_path):
    with pytest.raises(RuntimeError):
        with SummaryWriter(tmp_path / "a"):
            raise RuntimeError("the run failed before its first summary")
    assert os.listdir(tmp_path / "a") == []
    with pytest.raises(RuntimeError):
        with SummaryWriter(tmp_path / "b") as w:
            w.scalar("x", 1.0, 1)
            raise RuntimeError("the run failed after it")
    assert len(read_records(w.path)) == 2                   # what it had written is kept


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full (Linux)")
def test_a_full_disk_leaves_no_event_file(tmp_path, monkeypatch):
    import builtins

    def open_on_a_full_disk(path, mode="r", *args, **kwargs):
        f = builtins.open(path, mode, *args, **kwargs)
        full = os.open("/dev/full", os.O_WRONLY)            # every write fails with ENOSPC, for real
        os.dup2(full, f.fileno())
        os.close(full)
        return f
    monkeypatch.setattr(summary, "open", open_on_a_full_disk, raising=False)
    with pytest.raises(OSError, match=r"No space left on device: .*events\.out\.tfevents\.") as e:
        SummaryWriter(tmp_path)
    assert e.value.errno == 28 and os.listdir(tmp_path) == []


def test_csv_logger_purge_step_drops_the_repeated_rows(tmp_path):
    path = tmp_path / "log.csv"
    path.write_text('step,loss,note\n1,0.5,\n2,0.25,"two\nlines"\n3,0.2,\nx,0.1,kept\n4,0.1,\n5,0.0')  # 5: cut
    with CSVLogger(path, ["step", "loss", "note"], purge_step=3) as log:
        log.log(step=3, loss=0.125)
    assert read_csv(path) == [["step", "loss", "note"], ["1", "0.5", ""], ["2", "0.25", "two\nlines"],
                              ["x", "0.1", "kept"], ["3", "0.125", ""]]
    assert sorted(os.listdir(tmp_path)) == ["log.csv"]      # rewritten in place, no temporary file left
    with pytest.raises(ValueError, match="purge_step: the fieldnames .* have no 'step'"):
        CSVLogger(tmp_path / "b.csv", ["epoch"], purge_step=1)
    with pytest.raises(csv_log.CSVHeaderError) as e:
        CSVLogger(path, ["epoch", "loss"])
    assert e.value.found == ["step", "loss", "note"] and e.value.expected == ["epoch", "loss"]
