"""Files where someone else may have put something else: read, written, removed and moved safely.

mgsave runs as root, and the files it reads or writes (the policy, its records, the metrics file,
an SVG, the kept images) are at paths that a link, a FIFO or a device can take the place of:

- a read opens the file without following a symbolic link (unless asked: the policy may be one)
  and without blocking (a FIFO would hang a pass past SIGTERM), takes regular files only (``fstat``
  of what was opened, so nothing can be swapped in between) and at most a given size (a link to
  ``/dev/zero`` would never end);
- a write replaces the file atomically: a temporary file made with ``O_EXCL`` (never through a
  link) in the same directory, renamed over the name, both relative to the directory's
  descriptor; what is at the name must be a regular file (or nothing) unless the caller owns
  the name outright (its records), in which case whatever is there is replaced, never written
  through;
- a removal or a move happens relative to descriptors of directories opened with
  ``O_NOFOLLOW|O_DIRECTORY`` one level at a time, after ``lstat`` relative to the same
  descriptor says the entry is a regular file: a directory swapped for a link to elsewhere
  can never make root remove or move a file outside it.
"""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO


class UnsafeFile(Exception):
    """The file is not one mgsave may read, write, remove or move (why, as a sentence's end)."""


class FileTooBig(UnsafeFile):
    """A regular file, larger than it may be."""


def file_kind(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a device"),
                       (stat.S_ISBLK, "a device"), (stat.S_ISSOCK, "a socket"), (stat.S_ISLNK, "a symbolic link")):
        if test(mode):
            return name
    return "not a regular file"


def read_small_file(path: str | Path, max_bytes: int, *, follow_symlinks: bool = False,
                    check: Callable[[os.stat_result], None] | None = None) -> bytes:
    """The bytes of ``path``, a regular file of at most ``max_bytes``, opened without blocking
    and (unless ``follow_symlinks``) without following a symbolic link; ``check`` is given the
    ``fstat`` of what was opened before anything is read, and may raise.

    Raises FileNotFoundError when there is none, UnsafeFile when it must not be read (a link, a
    FIFO, a device, too big), OSError when it cannot be."""
    with _open_regular(path, follow_symlinks) as (file, info):
        if check is not None:
            check(info)
        if info.st_size > max_bytes:
            raise FileTooBig(f"it is {info.st_size} bytes, more than the {max_bytes} it can be")
        data = file.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise FileTooBig(f"it is more than the {max_bytes} bytes it can be")
    return data


def read_head(path: str | Path, count: int) -> bytes:
    """The first ``count`` bytes of ``path`` (fewer when it is shorter), a regular file of any
    size (a save image's header), read the same way as ``read_small_file``."""
    with _open_regular(path, False) as (file, _info):
        return file.read(count)


@contextlib.contextmanager
def _open_regular(path: str | Path, follow_symlinks: bool) -> Iterator[tuple[BinaryIO, os.stat_result]]:
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | (0 if follow_symlinks else os.O_NOFOLLOW)
    try:
        fd = os.open(path, flags)
    except OSError as error:
        if not follow_symlinks and os.path.islink(path):
            raise UnsafeFile("it is a symbolic link; it is never read through one") from None
        raise error
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise UnsafeFile(f"it is {file_kind(info.st_mode)}, not a regular file")
        file = open(fd, "rb")  # noqa: SIM115 - closes fd from here on
    except BaseException:
        os.close(fd)
        raise
    with file:
        yield file, info


