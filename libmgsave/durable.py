"""A saved image flushed to stable storage before the record says saved.

libvirt reports a save done once QEMU has written the image, not once it is on disk: without
``bypass_cache``, gigabytes of it can still sit in the page cache when the power goes, and a
guest whose image is torn cannot resume. ``flush_image`` asks the kernel to write the image's
data out (``fdatasync`` of the file) in a worker thread, and waits for it no longer than the
pass can give: a flush that has not finished by then goes on in the background (the kernel
keeps writing) while the pass moves on, and the guest counts as saved with a message saying its
image was not yet known to be on disk.

``fdatasync`` of the one file was chosen over ``syncfs``: it writes only that image (a
``syncfs`` also waits for every other writer on the file system, unbounded on a busy host), and
the pass flushes each image as its save ends, in parallel with the saves still running.
"""

from __future__ import annotations

import os
import stat
import threading
import time
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Flush:
    """How the flush of one image went."""

    seconds: float  # how long the pass waited for it
    done: bool  # the image's data is on stable storage
    error: str | None = None  # why it could not be flushed (the file could not be opened, EIO...)


def flush_image(path: str | Path, wait: float) -> Flush:
    """Flush the image at ``path`` (a regular file, never followed through a link), waiting at
    most ``wait`` seconds. Never raises."""
    started = time.monotonic()
    outcome: list[str | None] = []

    def worker() -> None:
        try:
            _fdatasync(Path(path))
            outcome.append(None)
        except OSError as error:
            outcome.append(f"{error.strerror or error}: {path}")

    thread = threading.Thread(target=worker, name=f"flush {Path(path).name}", daemon=True)
    thread.start()
    thread.join(max(0.0, wait))
    seconds = time.monotonic() - started
    if not outcome:
        return Flush(seconds, False)
    return Flush(seconds, outcome[0] is None, outcome[0])


def _fdatasync(path: Path) -> None:
    """``fdatasync`` of the regular file ``path``, opened read-only relative to its directory:
    a link put in its place is not followed, a FIFO does not block the open."""
    dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fd = os.open(path.name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dir_fd)
    finally:
        os.close(dir_fd)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(0, "not a regular file", str(path))
        os.fdatasync(fd)
    finally:
        os.close(fd)
