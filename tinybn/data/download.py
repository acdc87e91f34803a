"""Fetching CIFAR-10: where the data lives, a verified atomic download, a safe extraction.

Data directory: the `data_dir` argument (the CLI's --data-dir), else the
TINYBN_DATA environment variable, else a per-user cache ($XDG_CACHE_HOME/tinybn,
default ~/.cache/tinybn). It holds `cifar-10-batches-bin/` and, once
downloaded, the official `cifar-10-binary.tar.gz`.

A download never leaves a half-written or unverified file under its final name:
it streams into a temporary file in the same directory, checks the md5, and
only then renames it into place (os.replace is atomic on one file system). A
checksum mismatch deletes the temporary file and keeps whatever was there.
Without a network the download fails at once, naming the folder to fill by hand.
An archive already in the data directory is checked against the same md5
before it is extracted; a mismatch is refused, naming both sums, and the file
is left where it is (it is the user's: never deleted or replaced).

Extraction is tinybn.data.extract.safe_extract: plain files and folders only,
each resolved inside the target, unpacked into a temporary folder and renamed
into place, so a refused or interrupted extraction leaves no partial folder.

Floor: data (tests/test_layering.py): imports from tinybn only core, backend, ops, nn,
optim, the package root, models and data.
"""
import hashlib
import http.client
import os
import tempfile
import urllib.error
import urllib.request

from .extract import UnsafeArchiveError, safe_extract   # noqa: F401  (safe_extract is part of this API)
from .files import DataPermissionError, open_binary, path_kind

CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz"
CIFAR10_MD5 = "c32a1d4ab5d03f1284b67883e8d87530"
ARCHIVE_NAME = "cifar-10-binary.tar.gz"
FOLDER_NAME = "cifar-10-batches-bin"


# not OSError as a whole: a full disk while writing is not "no network"
_NETWORK_ERRORS = (urllib.error.URLError, ConnectionError, TimeoutError, http.client.HTTPException)


class DatasetNotFoundError(FileNotFoundError):
    """The data is neither on disk nor downloadable; the message says where to put it."""


def default_data_dir():
    """TINYBN_DATA, else $XDG_CACHE_HOME/tinybn, else ~/.cache/tinybn."""
    if os.environ.get("TINYBN_DATA"):
        return os.path.expanduser(os.environ["TINYBN_DATA"])
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(cache, "tinybn")


def where_to_put(data_dir):
    """The sentence every missing-data error ends with."""
    return (f"put the official CIFAR-10 binary files (data_batch_1..5.bin, test_batch.bin) in "
            f"{os.path.join(data_dir, FOLDER_NAME)}, or {ARCHIVE_NAME} in {data_dir} "
            f"(the data directory is --data-dir, else $TINYBN_DATA, else {default_data_dir()})")


def md5_of(path, block=1 << 20):
    digest = hashlib.md5()
    with open_binary(path) as f:
        for chunk in iter(lambda: f.read(block), b""):
            digest.update(chunk)
    return digest.hexdigest()


def download(url, path, md5, urlopen=None, timeout=60.0, block=1 << 20):
    """Fetch `url` to `path` atomically if its md5 is `md5`; `urlopen` is injectable for tests."""
    urlopen = urlopen or urllib.request.urlopen
    folder = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=folder, prefix="." + os.path.basename(path) + ".", suffix=".part")
    except PermissionError:
        raise DataPermissionError(folder, "write the download into") from None
    try:
        digest = hashlib.md5()
        with os.fdopen(fd, "wb") as out:
            try:
                with urlopen(url, timeout=timeout) as response:
                    for chunk in iter(lambda: response.read(block), b""):
                        digest.update(chunk)
                        out.write(chunk)
            except _NETWORK_ERRORS as e:   # offline, DNS, refused, timeout, HTTP error
                reason = getattr(e, "reason", e)
                raise DatasetNotFoundError(f"could not download {url} ({reason}); no network? "
                                           + where_to_put(folder)) from e
        if digest.hexdigest() != md5:
            raise ValueError(f"download of {url} has md5 {digest.hexdigest()}, expected {md5}; "
                             f"the download was discarded and {path} left as it was")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def verify_md5(path, md5):
    """Refuse (ValueError) a file whose md5 is not `md5`; the file is left as it is."""
    actual = md5_of(path)
    if actual != md5:
        raise ValueError(f"{path} has md5 {actual}, expected {md5} (the official {os.path.basename(path)}): "
                         f"truncated or not the official file; it was left as it is, replace it with the "
                         f"official one or move it away to download again")
    return path


def maybe_download_and_extract(data_dir=None, download_ok=True, urlopen=None,
                               url=CIFAR10_URL, md5=CIFAR10_MD5):
    """The path of `cifar-10-batches-bin`, extracting the archive (md5-verified) or downloading it when absent.

    `md5` is the archive's expected checksum, the official one unless a test passes its own archive's."""
    data_dir = data_dir or default_data_dir()
    if path_kind(data_dir) not in (None, "dir"):
        raise NotADirectoryError(f"the data directory {data_dir} is a file, not a folder")
    folder = os.path.join(data_dir, FOLDER_NAME)
    if path_kind(folder) == "dir":
        return folder
    archive = os.path.join(data_dir, ARCHIVE_NAME)
    if path_kind(archive) is None:
        if not download_ok:
            raise DatasetNotFoundError(f"CIFAR-10 not found in {data_dir} and download is off; "
                                       + where_to_put(data_dir))
        download(url, archive, md5, urlopen=urlopen)
    else:
        verify_md5(archive, md5)
    safe_extract(archive, data_dir)
    if path_kind(folder) != "dir":
        raise DatasetNotFoundError(f"{archive} holds no {FOLDER_NAME}/ folder; " + where_to_put(data_dir))
    return folder
