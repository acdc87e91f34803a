"""CIFAR-10 data: binary reader, download and extraction, preprocessing, shuffle queue, eval batches.

The fixtures are tiny files written byte by byte in the official format, so the
reader is checked against the format itself, not against its own inverse.
No test touches the network: downloads read file:// URLs or a fake opener.
"""
import hashlib
import io
import os
import tarfile
import threading
import time
import urllib.error

import numpy as np
import pytest
from hypothesis import given, strategies as st

from tinybn.data import image
from tinybn.data.cifar10 import (EvalBatches, RECORD_BYTES, TEST_FILES, TRAIN_FILES, load_cifar10,
                                 parse_records, read_cifar10)
from tinybn.data.download import (CIFAR10_MD5, CIFAR10_URL, DatasetNotFoundError, default_data_dir, download,
                                  maybe_download_and_extract)
from tinybn.data.queue import ShuffleQueue


def pixel(i, ch, r, c):
    return (i * 7 + ch * 50 + r * 3 + c) % 256


def record_bytes(i, label):
    return bytes([label]) + bytes(pixel(i, ch, r, c) for ch in range(3) for r in range(32) for c in range(32))


@pytest.fixture
def cifar_dir(tmp_path):
    """data_batch_1..5 with 4 records each, test_batch with 5: 25 records, label i % 10."""
    folder = tmp_path / "cifar-10-batches-bin"
    folder.mkdir()
    i = 0
    for name, n in [(f, 4) for f in TRAIN_FILES] + [(TEST_FILES[0], 5)]:
        (folder / name).write_bytes(b"".join(record_bytes(i + j, (i + j) % 10) for j in range(n)))
        i += n
    return folder


def make_archive(folder, path):
    with tarfile.open(path, "w:gz") as tar:
        tar.add(folder, arcname="cifar-10-batches-bin")
    return path


# -- reading -------------------------------------------------------------------------------

def test_reader_round_trip_channel_and_row_order(cifar_dir):
    images, labels = read_cifar10(str(cifar_dir), "train")
    assert images.shape == (20, 32, 32, 3) and images.dtype == np.uint8 and labels.dtype == np.int32
    np.testing.assert_array_equal(labels, np.arange(20) % 10)
    for i, r, c in [(0, 0, 0), (3, 0, 31), (4, 31, 0), (19, 17, 5)]:
        assert [images[i, r, c, ch] for ch in range(3)] == [pixel(i, ch, r, c) for ch in range(3)]
    test_images, test_labels = read_cifar10(str(cifar_dir.parent), "test")   # the parent folder works too
    assert test_images.shape == (5, 32, 32, 3)
    np.testing.assert_array_equal(test_labels, np.arange(20, 25) % 10)
    assert test_images[2, 10, 20, 1] == pixel(22, 1, 10, 20)


def test_reader_tar_gz_equals_folder(cifar_dir, tmp_path):
    archive = make_archive(cifar_dir, tmp_path / "cifar-10-binary.tar.gz")
    for split in ("train", "test"):
        a, b = read_cifar10(str(archive), split), read_cifar10(str(cifar_dir), split)
        np.testing.assert_array_equal(a[0], b[0])
        np.testing.assert_array_equal(a[1], b[1])


def test_truncated_file_names_the_file(cifar_dir):
    path = cifar_dir / "data_batch_3.bin"
    path.write_bytes(path.read_bytes()[:-1])
    with pytest.raises(ValueError, match=r"data_batch_3\.bin.*not a positive multiple of the 3073"):
        read_cifar10(str(cifar_dir), "train")
    with pytest.raises(ValueError, match="empty.bin: size 0"):
        parse_records(b"", "empty.bin")


def test_bad_label_names_file_record_and_offset(cifar_dir):
    path = cifar_dir / "test_batch.bin"
    data = bytearray(path.read_bytes())
    data[2 * RECORD_BYTES] = 10
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"test_batch\.bin: record 2 \(byte offset 6146\) has label byte 10"):
        read_cifar10(str(cifar_dir), "test")


