"""Safe tar extraction: only plain files and folders, only inside the target, nothing half-done.

A data archive needs nothing but regular files and folders (the official
CIFAR-10 archive holds no links), so every symbolic or hard link, device, fifo
or other special member is refused, as is any name that is absolute or has a
`..` component. Links are refused outright, not checked: a chain of links that
each point "inside" (a -> .., a/b -> .., a/b/c -> ..) can walk out of the target
once they exist on disk, which no check of one member at a time sees. Python's
tarfile.data_filter (PEP 706) is applied on top where it exists; the checks
here do not depend on it, so Pythons without it (3.9.0-3.9.16, 3.10.0-3.10.11,
3.11.0-3.11.3) are as safe.

The whole member list is checked before anything is written. Files are then
written by this module, not by tarfile.extractall: each path is resolved with
os.path.realpath (following whatever is on disk) and must lie inside the
temporary folder, files are created exclusively without following links, and
their mode keeps only the permission bits, less group/other write (no setuid,
setgid or sticky bit; owner read and write always), as the "data" filter does.
Owners are never changed. Everything is unpacked into a temporary folder inside
the target and each top-level entry renamed into place at the end, so a refused
or broken archive leaves nothing behind.

Floor: data (tests/test_layering.py): imports from tinybn only core, backend, ops, nn,
optim, the package root, models and data.
"""
import gzip
import os
import shutil
import stat
import tarfile
import tempfile
import zlib

from .files import DataPermissionError, path_kind

# what a member may keep of its mode bits: rwx for the owner, r-x for group and other
_KEPT_MODE_BITS = stat.S_IRWXU | stat.S_IRGRP | stat.S_IXGRP | stat.S_IROTH | stat.S_IXOTH
_SPECIAL_KINDS = {tarfile.CHRTYPE: "a character device", tarfile.BLKTYPE: "a block device",
                  tarfile.FIFOTYPE: "a fifo"}
# a truncated or corrupt .tar.gz surfaces as any of these, depending on where it breaks
BROKEN_ARCHIVE_ERRORS = (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile)


class UnsafeArchiveError(ValueError):
    """An archive member that is a link, a special file, or would land outside the target."""


def _refuse(archive, name, why):
    return UnsafeArchiveError(f"{archive}: member {name!r} {why}; nothing was extracted")


def member_parts(member, archive):
    """The member's relative path as a tuple of names; UnsafeArchiveError for anything else."""
    name = member.name
    if member.issym() or member.islnk():
        kind = "symbolic" if member.issym() else "hard"
        raise _refuse(archive, name, f"is a {kind} link (to {member.linkname!r}); links are not extracted")
    if not (member.isfile() or member.isdir()):
        kind = _SPECIAL_KINDS.get(member.type, f"of tar type {member.type!r}")
        raise _refuse(archive, name, f"is {kind}, not a regular file or folder")
    parts = name.replace("\\", "/").split("/")
    if "\x00" in name or os.path.isabs(name) or name.startswith(("/", "\\")) or ".." in parts \
            or os.path.splitdrive(name)[0]:
        raise _refuse(archive, name, "would be written outside the target folder")
    return tuple(p for p in parts if p not in ("", "."))


def _plan(members, archive):
    """{parts: member} of the files and the set of folders, after checking every member."""
    files, folders = {}, set()
    for member in members:
        parts = member_parts(member, archive)
        if not parts:
            if member.isdir():
                continue                    # "." or "./": the target itself
            raise _refuse(archive, member.name, "has no file name")
        folders.update(parts[:i] for i in range(1, len(parts)))
        if member.isdir():
            folders.add(parts)
        elif parts in files:
            raise _refuse(archive, member.name, "appears twice")
        else:
            files[parts] = member
    clashes = sorted(folders & files.keys())
    if clashes:
        raise _refuse(archive, files[clashes[0]].name, "is both a file and a folder")
    return files, folders


def _inside(root, parts, archive):
    """root/parts, after checking that its real path (links on disk followed) lies inside root."""
    path = os.path.join(root, *parts)
    real = os.path.realpath(path)
    if os.path.commonpath([real, root]) != root:
        raise _refuse(archive, "/".join(parts), f"resolves to {real}, outside the target folder")
    return path


def _write_file(tar, member, path):
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_BINARY", 0)
    with os.fdopen(os.open(path, flags, 0o600), "wb") as out:
        shutil.copyfileobj(tar.extractfile(member), out)
    os.chmod(path, (member.mode & _KEPT_MODE_BITS) | stat.S_IRUSR | stat.S_IWUSR)


def _extract_into(tar, archive, tmp, dest_dir):
    members = tar.getmembers()
    files, folders = _plan(members, archive)
    if hasattr(tarfile, "data_filter"):     # a second opinion where Python has one
        for member in members:
            try:
                tarfile.data_filter(member, tmp)
            except tarfile.TarError as e:   # FilterError and its kinds
                raise _refuse(archive, member.name, f"is refused by tarfile's data filter ({e})") from None
    tops = sorted({parts[0] for parts in folders | files.keys()})
    for top in tops:
        if os.path.lexists(os.path.join(dest_dir, top)) or path_kind(os.path.join(dest_dir, top)):
            raise FileExistsError(f"{archive}: {os.path.join(dest_dir, top)} already exists; "
                                  "move it away to extract again")
    root = os.path.realpath(tmp)
    for parts in sorted(folders, key=len):
        os.makedirs(_inside(root, parts, archive), exist_ok=True)
    for member in members:                  # in archive order: a .gz stream is read once, front to back
        parts = member_parts(member, archive)
        if files.get(parts) is member:
            _write_file(tar, member, _inside(root, parts, archive))
    return tops


def safe_extract(archive, dest_dir):
    """Extract `archive` into `dest_dir`; each top-level entry appears whole, never over an existing one.

    Returns the top-level names. UnsafeArchiveError (a ValueError) for a refused member, ValueError
    for a truncated or corrupt archive, FileExistsError when a top-level entry is already there."""
    try:
        os.makedirs(dest_dir, exist_ok=True)
        tmp = tempfile.mkdtemp(dir=dest_dir, prefix=".extract-")
    except PermissionError:
        raise DataPermissionError(dest_dir, "write into") from None
    try:
        try:
            with tarfile.open(archive, "r:*") as tar:
                tops = _extract_into(tar, archive, tmp, dest_dir)
        except PermissionError as e:
            if e.filename and os.path.abspath(e.filename) == os.path.abspath(archive):
                raise DataPermissionError(archive) from None
            raise
        except BROKEN_ARCHIVE_ERRORS as e:
            raise ValueError(f"{archive}: truncated or corrupt archive ({e}); nothing was extracted") from None
        for top in tops:
            os.replace(os.path.join(tmp, top), os.path.join(dest_dir, top))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return tops
