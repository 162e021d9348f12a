"""One pass at a time: an flock on ``<state dir>/lock``.

The kernel drops an flock when its holder dies, so a killed pass never leaves a stale lock.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import stat
import time
from contextlib import contextmanager
from pathlib import Path

from libmgsave import interrupt
from libmgsave.errors import LockBusy

log = logging.getLogger("mgsave")


@contextmanager
def pass_lock(state_dir: Path, what: str, *, wait: float):
    """Hold the pass lock for the ``with`` body, waiting up to ``wait`` seconds for it.

    Raises LockBusy, naming the holder, when it is still taken after ``wait`` seconds. Yields
    True when the lock is held, False when the lock file could not be created or locked at all
    (the state directory is read-only, full, or has a file in its way): the pass then goes on
    without it, logged as an error, because mgsave's own bookkeeping must never be the reason
    a guest was not saved.
    """
    path = state_dir / "lock"
    try:
        state_dir.mkdir(parents=True, exist_ok=True)
        # Never through a symlink, nor on anything but a file of its own: the holder's name is
        # written into it, and that must not truncate a file someone linked here. Readable by
        # root alone: anyone who can open it can flock it, and so keep every pass waiting.
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, 0o600)
        _check_lock_file(path, fd)
    except OSError as error:
        log.error("cannot take the pass lock %s (%s): carrying on without the lock", path, error.strerror or error)
        yield False
        return
    try:
        give_up_at = time.monotonic() + wait
        locked = True
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= give_up_at:
                    holder = _read_holder(fd)
                    raise LockBusy(
                        f"another mgsave pass is running ({holder}); gave up waiting after {wait:g} s",
                        hint="wait for it to finish, or pass --wait SECONDS to wait longer",
                    ) from None
                interrupt.sleep(0.2)  # a pass stopped while it waits gives up at once
            except OSError as error:  # e.g. ENOLCK: the file system cannot lock at all
                log.error("cannot take the pass lock %s (%s): carrying on without the lock", path,
                          error.strerror or error)
                locked = False
                break
        if locked:
            try:
                os.ftruncate(fd, 0)
                os.pwrite(fd, f"pid {os.getpid()}: {what}\n".encode(), 0)
            except OSError as error:
                log.warning("holding the pass lock, but cannot write who holds it into %s (%s)", path,
                            error.strerror or error)
        yield locked
    finally:
        os.close(fd)  # closing releases the flock


def _check_lock_file(path: Path, fd: int) -> None:
    info = os.fstat(fd)
    problem = None
    if not stat.S_ISREG(info.st_mode) or info.st_nlink != 1:
        problem = "not a regular file of its own (a device, a FIFO or a hard link)"
    elif info.st_uid not in (0, os.geteuid()):
        problem = f"owned by uid {info.st_uid}, who could hold it for ever"
    if problem:
        os.close(fd)
        raise OSError(errno.EPERM, problem, str(path))
    if info.st_mode & 0o077:
        os.fchmod(fd, 0o600)  # a lock file of an older mgsave was readable by all


def _read_holder(fd: int) -> str:
    try:
        text = os.pread(fd, 200, 0).decode(errors="replace").strip()
    except OSError:
        text = ""
    return text or "holder unknown"
