"""CIFAR-10 in the official binary format, and the tutorial's train and eval inputs.

File format (`cifar-10-batches-bin/`, https://www.cs.toronto.edu/~kriz/cifar.html):
each record is 3073 bytes, one label byte (0..9) then the 32x32 image as 1024
red, 1024 green and 1024 blue bytes, each plane row by row, top to bottom. Train
is data_batch_1..5.bin, eval is test_batch.bin. The record count of a file is
its size / 3073 (the real-data builds here do not hold 10,000 per file); any
other size, or a label byte above 9, is a ValueError naming the file; a folder
or file we may not read is a PermissionError naming it, never "not found".

    read_cifar10(source, split)   uint8 (N, 32, 32, 3) NHWC, int32 labels (N,),
                                  from the folder or from cifar-10-binary.tar.gz
    batches_folder(data_dir)      the folder of the batch files: data_dir itself
                                  when it is one, else data_dir/cifar-10-batches-bin,
                                  extracted (md5-verified) or downloaded if absent
    load_cifar10(split, data_dir) read_cifar10 of batches_folder(data_dir)
    distorted_inputs(...)         the train ShuffleQueue, as the tutorial's
                                  min_after_dequeue = 0.4 * examples per epoch
    EvalBatches / inputs(...)     sequential eval batches, centre crop

The eval iterator returns the last partial batch with its real size (no
padding, no repeats), so every example is counted exactly once; the tutorial's
cifar10_eval.py instead runs ceil(N/B) full batches and counts repeats.

Floor: data (tests/test_layering.py): imports from tinybn only core, backend, ops, nn,
optim, the package root, models and data.
"""
import os
import tarfile

import numpy as np

from .batches import SequentialBatches
from .download import (CIFAR10_MD5, FOLDER_NAME, DatasetNotFoundError, default_data_dir,
                       maybe_download_and_extract, where_to_put)
from .extract import BROKEN_ARCHIVE_ERRORS
from .files import DataPermissionError, path_kind, read_bytes
from .image import eval_transform, train_transform
from .queue import ShuffleQueue

IMAGE_SIZE = 32
NUM_CLASSES = 10
RECORD_BYTES = 1 + 3 * IMAGE_SIZE * IMAGE_SIZE   # 3073
TRAIN_FILES = tuple(f"data_batch_{i}.bin" for i in range(1, 6))
TEST_FILES = ("test_batch.bin",)
MIN_FRACTION_OF_EXAMPLES_IN_QUEUE = 0.4


def split_files(split):
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    return TRAIN_FILES if split == "train" else TEST_FILES


def parse_records(data, name):
    """uint8 images (N, 32, 32, 3) and int32 labels (N,) from the bytes of one batch file."""
    if len(data) == 0 or len(data) % RECORD_BYTES:
        raise ValueError(f"{name}: size {len(data)} bytes is not a positive multiple of the "
                         f"{RECORD_BYTES}-byte CIFAR-10 record (truncated or not a CIFAR-10 binary file?)")
    records = np.frombuffer(data, dtype=np.uint8).reshape(-1, RECORD_BYTES)
    labels = records[:, 0].astype(np.int32)
    bad = np.flatnonzero(labels >= NUM_CLASSES)
    if bad.size:
        i = int(bad[0])
        raise ValueError(f"{name}: record {i} (byte offset {i * RECORD_BYTES}) has label byte "
                         f"{labels[i]}; CIFAR-10 labels are 0..{NUM_CLASSES - 1}")
    # planes (C, H, W) per record -> NHWC
    images = records[:, 1:].reshape(-1, 3, IMAGE_SIZE, IMAGE_SIZE).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(images), labels


def read_batch_file(path):
    return parse_records(read_bytes(path), path)


def _concat(parts):
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def _where_to_put_files(folder):
    if os.path.basename(os.path.normpath(folder)) == FOLDER_NAME:
        return where_to_put(os.path.dirname(os.path.abspath(folder)))
    return f"put the official CIFAR-10 binary files (data_batch_1..5.bin, test_batch.bin) in {folder}"


