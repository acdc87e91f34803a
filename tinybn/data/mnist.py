"""MNIST in the official idx format: reader, verified download, index-range splits, batches.

idx format (http://yann.lecun.com/exdb/mnist/), all integers big-endian:
    magic     4 bytes: 0, 0, type (0x08 = unsigned byte), number of dimensions;
              as one integer 2051 for images (3 dimensions), 2049 for labels (1)
    dims      one 4-byte count per dimension: images N, 28, 28; labels N
    data      prod(dims) bytes, images row by row, top to bottom
A file is gzip or plain, told apart by its first two bytes (1f 8b), never by its
name. A wrong magic number, a file shorter or longer than its header says, images
that are not 28x28, image and label files of different lengths, or a label above 9
is a ValueError that names the file and the problem.

Files: train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz (60,000 examples),
t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz (10,000), each looked for in
the data directory as NAME.gz, then as NAME (uncompressed). The data directory is
`data_dir` (the CLI's --data-dir), else $TINYBN_DATA/mnist, else ~/.cache/tinybn/mnist;
a data_dir holding no MNIST file but a `mnist/` folder that does (--data-dir pointed
at $TINYBN_DATA, the folder above) means that folder. A file or folder we may not
read is a PermissionError naming it, never "not found".
A missing file is downloaded there (from the mirrors TF and torchvision use) through
tinybn.data.download.download: streamed into a temporary file, its md5 checked
against torchvision's published checksum, then renamed into place. download.py
checks md5 only, so md5 it is. Files already on disk are not checksummed, only
validated as above: re-compressed copies are as good as the originals (the t10k
files of one such copy have other .gz headers, hence other .gz md5s, than
the originals, but their decompressed bytes have the published md5s
2646ac647ad5339dbf082846283269ea and 27ae3e4e09519cfbb04c329615203637).

    read_idx(path, magic)            uint8 array of the header's shape
    read_mnist(images, labels)       uint8 (N, 28, 28, 1) NHWC, int32 labels (N,)
    load_mnist(split, data_dir)      the same for "train" or "test", downloading if needed
    parse_split / load_split         "test[:8000]" style index ranges of a file set
    scale_images                     float32 in [0, 1], as TF's mnist input_data
    train_batches / eval_batches     shuffled epochs (a ShuffleQueue) / sequential batches

Floor: data (tests/test_layering.py): imports from tinybn only core, backend, ops, nn,
optim, the package root, models and data.
"""
import gzip
import math
import os
import re
import zlib
from typing import NamedTuple

import numpy as np

from .batches import SequentialBatches
from .download import DatasetNotFoundError, default_data_dir, download
from .files import path_kind, read_bytes
from .image import rowwise
from .queue import ShuffleQueue

IMAGE_SIZE = 28
NUM_CLASSES = 10
IMAGES_MAGIC, LABELS_MAGIC = 2051, 2049
FILES = {"train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
         "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")}
MD5 = {"train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
       "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
       "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
       "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c"}
MIRRORS = ("https://storage.googleapis.com/cvdf-datasets/mnist/",      # TF's input_data
           "https://ossci-datasets.s3.amazonaws.com/mnist/")           # torchvision's
SPLIT_NAMES = {"train": "train", "test": "test", "t10k": "test"}


# -- the idx reader ------------------------------------------------------------------------
def parse_idx(data, name, magic):
    """The uint8 array in idx bytes `data`, whose magic number must be `magic`; `name` is for errors."""
    ndim = magic & 0xFF
    if len(data) < 4:
        raise ValueError(f"{name}: truncated: {len(data)} bytes, not even the 4-byte idx magic number")
    found = int.from_bytes(data[:4], "big")
    if found != magic:
        kind = "image" if magic == IMAGES_MAGIC else "label"
        raise ValueError(f"{name}: wrong magic number {found} (0x{found:08x}), expected {magic} (0x{magic:08x}) "
                         f"for an MNIST {kind} file")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise ValueError(f"{name}: truncated: {len(data)} bytes, shorter than its {header}-byte header")
    dims = tuple(int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim))
    size = math.prod(dims)
    if len(data) - header < size:
        raise ValueError(f"{name}: truncated: the header says {'x'.join(map(str, dims))} = {size} bytes of data, "
                         f"the file holds {len(data) - header}")
    if len(data) - header > size:
        raise ValueError(f"{name}: {len(data) - header - size} bytes beyond the {size} bytes of data its header "
                         f"({'x'.join(map(str, dims))}) announces")
    return np.frombuffer(data, np.uint8, count=size, offset=header).reshape(dims)


