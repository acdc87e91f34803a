"""Hostile and broken data: tar extraction that must not escape, truncated archives, unreadable folders.

The archives are built here, member by member, so each one is exactly the attack it names.
Pythons before 3.9.17 / 3.10.12 / 3.11.4 (all allowed by python_requires) have no
tarfile.data_filter; the `old_python` fixture deletes it for the test, so the checks of
tinybn.data.extract are tested alone, as such a Python would run them.
"""
import errno
import io
import os
import stat
import tarfile
import tempfile

import numpy as np
import pytest

from tinybn.data.cifar10 import load_cifar10, read_cifar10
from tinybn.data.download import safe_extract
from tinybn.data.extract import UnsafeArchiveError
from tinybn.data.mnist import FILES, load_mnist

GOOD = "cifar-10-batches-bin/readme.txt"


def regular(name, data=b"evil", mode=0o644, uid=None):
    info = tarfile.TarInfo(name)
    info.size, info.mode = len(data), mode
    if uid is not None:
        info.uid = info.gid = uid
    return info, io.BytesIO(data)


def special(name, kind, linkname=""):
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, linkname
    return info, None


def build(path, members):
    with tarfile.open(path, "w:gz") as tar:
        for info, data in members:
            tar.addfile(info, data)
    return path


def tree(root):
    """Every path under root, as relative strings (links not followed)."""
    return {os.path.relpath(os.path.join(d, n), root) for d, dirs, files in os.walk(root) for n in dirs + files}


@pytest.fixture
def old_python(monkeypatch):
    monkeypatch.delattr(tarfile, "data_filter", raising=False)   # raising=False: a real old Python has none


# a chain of links each pointing "inside" when read alone: l1 -> .., l1/l2 -> .., l1/l2/l3 -> ..
# Once on disk, l1/l2/l3 is two folders above the target, and the file under it lands there.
CHAIN = [special("cifar-10-batches-bin/l1", tarfile.SYMTYPE, ".."),
         special("cifar-10-batches-bin/l1/l2", tarfile.SYMTYPE, ".."),
         special("cifar-10-batches-bin/l1/l2/l3", tarfile.SYMTYPE, ".."),
         regular("cifar-10-batches-bin/l1/l2/l3/escaped.txt")]