def read_cifar10(source, split="train"):
    """Read a split from a `cifar-10-batches-bin` folder (or its parent) or from the .tar.gz archive."""
    names = split_files(split)
    kind = path_kind(source)
    if kind == "file":
        return _read_archive(source, names)
    if kind != "dir":
        raise DatasetNotFoundError(f"CIFAR-10 not found: no folder {source}; " + _where_to_put_files(source))
    folder = source
    if path_kind(os.path.join(folder, names[0])) is None and path_kind(os.path.join(folder, FOLDER_NAME)) == "dir":
        folder = os.path.join(folder, FOLDER_NAME)
    parts = []
    for name in names:
        path = os.path.join(folder, name)
        if path_kind(path) != "file":
            raise DatasetNotFoundError(f"CIFAR-10 file {name} not found: no {path}; " + _where_to_put_files(folder))
        parts.append(read_batch_file(path))
    return _concat(parts)


def _read_archive(archive, names):
    try:
        with tarfile.open(archive, "r:*") as tar:
            members = {os.path.basename(m.name): m for m in tar.getmembers() if m.isfile()}
            parts = []
            for name in names:
                if name not in members:
                    raise DatasetNotFoundError(f"{archive} holds no {FOLDER_NAME}/{name}; "
                                               + where_to_put(os.path.dirname(os.path.abspath(archive))))
                data = tar.extractfile(members[name]).read()
                parts.append(parse_records(data, f"{archive}:{members[name].name}"))
    except PermissionError:
        raise DataPermissionError(archive) from None
    except BROKEN_ARCHIVE_ERRORS as e:
        raise ValueError(f"{archive}: truncated or corrupt archive ({e})") from None
    return _concat(parts)


def holds_batch_files(folder):
    """Whether `folder` is a batches folder: named cifar-10-batches-bin, or holding a batch file."""
    return (os.path.basename(os.path.normpath(folder)) == FOLDER_NAME
            or any(path_kind(os.path.join(folder, name)) == "file" for name in TRAIN_FILES + TEST_FILES))


def batches_folder(data_dir=None, download=True, urlopen=None, md5=CIFAR10_MD5):
    """The folder of the batch files. A data_dir that is such a folder itself (--data-dir pointed at
    cifar-10-batches-bin, or at a folder of data_batch_*.bin under another name) is used as it is; a
    cifar-10-batches-bin that does not exist yet is fetched into its parent; any other data_dir holds
    (or gets: maybe_download_and_extract, the archive checked against `md5`) cifar-10-batches-bin/."""
    data_dir = data_dir or default_data_dir()
    if path_kind(data_dir) == "dir" and holds_batch_files(data_dir):
        return data_dir
    if os.path.basename(os.path.normpath(data_dir)) == FOLDER_NAME:
        data_dir = os.path.dirname(os.path.abspath(data_dir))
    return maybe_download_and_extract(data_dir, download_ok=download, urlopen=urlopen, md5=md5)


def load_cifar10(split="train", data_dir=None, download=True, urlopen=None, md5=CIFAR10_MD5):
    """read_cifar10 of batches_folder(data_dir); `md5` is the archive's, for tests with their own archive."""
    split_files(split)
    return read_cifar10(batches_folder(data_dir, download, urlopen, md5), split)


class EvalBatches(SequentialBatches):
    """Sequential (images, labels) batches with the eval transform; the last one may be smaller."""

    def __init__(self, images, labels, batch_size, transform=eval_transform):
        super().__init__(images, labels, batch_size, transform)


def distorted_inputs(data_dir=None, batch_size=128, seed=0, num_threads=2, download=True, state=None):
    """The tutorial's training input: a ShuffleQueue over the train split with train_transform."""
    images, labels = load_cifar10("train", data_dir, download)
    return training_queue(images, labels, batch_size, seed=seed, num_threads=num_threads, state=state)


def training_queue(images, labels, batch_size=128, seed=0, num_threads=2, state=None, shard=None):
    """distorted_inputs' queue over images already loaded (the trainer reads the data before it
    creates --train-dir, so a data error leaves nothing on disk). With shard=(index, count),
    batch_size is the global batch and each rank distorts only its own slice of it (ShuffleQueue)."""
    min_after_dequeue = int(len(images) * MIN_FRACTION_OF_EXAMPLES_IN_QUEUE)
    return ShuffleQueue(images, labels, batch_size, min_after_dequeue, transform=train_transform,
                        seed=seed, num_threads=num_threads, state=state, shard=shard)


def inputs(eval_data=True, data_dir=None, batch_size=128, download=True):
    """The tutorial's eval input: centre-cropped, standardized batches of the test (or train) split."""
    images, labels = load_cifar10("test" if eval_data else "train", data_dir, download)
    return EvalBatches(images, labels, batch_size)
