"""Peer hosts: every connection to one, and every question asked of one, within a bound."""

from __future__ import annotations

import threading
import time

import libvirt

from libmgsave import interrupt
from libmgsave.errors import HypervisorUnavailable
from libmgsave.hypervisor.host import Host
from libmgsave.hypervisor.translate import translate_error


# How long a peer host has to answer: a connection, or a connection and a few questions.
# libvirt's connect has no timeout of its own: to an address that swallows packets it lasts as
# long as the kernel's TCP connect (about 130 s with Linux's 6 SYN retries), and a question on
# a connection whose packets start being dropped waits for TCP's retransmissions (minutes).
PEER_TIMEOUT = 15.0


def open_peer(uri: str, *, timeout: float | None = None) -> Host:
    """Connect to a peer host, giving up after ``timeout`` seconds (by default ``PEER_TIMEOUT``)
    or at a stop request. Every connection to a peer goes through here or ``ask_peer``. Raises
    HypervisorUnavailable when the peer did not answer in time or refused, interrupt.Interrupted
    when the pass was asked to stop meanwhile."""
    return _within(timeout, f"connecting to {uri}", lambda: Host.open(uri), Host.close, stoppable=True)


def ask_peer(uri: str, question, *, timeout: float | None = None, stoppable: bool = True):
    """``question(host)`` on a new connection to the peer, closed afterwards: the connect and the
    question within ``timeout`` seconds together. Raises as ``open_peer`` (Interrupted only when
    ``stoppable``: an answer the pass must have before it goes on waits out its bound), and
    whatever ``question`` raises."""
    def connect_and_ask():
        host = Host.open(uri)
        try:
            return question(host)
        finally:
            host.close()
    return _within(timeout, f"asking {uri}", connect_and_ask, stoppable=stoppable)


def _within(timeout: float | None, doing: str, work, discard=None, *, stoppable: bool):
    """``work()`` in a worker thread, waited for at most ``timeout`` seconds. Past that the worker
    is left to end on its own (a daemon thread: it never holds up the exit), and what it returns
    then is given to ``discard``: a connection that comes too late is closed, not leaked."""
    timeout = PEER_TIMEOUT if timeout is None else timeout
    box: dict = {}
    done = threading.Event()
    lock = threading.Lock()

    def run() -> None:
        try:
            value = work()
        except BaseException as error:  # handed to the waiting thread, raised there
            value, box["error"] = None, error
        with lock:
            late = box.setdefault("late", False)
            box["value"] = value
        done.set()
        if late and discard is not None and value is not None:
            discard(value)

    threading.Thread(target=run, name=f"peer: {doing}", daemon=True).start()
    give_up_at = time.monotonic() + timeout
    while not done.wait(interrupt.wait_bound(min(0.2, give_up_at - time.monotonic()))):
        if (stoppable and interrupt.requested()) or time.monotonic() >= give_up_at:
            break
    with lock:
        finished = "value" in box
        box.setdefault("late", True)
    if not finished:
        if stoppable:
            interrupt.check()
        raise HypervisorUnavailable(f"{doing}: no answer within {timeout:g} s",
                                    hint="is the peer up, and its address reachable from here?")
    if "error" in box:
        raise box["error"]
    return box["value"]


def guest_names(uri: str, *, timeout: float) -> list[str]:
    """The names of the guests on ``uri``, over a read-only connection (which any user may open
    to the local daemons), within ``timeout`` seconds: for the shell's completion. Raises
    HypervisorError when it cannot be asked."""
    def names() -> list[str]:
        try:
            conn = libvirt.openReadOnly(uri)
        except libvirt.libvirtError as error:
            raise translate_error(error, f"connecting to {uri}") from None
        try:
            return sorted(domain.name() for domain in conn.listAllDomains())
        except libvirt.libvirtError as error:
            raise translate_error(error, f"listing the guests on {uri}") from None
        finally:
            conn.close()
    return _within(timeout, f"listing the guests on {uri}", names, stoppable=False)