HOSTILE = {
    "symlink chain": (CHAIN, "cifar-10-batches-bin/l1", "is a symbolic link"),
    "symlink inside": ([regular(GOOD, b"ok"), special("cifar-10-batches-bin/alias", tarfile.SYMTYPE, "readme.txt")],
                       "cifar-10-batches-bin/alias", "is a symbolic link"),
    "symlink then file through it": ([special("cifar-10-batches-bin/up", tarfile.SYMTYPE, "/tmp"),
                                      regular("cifar-10-batches-bin/up/tinybn-escaped.txt")],
                                     "cifar-10-batches-bin/up", "is a symbolic link"),
    "hardlink inside": ([regular(GOOD, b"ok"), special("cifar-10-batches-bin/hard", tarfile.LNKTYPE, GOOD)],
                        "cifar-10-batches-bin/hard", "is a hard link"),
    "hardlink outside": ([special("cifar-10-batches-bin/hard", tarfile.LNKTYPE, "../../x")],
                         "cifar-10-batches-bin/hard", "is a hard link"),
    "dotdot name": ([regular(GOOD, b"ok"), regular("cifar-10-batches-bin/../../escaped.txt")],
                    "cifar-10-batches-bin/../../escaped.txt", "would be written outside the target folder"),
    "absolute name": ([regular("/tmp/tinybn-absolute.txt")], "/tmp/tinybn-absolute.txt",
                      "would be written outside the target folder"),
    "character device": ([special("cifar-10-batches-bin/dev", tarfile.CHRTYPE)],
                         "cifar-10-batches-bin/dev", "is a character device"),
    "block device": ([special("cifar-10-batches-bin/blk", tarfile.BLKTYPE)],
                     "cifar-10-batches-bin/blk", "is a block device"),
    "fifo": ([special("cifar-10-batches-bin/fifo", tarfile.FIFOTYPE)], "cifar-10-batches-bin/fifo", "is a fifo"),
    "file twice": ([regular(GOOD, b"ok"), regular(GOOD, b"second")], GOOD, "appears twice"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_member_is_refused_and_nothing_is_written(tmp_path, old_python, case):
    members, name, why = HOSTILE[case]
    archive = build(tmp_path / "hostile.tar.gz", members)
    dest = tmp_path / "data" / "d"
    dest.mkdir(parents=True)
    before = tree(tmp_path)
    with pytest.raises(UnsafeArchiveError) as info:
        safe_extract(str(archive), str(dest))
    message = str(info.value)
    assert "\n" not in message and f"member {name!r} {why}" in message and str(archive) in message
    assert tree(tmp_path) == before                 # nothing inside, nothing outside, no temporary folder
    assert not os.path.lexists("/tmp/tinybn-absolute.txt") and not os.path.lexists("/tmp/tinybn-escaped.txt")


def test_each_path_is_resolved_on_disk_before_writing(tmp_path, old_python, monkeypatch):
    # A link that is already on disk (planted by another process between the checks and the
    # writes) is followed by realpath, and the write refused: simulated by a temporary folder
    # that holds cifar-10-batches-bin -> outside before extraction starts.
    outside = tmp_path / "outside"
    outside.mkdir()
    real_mkdtemp = tempfile.mkdtemp

    def planted_mkdtemp(**kwargs):
        folder = real_mkdtemp(**kwargs)
        os.symlink(outside, os.path.join(folder, "cifar-10-batches-bin"))
        return folder

    monkeypatch.setattr(tempfile, "mkdtemp", planted_mkdtemp)
    archive = build(tmp_path / "a.tar.gz", [regular(GOOD, b"ok")])
    with pytest.raises(UnsafeArchiveError, match=f"member 'cifar-10-batches-bin' resolves to {outside}, outside the "
                                                 f"target folder; nothing was extracted$"):
        safe_extract(str(archive), str(tmp_path / "data"))
    assert os.listdir(outside) == [] and os.listdir(tmp_path / "data") == []


def test_mode_bits_are_made_safe_and_owner_is_not_taken_from_the_archive(tmp_path, old_python):
    archive = build(tmp_path / "modes.tar.gz", [
        regular("cifar-10-batches-bin/setuid", b"a", mode=0o7777, uid=12345),   # setuid, setgid, sticky, rwx all
        regular("cifar-10-batches-bin/readonly", b"b", mode=0o400),
        regular("cifar-10-batches-bin/plain", b"c", mode=0o644)])
    dest = tmp_path / "data"
    assert safe_extract(str(archive), str(dest)) == ["cifar-10-batches-bin"]
    folder = dest / "cifar-10-batches-bin"
    # kept: owner rwx and group/other r-x; owner read+write always (as tarfile's "data" filter)
    modes = {n: stat.S_IMODE(os.stat(folder / n).st_mode) for n in ("setuid", "readonly", "plain")}
    assert modes == {"setuid": 0o755, "readonly": 0o600, "plain": 0o644}
    assert (folder / "setuid").read_bytes() == b"a" and os.stat(folder / "setuid").st_uid == os.getuid()
    assert tree(dest) == {"cifar-10-batches-bin", "cifar-10-batches-bin/setuid", "cifar-10-batches-bin/readonly",
                          "cifar-10-batches-bin/plain"}


def test_data_filter_is_consulted_where_python_has_it(tmp_path, monkeypatch):
    vetoed = []

    def data_filter(member, dest_path):       # stands in for a newer Python's verdict on a member
        if member.name.endswith("vetoed.bin"):
            vetoed.append(dest_path)
            raise getattr(tarfile, "FilterError", tarfile.TarError)(f"{member.name} looks wrong")
        return member

    monkeypatch.setattr(tarfile, "data_filter", data_filter, raising=False)
    archive = build(tmp_path / "a.tar.gz", [regular(GOOD, b"ok"), regular("cifar-10-batches-bin/vetoed.bin")])
    with pytest.raises(UnsafeArchiveError, match=r"member 'cifar-10-batches-bin/vetoed.bin' is refused by "
                                                 r"tarfile's data filter \(.*looks wrong\)"):
        safe_extract(str(archive), str(tmp_path / "data"))
    assert len(vetoed) == 1 and os.listdir(tmp_path / "data") == []


@pytest.mark.parametrize("mode", ["w:gz", "w"])
def test_truncated_archive_is_one_line_and_leaves_no_partial_folder(tmp_path, mode):
    archive = tmp_path / "cut.tar"
    with tarfile.open(archive, mode) as tar:
        for i in range(3):       # random bytes: gzip cannot shrink them, so the cut falls in the third file too
            info, data = regular(f"cifar-10-batches-bin/data_batch_{i + 1}.bin", np.random.default_rng(i).bytes(30000))
            tar.addfile(info, data)
    data = archive.read_bytes()
    archive.write_bytes(data[:len(data) * 3 // 4])
    dest = tmp_path / "data"
    with pytest.raises(ValueError, match=r"cut\.tar: truncated or corrupt archive \(.*\); nothing was extracted$"):
        safe_extract(str(archive), str(dest))
    assert os.listdir(dest) == []       # no partial cifar-10-batches-bin, no temporary folder
    with pytest.raises(ValueError, match=r"cut\.tar: truncated or corrupt archive \([^\n]*\)$"):
        read_cifar10(str(archive), "train")


def test_failure_while_writing_leaves_no_partial_folder(tmp_path, monkeypatch):
    archive = build(tmp_path / "a.tar.gz", [regular(f"cifar-10-batches-bin/data_batch_{i}.bin", b"x" * 10)
                                            for i in range(1, 4)])
    real_open, opened = os.open, []

    def disk_full_at_third_file(path, flags, *args, **kwargs):
        if str(path).endswith(".bin"):
            opened.append(path)
            if len(opened) == 3:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", disk_full_at_third_file)
    dest = tmp_path / "data"
    with pytest.raises(OSError, match="No space left on device"):
        safe_extract(str(archive), str(dest))
    monkeypatch.undo()
    assert [os.path.basename(p) for p in opened] == ["data_batch_1.bin", "data_batch_2.bin", "data_batch_3.bin"]
    assert os.listdir(dest) == []       # two files were written, none is left: not even the temporary folder


# -- unreadable folders and files ----------------------------------------------------------
# The tests run as root, for whom chmod 000 takes nothing away, so a folder without
# permissions is simulated: os.stat, os.listdir and open of any path inside it raise
# PermissionError(EACCES), which is what the kernel answers a user for a mode-000 folder.

def deny(monkeypatch, folder, inside=True):
    """Make `folder`'s content (inside=True) or the file `folder` itself (False) unreadable."""
    folder = os.path.abspath(folder)

    def blocked(path):
        path = os.path.abspath(os.fsdecode(path)) if isinstance(path, (str, bytes, os.PathLike)) else ""
        return path.startswith(folder + os.sep) if inside else path == folder

    def wrap(real, on_stat=False):
        def guarded(path, *args, **kwargs):
            if blocked(path) and (inside or not on_stat):
                raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), os.fspath(path))
            return real(path, *args, **kwargs)
        return guarded

    monkeypatch.setattr(os, "stat", wrap(os.stat, on_stat=True))
    monkeypatch.setattr(os, "listdir", wrap(os.listdir))
    monkeypatch.setattr("builtins.open", wrap(open))


def no_download(url, timeout):
    raise AssertionError(f"the test tried to download {url}")


def write_cifar(folder):
    folder.mkdir(parents=True)
    for name in [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]:
        (folder / name).write_bytes(bytes(3073))
    return folder


@pytest.mark.parametrize("point_at", ["parent", "folder"])
def test_unreadable_cifar_folder_says_permission_denied(tmp_path, monkeypatch, point_at):
    folder = write_cifar(tmp_path / "data" / "cifar-10-batches-bin")
    deny(monkeypatch, folder)
    data_dir = folder.parent if point_at == "parent" else folder
    with pytest.raises(PermissionError) as info:
        load_cifar10("test", str(data_dir), urlopen=no_download)
    assert str(info.value) == (f"permission denied: cannot read {folder / 'test_batch.bin'}: "
                               f"no permission to look inside the folder {folder}")


def test_unreadable_data_dir_says_permission_denied_and_does_not_download(tmp_path, monkeypatch):
    data_dir = tmp_path / "data"
    write_cifar(data_dir / "cifar-10-batches-bin")
    deny(monkeypatch, data_dir)
    with pytest.raises(PermissionError, match=f"permission denied: .*look inside the folder {data_dir}$"):
        load_cifar10("train", str(data_dir), urlopen=no_download)


def test_unreadable_cifar_file_and_archive_say_permission_denied(tmp_path, monkeypatch):
    folder = write_cifar(tmp_path / "data" / "cifar-10-batches-bin")
    deny(monkeypatch, folder / "data_batch_2.bin", inside=False)
    with pytest.raises(PermissionError, match=f"^permission denied: cannot read {folder / 'data_batch_2.bin'}$"):
        load_cifar10("train", str(folder.parent), download=False)
    archive = tmp_path / "other" / "cifar-10-binary.tar.gz"
    archive.parent.mkdir()
    archive.write_bytes(b"not read")
    deny(monkeypatch, archive, inside=False)
    with pytest.raises(PermissionError, match=f"^permission denied: cannot read {archive}$"):
        load_cifar10("train", str(archive.parent), urlopen=no_download)


def test_unreadable_mnist_folder_says_permission_denied(tmp_path, monkeypatch):
    folder = tmp_path / "mnist"
    folder.mkdir()
    for name in FILES["test"]:
        (folder / name).write_bytes(b"")
    deny(monkeypatch, folder)
    with pytest.raises(PermissionError, match=f"permission denied: cannot read {folder}/t10k-images-idx3-ubyte.gz: "
                                              f"no permission to look inside the folder {folder}$"):
        load_mnist("test", str(folder), urlopen=no_download)
