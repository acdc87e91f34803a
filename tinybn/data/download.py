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

Extraction refuses members with absolute paths, `..` components, links that
point outside the target, and device files, and uses tarfile's "data" filter
where Python has it; it unpacks into a temporary folder and renames the result
into place, so an interrupted extraction leaves no partial dataset folder.
"""
import hashlib
import http.client
import os
import posixpath
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request

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
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(block), b""):
            digest.update(chunk)
    return digest.hexdigest()


def download(url, path, md5, urlopen=None, timeout=60.0, block=1 << 20):
    """Fetch `url` to `path` atomically if its md5 is `md5`; `urlopen` is injectable for tests."""
    urlopen = urlopen or urllib.request.urlopen
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix="." + os.path.basename(path) + ".", suffix=".part")
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


def _check_member(member, archive):
    name = member.name
    if name.startswith(("/", "\\")) or os.path.isabs(name) or ".." in name.replace("\\", "/").split("/"):
        raise ValueError(f"{archive}: member {name!r} would be written outside the target folder")
    if member.issym() or member.islnk():
        link = member.linkname
        base = posixpath.dirname(name) if member.issym() else ""
        target = posixpath.normpath(posixpath.join(base, link))
        if link.startswith("/") or os.path.isabs(link) or target == ".." or target.startswith("../"):
            raise ValueError(f"{archive}: link {name!r} -> {link!r} points outside the target folder")
    elif not (member.isfile() or member.isdir()):
        raise ValueError(f"{archive}: member {name!r} is not a regular file or folder")
    return posixpath.normpath(name).split("/")[0]


def safe_extract(archive, dest_dir):
    """Extract `archive` into `dest_dir`; each top-level entry appears atomically, never over an existing one."""
    os.makedirs(dest_dir, exist_ok=True)
    tmp = tempfile.mkdtemp(dir=dest_dir, prefix=".extract-")
    try:
        with tarfile.open(archive, "r:*") as tar:
            members = tar.getmembers()
            tops = {_check_member(m, archive) for m in members} - {"."}
            for top in tops:
                if os.path.lexists(os.path.join(dest_dir, top)):
                    raise FileExistsError(f"{archive}: {os.path.join(dest_dir, top)} already exists; "
                                          "move it away to extract again")
            if hasattr(tarfile, "data_filter"):
                tar.extractall(tmp, members=members, filter="data")
            else:   # Python without PEP 706: the checks above are the filter
                tar.extractall(tmp, members=members)
        for top in sorted(tops):
            os.replace(os.path.join(tmp, top), os.path.join(dest_dir, top))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return sorted(tops)


def maybe_download_and_extract(data_dir=None, download_ok=True, urlopen=None,
                               url=CIFAR10_URL, md5=CIFAR10_MD5):
    """The path of `cifar-10-batches-bin`, extracting or downloading the archive when it is absent."""
    data_dir = data_dir or default_data_dir()
    folder = os.path.join(data_dir, FOLDER_NAME)
    if os.path.isdir(folder):
        return folder
    archive = os.path.join(data_dir, ARCHIVE_NAME)
    if not os.path.exists(archive):
        if not download_ok:
            raise DatasetNotFoundError(f"CIFAR-10 not found in {data_dir} and download is off; "
                                       + where_to_put(data_dir))
        download(url, archive, md5, urlopen=urlopen)
    safe_extract(archive, data_dir)
    if not os.path.isdir(folder):
        raise DatasetNotFoundError(f"{archive} holds no {FOLDER_NAME}/ folder; " + where_to_put(data_dir))
    return folder