def test_missing_file_says_which_and_where(cifar_dir):
    (cifar_dir / "data_batch_4.bin").unlink()
    with pytest.raises(DatasetNotFoundError, match=r"data_batch_4\.bin not found.*put the official.*"
                       + str(cifar_dir).replace("\\", "\\\\")):
        read_cifar10(str(cifar_dir), "train")
    with pytest.raises(ValueError, match="split must be 'train' or 'test'"):
        read_cifar10(str(cifar_dir), "validation")


# -- download and extraction ----------------------------------------------------------------

def md5(data):
    return hashlib.md5(data).hexdigest()


def test_download_file_url_then_load(cifar_dir, tmp_path):
    archive = make_archive(cifar_dir, tmp_path / "source.tar.gz")
    data_dir = tmp_path / "data"
    folder = maybe_download_and_extract(str(data_dir), url=archive.as_uri(), md5=md5(archive.read_bytes()))
    assert folder == str(data_dir / "cifar-10-batches-bin")
    assert sorted(os.listdir(data_dir)) == ["cifar-10-batches-bin", "cifar-10-binary.tar.gz"]
    np.testing.assert_array_equal(load_cifar10("test", str(data_dir), download=False)[1], np.arange(20, 25) % 10)


class FakeResponse(io.BytesIO):
    pass


def test_checksum_mismatch_keeps_existing_file_and_leaves_no_partial(tmp_path):
    target = tmp_path / "cifar-10-binary.tar.gz"
    target.write_bytes(b"old data")
    with pytest.raises(ValueError, match="md5 .* expected 0123"):
        download("https://example.invalid/x", str(target), "0123", urlopen=lambda url, timeout: FakeResponse(b"new"))
    assert target.read_bytes() == b"old data"
    assert os.listdir(tmp_path) == ["cifar-10-binary.tar.gz"]


def test_offline_fails_at_once_naming_the_folder(tmp_path, monkeypatch):
    calls = []

    def offline(url, timeout):
        calls.append((url, timeout))
        raise urllib.error.URLError("Temporary failure in name resolution")

    def no_sleep(seconds):
        raise AssertionError(f"waited {seconds} s before giving up")

    monkeypatch.setattr(time, "sleep", no_sleep)
    data_dir = tmp_path / "data"
    with pytest.raises(DatasetNotFoundError, match="could not download " + CIFAR10_URL
                       + r" \(Temporary failure in name resolution\); no network.*"
                       + str(data_dir / "cifar-10-batches-bin")):
        maybe_download_and_extract(str(data_dir), urlopen=offline)
    assert calls == [(CIFAR10_URL, 60.0)]       # "at once": one attempt, a finite timeout, no retry, no sleep
    assert os.listdir(data_dir) == []
    with pytest.raises(DatasetNotFoundError, match="download is off"):
        load_cifar10("train", str(data_dir), download=False)


def test_archive_already_there_is_md5_checked_and_left_in_place(cifar_dir, tmp_path):
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    archive = make_archive(cifar_dir, data_dir / "cifar-10-binary.tar.gz")
    content = archive.read_bytes()

    def no_download(url, timeout):
        raise AssertionError("the user's archive must not be replaced by a download")

    for download_ok in (False, True):       # the official md5: this tiny archive is not the official file
        with pytest.raises(ValueError) as info:
            maybe_download_and_extract(str(data_dir), download_ok=download_ok, urlopen=no_download)
        message = str(info.value)
        assert f"{archive} has md5 {md5(content)}, expected {CIFAR10_MD5}" in message and "\n" not in message
        assert os.listdir(data_dir) == ["cifar-10-binary.tar.gz"] and archive.read_bytes() == content
    with pytest.raises(ValueError, match="expected 0{32}"):
        load_cifar10("test", str(data_dir), md5="0" * 32)
    labels = load_cifar10("test", str(data_dir), download=False, md5=md5(content))[1]   # its own md5: accepted
    np.testing.assert_array_equal(labels, np.arange(20, 25) % 10)
    assert sorted(os.listdir(data_dir)) == ["cifar-10-batches-bin", "cifar-10-binary.tar.gz"]