def write_file(path: str | Path, data: str | bytes, *, mode: int = 0o600, durable: bool = True,
               suffix: str = "", replace_anything: bool = False) -> None:
    """Replace ``path`` with ``data`` so that readers see the old or the new file, whole: a
    temporary file in the same directory (``.<name>.<random><suffix>``, made with ``O_EXCL``),
    renamed over the name, both relative to the directory's descriptor. The new file has
    ``mode``; ``durable`` also fsyncs the file and the directory, so that a power loss leaves
    one of the two as well.

    Raises UnsafeFile when something other than a regular file is at ``path`` (a link, a FIFO,
    a device), unless ``replace_anything`` (the caller's own name: whatever is there is replaced,
    never written through); OSError when it cannot be written (the temporary file is removed)."""
    path = Path(path)
    payload = data.encode("utf-8") if isinstance(data, str) else data
    dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        if not replace_anything:
            _must_be_regular_or_absent(dir_fd, path)
        tmp = f".{path.name}.{os.urandom(4).hex()}{suffix}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode, dir_fd=dir_fd)
        try:
            with open(fd, "wb") as out:
                os.fchmod(out.fileno(), mode)  # whatever the umask
                out.write(payload)
                if durable:
                    out.flush()
                    os.fsync(out.fileno())
            os.rename(tmp, path.name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp, dir_fd=dir_fd)
            raise
        if durable:
            os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _must_be_regular_or_absent(dir_fd: int, path: Path) -> None:
    try:
        info = os.lstat(path.name, dir_fd=dir_fd)
    except FileNotFoundError:
        return
    if not stat.S_ISREG(info.st_mode):
        raise UnsafeFile(f"{path} is {file_kind(info.st_mode)}, not a regular file; it is never written through "
                         f"nor replaced")


@contextlib.contextmanager
def directory(base: str | Path, *names: str) -> Iterator[int]:
    """A descriptor of the directory ``base/names...``: ``base`` as given (a directory the admin
    named, trusted by the caller), each of ``names`` opened relative to the one before with
    ``O_NOFOLLOW|O_DIRECTORY``. Raises UnsafeFile when one of them is a link or not a directory,
    FileNotFoundError (or OSError) when it cannot be opened."""
    fd = os.open(base, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for depth, name in enumerate(names, 1):
            parent, fd = fd, -1
            try:
                fd = _open_subdirectory(parent, name, Path(base, *names[:depth]))
            finally:
                os.close(parent)
        yield fd
    finally:
        if fd >= 0:
            os.close(fd)


def _open_subdirectory(parent_fd: int, name: str, where: Path) -> int:
    """``name`` under ``parent_fd``, never through a link."""
    try:
        return os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent_fd)
    except OSError as error:
        try:
            info = os.lstat(name, dir_fd=parent_fd)
        except OSError:
            raise error from None
        if stat.S_ISDIR(info.st_mode):
            raise error from None
        raise UnsafeFile(f"{where} is {file_kind(info.st_mode)}, not a directory") from None


def regular_entries(dir_fd: int) -> dict[str, os.stat_result]:
    """The regular files directly in the directory, by name, with their ``lstat`` (links,
    directories and the rest are left out)."""
    found = {}
    for name in os.listdir(dir_fd):
        with contextlib.suppress(OSError):
            info = os.lstat(name, dir_fd=dir_fd)
            if stat.S_ISREG(info.st_mode):
                found[name] = info
    return found


def remove_regular(dir_fd: int, name: str) -> None:
    """Remove ``name`` from the directory, a regular file: UnsafeFile when it is anything else
    (left alone), FileNotFoundError when there is none."""
    regular_file(dir_fd, name)
    os.unlink(name, dir_fd=dir_fd)


def move_regular(src_fd: int, name: str, dst_fd: int, new_name: str) -> None:
    """Move the regular file ``name`` to ``new_name`` in another directory of the same file
    system: UnsafeFile when it is anything else (left alone)."""
    regular_file(src_fd, name)
    os.rename(name, new_name, src_dir_fd=src_fd, dst_dir_fd=dst_fd)


def regular_file(dir_fd: int, name: str) -> os.stat_result:
    """The ``lstat`` of ``name`` in the directory, a regular file: UnsafeFile when it is anything
    else, FileNotFoundError when there is none."""
    if "/" in name or name in ("", ".", ".."):
        raise UnsafeFile(f"{name!r} is not a name in one directory")
    info = os.lstat(name, dir_fd=dir_fd)
    if not stat.S_ISREG(info.st_mode):
        raise UnsafeFile(f"{name} is {file_kind(info.st_mode)}, not a regular file; left alone")
    return info


def free_name(dir_fd: int, stem: str, suffix: str = ".save") -> str:
    """A name in the directory that nothing has yet (``<stem><suffix>``, else ``<stem>-2<suffix>``...)."""
    name, n = f"{stem}{suffix}", 1
    while _exists(dir_fd, name):
        n += 1
        name = f"{stem}-{n}{suffix}"
    return name


def _exists(dir_fd: int, name: str) -> bool:
    try:
        os.lstat(name, dir_fd=dir_fd)
    except FileNotFoundError:
        return False
    return True
