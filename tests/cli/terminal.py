"""Standard output on a real terminal (a pseudo-terminal of the given size), for the CLI run
in-process: what a table shows on a terminal, where it may be shortened, is not what it shows
in a pipe, where it never is."""

from __future__ import annotations

import contextlib
import fcntl
import io
import os
import pty
import struct
import sys
import termios
import threading


@contextlib.contextmanager
def terminal(columns: int = 80, rows: int = 50):
    """``sys.stdout`` is a terminal ``columns`` wide in the block; yields a list that holds, once
    the block ends, the lines written to it."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, columns, 0, 0))
    attrs = termios.tcgetattr(slave)
    attrs[1] &= ~termios.ONLCR  # "\n" as written, not "\r\n"
    termios.tcsetattr(slave, termios.TCSANOW, attrs)
    chunks: list[bytes] = []

    def drain() -> None:  # a terminal's buffer is small: read it as it fills
        while True:
            try:
                data = os.read(master, 65536)
            except OSError:  # the other end closed
                return
            if not data:
                return
            chunks.append(data)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    saved = sys.stdout
    sys.stdout = io.TextIOWrapper(io.FileIO(slave, "w", closefd=True), encoding="utf-8", line_buffering=True)
    lines: list[str] = []
    try:
        yield lines
    finally:
        sys.stdout.flush()
        sys.stdout.close()
        sys.stdout = saved
        reader.join(timeout=30)
        os.close(master)
        lines.extend(b"".join(chunks).decode("utf-8").splitlines())
