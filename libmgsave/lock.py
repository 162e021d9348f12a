"""One pass at a time: an flock on ``<state dir>/lock``.

The kernel drops an flock when its holder dies, so a killed pass never leaves a stale lock.
"""

from __future__ import annotations

import fcntl
import os
import time
from contextlib import contextmanager
from pathlib import Path

from libmgsave.errors import LockBusy


@contextmanager
def pass_lock(state_dir: Path, what: str, *, wait: float):
    """Hold the pass lock for the ``with`` body, waiting up to ``wait`` seconds for it.

    Raises LockBusy, naming the holder, when it is still taken after ``wait`` seconds.
    """
    state_dir.mkdir(parents=True, exist_ok=True)
    path = state_dir / "lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        give_up_at = time.monotonic() + wait
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
                time.sleep(0.2)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()}: {what}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # closing releases the flock


def _read_holder(fd: int) -> str:
    try:
        text = os.pread(fd, 200, 0).decode(errors="replace").strip()
    except OSError:
        text = ""
    return text or "holder unknown"
