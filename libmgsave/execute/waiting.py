"""Who is waiting for what right now, for the live progress line and ``STATUS=``: a guest waiting
for the guests it is after says so, and for how long, while it waits (the record keeps the
waits themselves, as ``outcomes.Wait``). One ``Waits`` a pass, owned by its executor."""

from __future__ import annotations

import contextlib
import threading
import time

from libmgsave import units


class Waits:
    """The waits under way in one pass; its threads add and remove theirs."""

    def __init__(self):
        self._lock = threading.Lock()
        self._waiting: dict[str, tuple[str, float]] = {}  # guest name -> (what it waits for, since: monotonic)

    @contextlib.contextmanager
    def waiting(self, name: str, what: str):
        """``name`` waits for ``what`` (a few words) during the block."""
        with self._lock:
            self._waiting[name] = (what, time.monotonic())
        try:
            yield
        finally:
            with self._lock:
                self._waiting.pop(name, None)

    def describe(self, limit: int = 3) -> str:
        """``web-1 for db-1 (12 s), app-1 for db-1 (3 s) and 2 more``, the longest waits first; or ''."""
        now = time.monotonic()
        with self._lock:
            waits = sorted(self._waiting.items(), key=lambda item: item[1][1])
        parts = [f"{name} for {what} ({units.seconds(now - since)})" for name, (what, since) in waits[:limit]]
        more = f" and {len(waits) - limit} more" if len(waits) > limit else ""
        return ", ".join(parts) + more