def read_idx(path, magic):
    """parse_idx of a file, gunzipped first if its content is gzip."""
    data = read_bytes(path)
    if data[:2] == b"\x1f\x8b":
        try:
            data = gzip.decompress(data)
        except (EOFError, OSError, zlib.error) as e:    # cut short, or a bad CRC / deflate stream
            raise ValueError(f"{path}: truncated or corrupt gzip data ({e})") from None
    return parse_idx(data, path, magic)


def read_mnist(images_path, labels_path):
    """uint8 images (N, 28, 28, 1) and int32 labels (N,) from an image file and its label file."""
    images = read_idx(images_path, IMAGES_MAGIC)
    if images.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE):
        raise ValueError(f"{images_path}: images are {images.shape[1]}x{images.shape[2]}, "
                         f"MNIST's are {IMAGE_SIZE}x{IMAGE_SIZE}")
    labels = read_idx(labels_path, LABELS_MAGIC)
    if len(images) != len(labels):
        raise ValueError(f"mismatched counts: {images_path} holds {len(images)} images but {labels_path} "
                         f"holds {len(labels)} labels")
    bad = np.flatnonzero(labels >= NUM_CLASSES)
    if bad.size:
        i = int(bad[0])
        raise ValueError(f"{labels_path}: label {i} is {labels[i]}; MNIST labels are 0..{NUM_CLASSES - 1}")
    return images.reshape(-1, IMAGE_SIZE, IMAGE_SIZE, 1).copy(), labels.astype(np.int32)


# -- finding and fetching the files ----------------------------------------------------------
def _holds_any(folder, names):
    return any(path_kind(os.path.join(folder, name)) == "file" for gz in names for name in (gz, gz[:-len(".gz")]))


def mnist_data_dir(data_dir=None, names=None):
    """data_dir, or its mnist/ folder when only that holds the files `names` (NAME.gz or NAME; default
    all eight); $TINYBN_DATA/mnist when data_dir is not given."""
    names = names or [n for pair in FILES.values() for n in pair]
    if not data_dir:
        return os.path.join(default_data_dir(), "mnist")
    inner = os.path.join(data_dir, "mnist")
    if not _holds_any(data_dir, names) and path_kind(inner) == "dir" and _holds_any(inner, names):
        return inner
    return data_dir


def where_to_put(data_dir):
    names = ", ".join(n for pair in FILES.values() for n in pair)
    return (f"put the official MNIST files ({names}; gzipped or not) in {data_dir} (the data directory is "
            f"--data-dir, else $TINYBN_DATA/mnist, else {os.path.join(default_data_dir(), 'mnist')})")


def fetch(name, data_dir, urlopen=None, mirrors=MIRRORS):
    """Download `name` into data_dir from the first mirror that serves it with the right md5."""
    path, failures, offline = os.path.join(data_dir, name), [], True
    for mirror in mirrors:
        try:
            return download(mirror + name, path, MD5[name], urlopen=urlopen)
        except DatasetNotFoundError as e:           # this mirror is unreachable
            failures.append(f"{mirror + name}: {e.__cause__ or e}")
        except ValueError as e:                     # wrong checksum: discarded, nothing written
            failures.append(str(e))
            offline = False
    summary = "; ".join(failures)
    if offline:
        raise DatasetNotFoundError(f"could not download {name} ({summary}); no network? " + where_to_put(data_dir))
    raise ValueError(f"no mirror served a verified {name}: {summary}")


def locate(name, data_dir, download_ok=True, urlopen=None, mirrors=MIRRORS):
    """The path of NAME.gz or NAME in data_dir, downloading NAME.gz when neither is there."""
    for candidate in (name, name[:-len(".gz")]):
        path = os.path.join(data_dir, candidate)
        if path_kind(path) == "file":
            return path
    if not download_ok:
        raise DatasetNotFoundError(f"MNIST file {name} not found in {data_dir} and download is off; "
                                   + where_to_put(data_dir))
    return fetch(name, data_dir, urlopen, mirrors)