def test_data_dir_may_be_the_batches_folder_itself(cifar_dir, tmp_path):
    expected = read_cifar10(str(cifar_dir), "test")[1]
    for data_dir in (cifar_dir, cifar_dir.parent):      # the folder itself, or the folder holding it
        np.testing.assert_array_equal(load_cifar10("test", str(data_dir), download=False)[1], expected)
    renamed = cifar_dir.rename(tmp_path / "my-cifar")     # batch files in a folder under another name
    np.testing.assert_array_equal(load_cifar10("test", str(renamed), download=False)[1], expected)
    (renamed / "data_batch_2.bin").unlink()
    with pytest.raises(DatasetNotFoundError) as info:
        load_cifar10("train", str(renamed), download=False)
    assert str(info.value) == (f"CIFAR-10 file data_batch_2.bin not found: no {renamed / 'data_batch_2.bin'}; put "
                               f"the official CIFAR-10 binary files (data_batch_1..5.bin, test_batch.bin) in {renamed}")


def test_missing_batches_folder_is_extracted_into_its_parent(cifar_dir, tmp_path):
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    archive = make_archive(cifar_dir, data_dir / "cifar-10-binary.tar.gz")
    target = data_dir / "cifar-10-batches-bin"          # --data-dir names the folder the archive makes
    labels = load_cifar10("test", str(target), download=False, md5=md5(archive.read_bytes()))[1]
    np.testing.assert_array_equal(labels, np.arange(20, 25) % 10)
    assert sorted(os.listdir(data_dir)) == ["cifar-10-batches-bin", "cifar-10-binary.tar.gz"]
    assert sorted(os.listdir(target)) == sorted(TRAIN_FILES + TEST_FILES)   # not nested a second time


def test_default_data_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("TINYBN_DATA", str(tmp_path))
    assert default_data_dir() == str(tmp_path)
    monkeypatch.delenv("TINYBN_DATA")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert default_data_dir() == str(tmp_path / "cache" / "tinybn")


# -- preprocessing --------------------------------------------------------------------------

def test_standardization_closed_form():
    np.testing.assert_array_equal(image.per_image_standardization(np.full((2, 24, 24, 3), 77, np.uint8)), 0.0)
    x = np.random.default_rng(0).uniform(-50, 300, (3, 24, 24, 3))
    y = image.per_image_standardization(x)
    np.testing.assert_allclose(y.mean(axis=(1, 2, 3)), 0.0, atol=1e-12)
    np.testing.assert_allclose(y.std(axis=(1, 2, 3)), 1.0, rtol=1e-12)
    tiny = np.zeros((24, 24, 3))
    tiny[0, 0, 0] = 1e-3   # std below 1/sqrt(1728): divided by the floor instead
    expected = (tiny - tiny.mean()) * np.sqrt(tiny.size)
    np.testing.assert_allclose(image.per_image_standardization(tiny), expected, rtol=1e-12)


