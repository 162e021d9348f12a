"""A managed-save image taken out of libvirt's reach while mgsave resumes it with channels.

libvirt's start resumes a persistent guest from ``<save dir>/<name>.save`` and removes the file
in the same job; virDomainRestoreParams, which alone reads with several channels, leaves the
file where it is (libvirt 11.3: it even keeps its managed-save mark), and any later start would
resume that past memory over disks that have moved on since. So the image is first renamed to
``<save dir>/mgsave-resuming/<name>.save`` (same file system: one atomic rename), restored from
there and then removed: no start can take it meanwhile, and at no moment does an image of the
guest's past lie where a start would resume it.

A file left in ``mgsave-resuming/`` (the pass died on the way) is never resumed on its own: the
guest may have run from it already. ``mgsave images`` lists it, like a failed image, for the
admin to decide. Facts about files only; ``hypervisor`` does the libvirt part.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

ASIDE = "mgsave-resuming"  # under libvirt's managed-save directory


def aside_path(image: str) -> str:
    """Where ``image`` (a managed-save image) waits while it is resumed with channels."""
    path = Path(image)
    return str(path.parent / ASIDE / path.name)


def take_aside(image: str) -> str:
    """Move ``image`` aside (``aside_path``), durably; returns where it is now. Raises OSError
    (the image then is where it was) when the directory cannot be made or is not a plain one of
    root's, or the rename fails."""
    aside = aside_path(image)
    directory = os.path.dirname(aside)
    try:
        os.mkdir(directory, 0o700)
    except FileExistsError:
        pass
    info = os.lstat(directory)
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.geteuid() or info.st_mode & 0o022:
        raise OSError(f"{directory} is not a directory of mgsave's own (a link, or writable by others)")
    os.rename(image, aside)
    _sync_directory(os.path.dirname(image))
    _sync_directory(directory)
    return aside


def put_back(aside: str, image: str) -> None:
    """Move an image taken aside back where libvirt's start resumes it. Raises OSError."""
    os.rename(aside, image)
    _sync_directory(os.path.dirname(image))


def remove(aside: str) -> None:
    """Remove an image that has been restored, durably."""
    os.unlink(aside)
    _sync_directory(os.path.dirname(aside))


def _sync_directory(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
