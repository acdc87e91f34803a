"""MNIST data: the idx reader, its errors, the verified download, splits and batches.

The fixtures are idx files written byte by byte from the format's description
(big-endian magic and counts, then the pixels), so the reader is checked against
the format, not against its own inverse. No test touches the network: downloads
read file:// URLs or a fake opener.
"""
import gzip
import hashlib
import io
import os
import urllib.error

import numpy as np
import pytest

from tinybn.data import mnist
from tinybn.data.download import DatasetNotFoundError
from tinybn.data.mnist import (FILES, Split, load_mnist, load_split, parse_idx, parse_split, read_idx, read_mnist,
                               scale_images, train_batches, eval_batches)


def pixel(i, r, c):
    return (i * 11 + r * 28 + c) % 256


def images_bytes(n, rows=28, cols=28, magic=2051):
    header = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in (n, rows, cols))
    return header + bytes(pixel(i, r, c) for i in range(n) for r in range(rows) for c in range(cols))


def labels_bytes(labels, magic=2049):
    return magic.to_bytes(4, "big") + len(labels).to_bytes(4, "big") + bytes(labels)


def write_set(folder, split, n, gz=True, label_of=lambda i: i % 10):
    """The official file names of `split` with n examples, gzipped (NAME.gz) or plain (NAME)."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in zip(FILES[split], (images_bytes(n), labels_bytes([label_of(i) for i in range(n)]))):
        path = folder / (name if gz else name[:-3])
        path.write_bytes(gzip.compress(data) if gz else data)
    return folder


# -- reading ---------------------------------------------------------------------------------

@pytest.mark.parametrize("gz", [True, False])
def test_reader_layout_gzip_and_plain(tmp_path, gz):
    write_set(tmp_path, "test", 7, gz=gz)
    images, labels = load_mnist("test", str(tmp_path), download=False)
    assert images.shape == (7, 28, 28, 1) and images.dtype == np.uint8
    assert labels.dtype == np.int32 and labels.tolist() == [0, 1, 2, 3, 4, 5, 6]
    for i, r, c in [(0, 0, 0), (0, 0, 27), (3, 27, 0), (6, 13, 21)]:
        assert images[i, r, c, 0] == pixel(i, r, c)        # rows top to bottom, columns left to right


def test_format_is_told_by_content_not_name(tmp_path):
    plain, gzipped = tmp_path / "looks.gz", tmp_path / "looks-plain"
    plain.write_bytes(labels_bytes([3, 1, 4]))
    gzipped.write_bytes(gzip.compress(labels_bytes([3, 1, 4])))
    assert read_idx(str(plain), 2049).tolist() == read_idx(str(gzipped), 2049).tolist() == [3, 1, 4]


def test_header_dimensions_are_used():
    data = (2051).to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in (2, 3, 4)) + bytes(range(24))
    np.testing.assert_array_equal(parse_idx(data, "x", 2051), np.arange(24).reshape(2, 3, 4))


@pytest.mark.parametrize("data, match", [
    (b"", r"f: truncated: 0 bytes"),
    (b"\x00\x00\x08", r"f: truncated: 3 bytes"),
    ((2051).to_bytes(4, "big") + b"\x00\x00\x00\x02", r"f: truncated: 8 bytes, shorter than its 16-byte header"),
    (images_bytes(2)[:-1], r"f: truncated: the header says 2x28x28 = 1568 bytes of data, the file holds 1567"),
    (images_bytes(2) + b"\x00\x00", r"f: 2 bytes beyond the 1568 bytes of data its header \(2x28x28\) announces"),
    (labels_bytes([1, 2]), r"f: wrong magic number 2049 \(0x00000801\), expected 2051 \(0x00000803\) for an MNIST "
                           r"image file"),
    (images_bytes(1, magic=0x00000D03), r"f: wrong magic number 3331"),
])
def test_bad_image_bytes_name_the_problem(data, match):
    with pytest.raises(ValueError, match=match):
        parse_idx(data, "f", 2051)


def test_bad_files_name_file_and_problem(tmp_path):
    write_set(tmp_path, "train", 5, gz=False)
    images, labels = (str(tmp_path / n[:-3]) for n in FILES["train"])
    with pytest.raises(ValueError, match=r"wrong magic number 2051 .* expected 2049 .*label file"):
        read_mnist(images, images)
    (tmp_path / "short-labels").write_bytes(labels_bytes([1, 2, 3, 4]))
    with pytest.raises(ValueError, match=r"mismatched counts: .*train-images-idx3-ubyte holds 5 images but "
                                         r".*short-labels holds 4 labels"):
        read_mnist(images, str(tmp_path / "short-labels"))
    (tmp_path / "bad-labels").write_bytes(labels_bytes([1, 2, 10, 4, 255]))
    with pytest.raises(ValueError, match=r"bad-labels: label 2 is 10; MNIST labels are 0..9"):
        read_mnist(images, str(tmp_path / "bad-labels"))
    (tmp_path / "small-images").write_bytes(images_bytes(5, rows=14, cols=28))
    with pytest.raises(ValueError, match=r"small-images: images are 14x28, MNIST's are 28x28"):
        read_mnist(str(tmp_path / "small-images"), labels)
    cut = tmp_path / "cut.gz"
    for size in (2, 10, 100, len(gzip.compress(images_bytes(5))) - 4):     # cut short anywhere
        cut.write_bytes(gzip.compress(images_bytes(5))[:size])
        with pytest.raises(ValueError, match=r"cut.gz: truncated or corrupt gzip data \([^\n]*\)$"):
            read_mnist(str(cut), labels)
    (tmp_path / "truncated").write_bytes(images_bytes(5)[:-100])
    with pytest.raises(ValueError, match=r"truncated: truncated: the header says 5x28x28 = 3920 bytes"):
        read_mnist(str(tmp_path / "truncated"), labels)


def test_scale_images_is_input_datas_float32_product():
    raw = np.arange(256, dtype=np.uint8).reshape(1, 16, 16, 1)
    scaled = scale_images(raw)
    assert scaled.dtype == np.float32 and scaled.shape == raw.shape
    assert scaled.min() == 0.0 and scaled.max() == 1.0
    # numpy.multiply(float32 images, 1.0 / 255.0) with the scalar in float32, as TF's input_data
    np.testing.assert_array_equal(scaled, raw.astype(np.float32) * np.float32(1 / 255))
    np.testing.assert_allclose(scaled, raw / 255.0, rtol=1e-7)


# -- splits ------------------------------------------------------------------------------------

@pytest.mark.parametrize("spec, expected", [
    ("train", ("train", 0, 100)), ("test", ("test", 0, 100)), ("t10k", ("test", 0, 100)),
    ("test[:80]", ("test", 0, 80)), ("t10k[80:]", ("test", 80, 100)), ("test[-20:]", ("test", 80, 100)),
    ("train[10:-10]", ("train", 10, 90)), (" test[ 5 : 7 ] ", ("test", 5, 7)),
])
def test_split_specs(spec, expected):
    assert tuple(parse_split(spec).resolve(100)) == expected


@pytest.mark.parametrize("spec, match", [
    ("test[8000]", "expected NAME or NAME"), ("test[a:b]", "expected NAME"), ("valid", "unknown file set 'valid'"),
    ("test[1:2:3]", "expected NAME"),
])
def test_bad_split_syntax(spec, match):
    with pytest.raises(ValueError, match=match):
        parse_split(spec)


@pytest.mark.parametrize("spec, match", [
    ("test[:101]", r"test\[:101\]: the range is outside the 100 examples of 'test'"),
    ("test[-101:]", "outside the 100 examples"),
    ("test[50:50]", r"the range \[50:50\] is empty"), ("test[60:-50]", r"the range \[60:50\] is empty"),
])
def test_split_ranges_are_checked_never_clipped(spec, match):
    with pytest.raises(ValueError, match=match):
        parse_split(spec).resolve(100)


def test_overlap_and_load_split(tmp_path):
    assert Split("test", 0, 80).overlap(Split("test", 60, 100)) == 20
    assert Split("test", 0, 80).overlap(Split("test", 80, 100)) == 0
    assert Split("train", 0, 80).overlap(Split("test", 0, 80)) == 0
    write_set(tmp_path, "test", 12)
    images, labels, split = load_split("t10k[8:]", str(tmp_path), download=False)
    assert str(split) == "test[8:12]" and labels.tolist() == [8, 9, 0, 1]
    assert images[1, 2, 3, 0] == pixel(9, 2, 3)


# -- download ------------------------------------------------------------------------------------

def serve(tmp_path, n=6):
    """A mirror folder holding the official .gz names; MD5 patched to their checksums."""
    write_set(tmp_path / "mirror", "train", n)
    return write_set(tmp_path / "mirror", "test", n - 2)


def md5s(folder):
    return {n: hashlib.md5((folder / n).read_bytes()).hexdigest() for pair in FILES.values() for n in pair}


def test_download_from_file_url_verifies_and_loads(tmp_path, monkeypatch):
    mirror = serve(tmp_path)
    for name, digest in md5s(mirror).items():
        monkeypatch.setitem(mnist.MD5, name, digest)
    dead = (tmp_path / "nowhere").as_uri() + "/"            # the first mirror fails: the next one is tried
    images, labels = load_mnist("test", str(tmp_path / "data"), mirrors=(dead, mirror.as_uri() + "/"))
    assert images.shape == (4, 28, 28, 1) and labels.tolist() == [0, 1, 2, 3]
    assert sorted(os.listdir(tmp_path / "data")) == sorted(FILES["test"])     # no temporary files left


def test_checksum_mismatch_leaves_nothing(tmp_path, monkeypatch):
    mirror = serve(tmp_path)
    monkeypatch.setitem(mnist.MD5, FILES["train"][0], "0" * 32)
    data = tmp_path / "data"
    with pytest.raises(ValueError, match=r"no mirror served a verified train-images-idx3-ubyte.gz: .*has md5 "
                                         r"[0-9a-f]{32}, expected 0{32}"):
        load_mnist("train", str(data), mirrors=(mirror.as_uri() + "/",))
    assert os.listdir(data) == []


class FakeResponse(io.BytesIO):
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def test_fetch_with_an_opener_and_offline(tmp_path, monkeypatch):
    payload = gzip.compress(labels_bytes([7, 7]))
    name = FILES["test"][1]
    monkeypatch.setitem(mnist.MD5, name, hashlib.md5(payload).hexdigest())
    seen = []

    def opener(url, timeout):
        seen.append(url)
        return FakeResponse(payload)

    path = mnist.fetch(name, str(tmp_path / "d"), urlopen=opener)
    assert seen == [mnist.MIRRORS[0] + name] and read_idx(path, 2049).tolist() == [7, 7]

    def offline(url, timeout):
        raise urllib.error.URLError("no route to host")

    with pytest.raises(DatasetNotFoundError, match=r"could not download t10k-labels.*no route to host.*no network\? "
                                                   r"put the official MNIST files"):
        mnist.fetch(name, str(tmp_path / "e"), urlopen=offline)
    assert os.listdir(tmp_path / "e") == []


def test_data_dir_may_be_the_folder_holding_mnist(tmp_path):
    write_set(tmp_path / "mnist", "test", 3)            # --data-dir $TINYBN_DATA, the files in its mnist/
    images, labels = load_mnist("test", str(tmp_path), download=False)
    assert images.shape == (3, 28, 28, 1) and labels.tolist() == [0, 1, 2]
    write_set(tmp_path, "test", 2)                      # files in the folder itself come first
    assert load_mnist("test", str(tmp_path), download=False)[1].tolist() == [0, 1]


def test_download_off_names_the_folder(tmp_path):
    with pytest.raises(DatasetNotFoundError, match=r"train-images-idx3-ubyte.gz not found in .*download is off; "
                                                   r"put the official MNIST files"):
        load_mnist("train", str(tmp_path), download=False)
    with pytest.raises(ValueError, match="split must be 'train' or 'test'"):
        load_mnist("valid", str(tmp_path), download=False)


# -- batches -------------------------------------------------------------------------------------

def collect(queue, n):
    with queue:
        return [queue.next_batch() for _ in range(n)]


def test_train_batches_shuffle_each_epoch_deterministically():
    images = np.arange(12, dtype=np.uint8).reshape(12, 1, 1, 1) * 20
    labels = np.arange(12) % 10
    a = collect(train_batches(images, labels, 4, seed=3), 6)        # two epochs of 3 batches
    b = collect(train_batches(images, labels, 4, seed=3), 6)
    c = collect(train_batches(images, labels, 4, seed=4), 6)
    ids = [np.rint(x.ravel() * 255 / 20).astype(int) for x, _ in a]
    for epoch in (ids[:3], ids[3:]):
        assert sorted(np.concatenate(epoch).tolist()) == list(range(12))     # each example once per epoch
    assert [e.tolist() for e in ids[:3]] != [e.tolist() for e in ids[3:]]    # a new order each epoch
    assert all(np.array_equal(x, y) for (x, _), (y, _) in zip(a, b))
    assert not all(np.array_equal(x, y) for (x, _), (y, _) in zip(a, c))
    assert a[0][0].dtype == np.float32 and all(np.array_equal(lab, i % 10) for i, (_, lab) in zip(ids, a))
    with train_batches(images, labels, 4, seed=3) as q:             # resume from a state mid-way
        q.next_batch(), q.next_batch()
        state = q.state_dict()
    rest = collect(train_batches(images, labels, 4, seed=3, state=state), 4)
    assert all(np.array_equal(x, y) for (x, _), (y, _) in zip(rest, a[2:]))


def test_eval_batches_are_sequential_and_complete():
    images = np.arange(10, dtype=np.uint8).reshape(10, 1, 1, 1)
    batches = list(eval_batches(images, np.arange(10), 4))
    assert [len(lab) for _, lab in batches] == [4, 4, 2]
    pixels = np.concatenate([x for x, _ in batches]).ravel()
    np.testing.assert_array_equal(pixels, np.arange(10, dtype=np.float32) * np.float32(1 / 255))
