"""A pass asked to stop (SIGTERM, SIGINT): start nothing new, finish what is under way.

systemd stops the boot pass with SIGTERM when the host shuts down while it runs, and then
runs the shutdown pass; an admin stops a pass by hand with Ctrl-C. Either way the pass must
not die half-way: it stops starting guests (a resume, a save or a shutdown request under way
is a libvirt job that goes on without us, so it is waited for), cancels its waits (for a
slot, a readiness check, ``start_delay``, a guest to shut down), writes its record, prints
its summary and exits ``128 + signal``. A second signal is only logged; the third one ends
the process at once (the default action), for an admin who really wants out.

The handlers only set an event. Threads that wait on a condition register a callback with
``on_stop`` so they can be woken: a signal handler must not take their locks itself.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable

log = logging.getLogger("mgsave")

_requested = threading.Event()
_callbacks: list[Callable[[], None]] = []
_callbacks_lock = threading.Lock()
_signal: signal.Signals | None = None
_count = 0
_watcher: threading.Thread | None = None


class Interrupted(Exception):
    """Raised by a wait that was cut short because the pass was asked to stop."""


def install() -> None:
    """Catch SIGTERM and SIGINT for the rest of the process. Only the main thread can: called
    from another (a pass run inside a larger program), the signals are left as they are."""
    if threading.current_thread() is not threading.main_thread():
        return
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, _handle)
    _ensure_watcher()


def _ensure_watcher() -> None:
    global _watcher
    if _watcher is None or not _watcher.is_alive():
        _watcher = threading.Thread(target=_run_callbacks, name="mgsave-stop", daemon=True)
        _watcher.start()


def _handle(signum, _frame) -> None:
    global _signal, _count
    _count += 1
    if _count == 1:
        _signal = signal.Signals(signum)
        _requested.set()
        return
    log.warning("%s again: still finishing the steps under way (once more to quit at once, "
                "leaving them to libvirt)", signal.Signals(signum).name)
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, signal.SIG_DFL)


def _run_callbacks() -> None:
    _requested.wait()
    log.warning("stop requested (%s): starting nothing new, finishing the steps under way",
                _signal.name if _signal else "request")
    with _callbacks_lock:
        callbacks = list(_callbacks)
    for callback in callbacks:
        callback()


def request(signum: signal.Signals = signal.SIGTERM) -> None:
    """Ask the pass to stop as the signal ``signum`` would (for callers inside the process)."""
    _ensure_watcher()
    _handle(signum, None)


def requested() -> bool:
    return _requested.is_set()


def signal_received() -> signal.Signals | None:
    """The signal that asked the pass to stop, or None."""
    return _signal if _requested.is_set() else None


def exit_code() -> int | None:
    """128 + the signal's number once a stop was requested (the shell's convention), else None."""
    return 128 + int(_signal) if _requested.is_set() and _signal is not None else None


def sleep(seconds: float) -> None:
    """Sleep ``seconds``; raises Interrupted at once when a stop is (or gets) requested."""
    if _requested.wait(wait_bound(seconds)):
        raise Interrupted()


def wait_bound(seconds: float) -> float:
    """``seconds`` as a wait can take it: not negative, and not beyond what threading's waits
    accept (they raise OverflowError). Durations are validated far below this; this is the guard
    for a value that is not one (a time computed from a record, a clock jump)."""
    if seconds != seconds:  # NaN
        return 0.0
    return min(max(0.0, seconds), threading.TIMEOUT_MAX)


def check() -> None:
    """Raise Interrupted when a stop was requested."""
    if _requested.is_set():
        raise Interrupted()


def on_stop(callback: Callable[[], None]) -> None:
    """Call ``callback`` (from a helper thread) once a stop is requested; at once if it was."""
    with _callbacks_lock:
        _callbacks.append(callback)
    if _requested.is_set():
        callback()


def reset() -> None:
    """Forget a stop request (tests run several passes in one process)."""
    global _signal, _count
    _requested.clear()
    _signal = None
    _count = 0
    with _callbacks_lock:
        _callbacks.clear()
