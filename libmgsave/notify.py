"""``sd_notify`` for the pass: status text, stop-timeout extensions, readiness.

The messages are written straight to ``$NOTIFY_SOCKET`` (an AF_UNIX datagram socket, a
leading ``@`` meaning the abstract namespace), so systemd-python is not needed. Every
function is a no-op returning False when there is no socket (not started by systemd, or
the unit does not accept notifications) and never raises: a lost status line must not
fail a pass.
"""

from __future__ import annotations

import logging
import os
import socket

from libmgsave import untrusted

log = logging.getLogger("mgsave.notify")


def socket_address(value: str | None) -> str | None:
    """The ``connect()`` address for a ``NOTIFY_SOCKET`` value, or None if unusable."""
    if not value:
        return None
    if value.startswith("@"):
        return "\0" + value[1:]
    if value.startswith("/"):
        return value
    return None  # e.g. vsock:...; not something a host service is given


def send(message: str) -> bool:
    """Send one notification (``KEY=value`` lines); True if it was handed to the socket."""
    address = socket_address(os.environ.get("NOTIFY_SOCKET"))
    if address is None:
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall(message.encode("utf-8", "replace"))
    except OSError as error:
        log.debug("could not notify systemd (%s): %s", message.split("\n", 1)[0], error)
        return False
    return True


def status(text: str) -> bool:
    """Show ``text`` as the unit's status line (``systemctl status mgsave``)."""
    # One line, and nothing a guest's name could carry: a newline would be another assignment.
    return send("STATUS=" + untrusted.message(" ".join(text.splitlines())))


def extend_timeout(seconds: float) -> bool:
    """Ask for ``seconds`` more before systemd's start/stop timeout fires (from now on).

    systemd applies it only if it exceeds what is left; send it again before it runs out.
    """
    usec = max(1, int(seconds * 1_000_000))
    return send(f"EXTEND_TIMEOUT_USEC={usec}")


def ready() -> bool:
    return send("READY=1")


def stopping() -> bool:
    return send("STOPPING=1")