@given(n=st.integers(1, 3), h=st.integers(1, 6), w=st.integers(1, 6), f=st.floats(0.1, 2.0), d=st.floats(-60, 60))
def test_brightness_contrast_flip_closed_forms(n, h, w, f, d):
    x = np.random.default_rng(n * 100 + h * 10 + w).uniform(0, 255, (n, h, w, 3))
    np.testing.assert_allclose(image.adjust_brightness(x, d), x + d, rtol=1e-15)
    y = image.adjust_contrast(x, f)
    mean = x.mean(axis=(1, 2), keepdims=True)
    np.testing.assert_allclose(y, (x - mean) * f + mean, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(y.mean(axis=(1, 2)), mean[:, 0, 0], rtol=1e-12)   # channel means kept
    flips = np.arange(n) % 2 == 0
    z = image.flip_left_right(x, flips)
    np.testing.assert_array_equal(z[flips], x[flips][:, :, ::-1])
    np.testing.assert_array_equal(z[~flips], x[~flips])


def test_crop_and_crop_or_pad():
    x = np.arange(2 * 32 * 32 * 3).reshape(2, 32, 32, 3)
    y = image.crop_to_bounding_box(x, [0, 8], [5, 2], 24, 24)
    np.testing.assert_array_equal(y[0], x[0, 0:24, 5:29])
    np.testing.assert_array_equal(y[1], x[1, 8:32, 2:26])
    np.testing.assert_array_equal(image.resize_with_crop_or_pad(x, 24, 24), x[:, 4:28, 4:28])
    padded = image.resize_with_crop_or_pad(np.ones((21, 33, 1)), 24, 24)
    assert padded.shape == (24, 24, 1)
    np.testing.assert_array_equal(padded[:, :, 0].sum(axis=1), [0] + [24] * 21 + [0, 0])   # 1 before, 2 after
    with pytest.raises(ValueError, match="do not fit images of 32x32"):
        image.crop_to_bounding_box(x, 9, 0, 24, 24)
    with pytest.raises(ValueError, match="one entry per image"):
        image.adjust_brightness(x, [1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="images must be"):
        image.per_image_standardization(np.zeros((4, 4)))


def test_random_draws_statistics():
    p = image.draw_train_params(np.random.default_rng(0), 9000)
    for key in ("offset_height", "offset_width"):
        counts = np.bincount(p[key], minlength=9)
        assert len(counts) == 9 and counts.min() > 850 and counts.max() < 1150   # uniform on 0..8
    assert 0.47 < p["flip"].mean() < 0.53
    assert -63 <= p["delta"].min() < -62 and 62 < p["delta"].max() < 63
    assert 0.2 <= p["contrast_factor"].min() < 0.21 and 1.79 < p["contrast_factor"].max() < 1.8


def test_train_and_eval_transforms():
    x = np.random.default_rng(1).integers(0, 256, (6, 32, 32, 3), dtype=np.uint8)
    a = image.train_transform(x, np.random.default_rng(5))
    b = image.train_transform(x, np.random.default_rng(5))
    assert a.shape == (6, 24, 24, 3) and a.dtype == np.float32
    np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(a.mean(axis=(1, 2, 3)), 0.0, atol=1e-5)
    np.testing.assert_allclose(a.std(axis=(1, 2, 3)), 1.0, rtol=1e-5)
    e = image.eval_transform(x)
    ref = x[:, 4:28, 4:28].astype(np.float64)
    ref = (ref - ref.mean(axis=(1, 2, 3), keepdims=True)) / ref.std(axis=(1, 2, 3), keepdims=True)
    np.testing.assert_allclose(e, ref, atol=1e-5)


# -- the shuffle queue -----------------------------------------------------------------------

def marked_images(n):
    """Image i holds i in its first two bytes, so a batch says which examples it holds."""
    x = np.zeros((n, 32, 32, 3), np.uint8)
    x[:, 0, 0, 0], x[:, 0, 0, 1] = np.arange(n) % 256, np.arange(n) // 256
    return x


def as_float(images, rng):
    return images.astype(np.float32)


def example_ids(images):
    return images[:, 0, 0, 0].astype(int) + 256 * images[:, 0, 0, 1].astype(int)


def batches(queue, n):
    return [queue.next_batch() for _ in range(n)]


def test_queue_deterministic_for_seed_whatever_the_threads(cifar_dir):
    images, labels = read_cifar10(str(cifar_dir), "train")
    with ShuffleQueue(images, labels, 4, 8, seed=7, num_threads=1) as q1, \
            ShuffleQueue(images, labels, 4, 8, seed=7, num_threads=3) as q2, \
            ShuffleQueue(images, labels, 4, 8, seed=8, num_threads=2) as q3:
        a, b, c = batches(q1, 5), batches(q2, 5), batches(q3, 5)
    for (ia, la), (ib, lb) in zip(a, b):
        assert ia.shape == (4, 24, 24, 3) and ia.dtype == np.float32 and la.dtype == np.int32
        np.testing.assert_array_equal(ia, ib)
        np.testing.assert_array_equal(la, lb)
    assert not all(np.array_equal(ia, ic) for (ia, _), (ic, _) in zip(a, c))


def test_queue_pairs_images_with_labels_and_visits_each_example_per_epoch():
    n = 24
    x, labels = marked_images(n), (np.arange(n) * 3) % 10
    # min_after_dequeue 0 and chunk == batch: each batch is one chunk of the epoch permutation
    with ShuffleQueue(x, labels, 6, 0, transform=as_float, seed=1) as q:
        got = batches(q, 8)
    ids = [example_ids(b[0].astype(np.uint8)) for b in got]
    for i, (_, lab) in zip(ids, got):
        np.testing.assert_array_equal(lab, labels[i])
    assert sorted(np.concatenate(ids[:4])) == list(range(n)) == sorted(np.concatenate(ids[4:]))
    assert not np.array_equal(np.concatenate(ids[:4]), np.concatenate(ids[4:]))   # reshuffled per epoch


@pytest.mark.parametrize("with_buffer", [True, False])
def test_queue_resume_continues_the_same_order(with_buffer):
    x, labels = marked_images(50), np.arange(50) % 10
    kwargs = dict(batch_size=5, min_after_dequeue=12, seed=3, chunk_size=3)
    with ShuffleQueue(x, labels, **kwargs) as q:
        batches(q, 9)
        state = q.state_dict()
        expected = batches(q, 6)
    full = state
    if not with_buffer:
        state = {"seed": state["seed"], "batches": state["batches"]}
    with ShuffleQueue(x, labels, **kwargs, state=state) as resumed:
        assert resumed.position == 9
        got = batches(resumed, 6)
    with ShuffleQueue(x, labels, **kwargs) as q:   # load_state_dict on a running queue
        q.next_batch()
        q.load_state_dict(state)
        again = batches(q, 6)
    for (ie, le), (ig, lg), (ia, la) in zip(expected, got, again):
        np.testing.assert_array_equal(ie, ig)
        np.testing.assert_array_equal(ie, ia)
        np.testing.assert_array_equal(le, lg)
    with pytest.raises(ValueError, match="state batch_size is 5 but this queue has 4"):
        ShuffleQueue(x, labels, 4, 12, seed=3, chunk_size=3, state=full)
    with pytest.raises(ValueError, match=r"state lacks \['batches'\]"):
        ShuffleQueue(x, labels, **kwargs, state={"seed": 3})


def test_queue_close_stops_threads_and_reports_worker_errors():
    before = threading.active_count()
    x, labels = marked_images(30), np.arange(30) % 10
    q = ShuffleQueue(x, labels, 4, 6, seed=0, num_threads=3)
    assert threading.active_count() == before + 3
    q.next_batch()
    q.close()
    assert threading.active_count() == before
    with pytest.raises(RuntimeError, match="closed"):
        q.next_batch()

    def broken(images, rng):
        raise ArithmeticError("transform bug")
    with ShuffleQueue(x, labels, 4, 6, transform=broken, seed=0) as q:
        with pytest.raises(RuntimeError, match="worker failed") as info:
            q.next_batch()
        assert isinstance(info.value.__cause__, ArithmeticError)
    assert threading.active_count() == before


def test_queue_bad_arguments():
    x, labels = marked_images(10), np.arange(10) % 10
    with pytest.raises(ValueError, match="batch_size must be an integer >= 1"):
        ShuffleQueue(x, labels, 0, 4)
    with pytest.raises(ValueError, match="equally long"):
        ShuffleQueue(x, labels[:5], 2, 4)
    with pytest.raises(ValueError, match="min_after_dequeue must be an integer >= 0"):
        ShuffleQueue(x, labels, 2, -1)


# -- eval batches ----------------------------------------------------------------------------

def test_eval_batches_cover_every_example_once(cifar_dir):
    images, labels = read_cifar10(str(cifar_dir), "train")
    images = np.concatenate([images, images[:5]])
    labels = np.concatenate([labels, labels[:5]])      # 25 examples, batches of 4
    evals = EvalBatches(images, labels, 4)
    got = list(evals)
    assert len(evals) == len(got) == 7 and [len(b[1]) for b in got] == [4] * 6 + [1]
    np.testing.assert_array_equal(np.concatenate([b[1] for b in got]), labels)
    np.testing.assert_array_equal(np.concatenate([b[0] for b in got]), image.eval_transform(images))
    with pytest.raises(ValueError, match="batch_size must be positive"):
        EvalBatches(images, labels, 0)