def load_mnist(split="train", data_dir=None, download=True, urlopen=None, mirrors=MIRRORS):
    """read_mnist of the "train" or "test" files in the data directory, downloading missing ones."""
    if split not in FILES:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    data_dir = mnist_data_dir(data_dir, FILES[split])
    return read_mnist(*(locate(n, data_dir, download, urlopen, mirrors) for n in FILES[split]))


# -- index-range splits ------------------------------------------------------------------------
class Split(NamedTuple):
    """Examples [start, stop) of a file set; None / negative bounds as Python slices until resolve()."""
    name: str
    start: object = None
    stop: object = None

    def resolve(self, n):
        """The same split with 0 <= start < stop <= n; ValueError (never silent clipping) otherwise."""
        start, stop = (0 if self.start is None else self.start), (n if self.stop is None else self.stop)
        start, stop = (start + n if start < 0 else start), (stop + n if stop < 0 else stop)
        if not 0 <= start <= n or not 0 <= stop <= n:
            raise ValueError(f"split {self}: the range is outside the {n} examples of {self.name!r}")
        if start >= stop:
            raise ValueError(f"split {self}: the range [{start}:{stop}] is empty")
        return Split(self.name, start, stop)

    def overlap(self, other):
        """How many examples two resolved splits share."""
        if self.name != other.name:
            return 0
        return max(0, min(self.stop, other.stop) - max(self.start, other.start))

    def __str__(self):
        if self.start is None and self.stop is None:
            return self.name
        bound = lambda b: "" if b is None else str(b)   # noqa: E731
        return f"{self.name}[{bound(self.start)}:{bound(self.stop)}]"


_SPLIT = re.compile(r"(\w+)(?:\[\s*(-?\d+)?\s*:\s*(-?\d+)?\s*\])?")


def parse_split(spec):
    """"train", "test", "t10k" (= "test") or any of them with a slice: "test[:8000]", "t10k[8000:]"."""
    m = _SPLIT.fullmatch(str(spec).strip())
    if not m:
        raise ValueError(f"split {spec!r}: expected NAME or NAME[START:STOP] (e.g. 'test[:8000]')")
    if m.group(1) not in SPLIT_NAMES:
        raise ValueError(f"split {spec!r}: unknown file set {m.group(1)!r}; one of {sorted(SPLIT_NAMES)}")
    start, stop = (None if g is None else int(g) for g in m.group(2, 3))
    return Split(SPLIT_NAMES[m.group(1)], start, stop)


def load_split(split, data_dir=None, download=True, urlopen=None, mirrors=MIRRORS):
    """(uint8 images, int32 labels, resolved Split) of a Split or its text."""
    split = parse_split(split) if isinstance(split, str) else split
    images, labels = load_mnist(split.name, data_dir, download, urlopen, mirrors)
    split = split.resolve(len(images))
    return images[split.start:split.stop], labels[split.start:split.stop], split


# -- input pipeline -----------------------------------------------------------------------------
def _no_draws(rng, n, image_shape):
    return {}


def _scale_rows(images, params):
    return scale_images(images)


@rowwise(_no_draws, _scale_rows)
def scale_images(images, rng=None):
    """float32 in [0, 1]: pixels * (1/255) in float32, as TF's input_data (rng unused: no augmentation)."""
    return images.astype(np.float32) * np.float32(1.0 / 255.0)


def train_batches(images, labels, batch_size, seed=0, state=None, shard=None):
    """Shuffled minibatches, a new permutation each epoch, deterministic for a seed and resumable:
    a ShuffleQueue with no shuffle buffer (min_after_dequeue 0), so batch b is stream positions
    [b*B, (b+1)*B) and a batch may straddle two epochs, as input_data's next_batch. With
    shard=(index, count), batch_size is the global B and each batch is this shard's B/count rows
    of the global one, only those scaled (ShuffleQueue's shard)."""
    return ShuffleQueue(images, labels, batch_size, 0, transform=scale_images, seed=seed, num_threads=1,
                        state=state, shard=shard)


def eval_batches(images, labels, batch_size):
    """Every example once, in order, scaled; the last batch may be smaller."""
    return SequentialBatches(images, labels, batch_size, scale_images)
