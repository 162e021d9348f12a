"""Watching running saves: systemd's status, a live line on a terminal, and aborting hung saves.

The journal gets one line per event (a save begun, ended, aborted), never a line per second:
the progress of a save (percent, rate, time left) is on the terminal's one live line
(``console.live``, only when standard error is a terminal), in ``STATUS=``, and in the log at
debug level. ``STATUS=``'s counts never go backwards, also across the rounds over guests
started during the pass (a later round's counts go on from the earlier rounds').
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass

from libmgsave import console, notify, units
from libmgsave.budget import Budget
from libmgsave.errors import HypervisorError
from libmgsave.events import EventKind, Events, GuestEvent
from libmgsave.execute.waiting import Waits
from libmgsave.hypervisor import Guest, JobProgress
from libmgsave.plan import GuestPlan

PROGRESS_EVERY = 3.0  # seconds between progress lines for a running save
PROGRESS_POLL = 1.0  # how often running saves are looked at (the first line comes after this)
STALL_LIMIT = 60.0  # a save with no progress for this long, past the deadline, is aborted


@dataclass
class _Watched:
    """One running save. Changed only under ``SaveProgress._lock``."""

    guest: Guest
    plan: GuestPlan
    image: str | None  # the file the save writes, when its path is known
    started: float
    timeout_at: float
    last_log: float
    last_bytes: int = -1
    last_change: float = 0.0
    last_seen: int | None = None
    aborted: str | None = None  # why it was aborted
    text: str = ""  # its part of the live line: "db1 45% 120 MiB/s 12 s left"



class _Ticker:
    """A context whose ``_loop`` runs in a thread (it returns once ``_stop`` is set); leaving it
    stops the thread, calls ``_stopped`` and clears the terminal's live line."""

    def __init__(self, name: str):
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)

    def _loop(self) -> None:
        raise NotImplementedError

    def _stopped(self) -> None:
        pass

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self._stopped()
        console.clear_live()

class SaveProgress(_Ticker):
    """Watches running saves from a thread of its own while the shutdown pass runs."""

    def __init__(self, total: int, budget: Budget, waits: Waits, events: Events, *, settled_before: int = 0):
        """``total`` saves to watch; ``settled_before``: the saves of the pass's earlier rounds
        (guests started meanwhile come in later rounds), counted as done and in all."""
        self.total = settled_before + total
        self.done = settled_before
        self.budget = budget
        self.waits = waits
        self.events = events  # the pass's: a save aborted is said there
        self._running: dict[str, _Watched] = {}
        self._lock = threading.Lock()
        _Ticker.__init__(self, "mgsave-progress")

    def begin(self, guest: Guest, plan: GuestPlan, timeout: float, image: str | None = None) -> None:
        """Watch a save that writes ``image`` (None when its path is unknown)."""
        now = time.monotonic()
        with self._lock:
            self._running[guest.uuid] = _Watched(guest, plan, image, started=now, timeout_at=now + timeout,
                                                 last_log=now - PROGRESS_EVERY + PROGRESS_POLL, last_change=now)
        self._status()

    def end(self, guest: Guest) -> tuple[int | None, str | None]:
        """Stop watching; returns (bytes seen, why it was aborted or None)."""
        with self._lock:
            watched = self._running.pop(guest.uuid, None)
            self.done += 1
        self._status()
        if watched is None:
            return None, None
        return watched.last_seen, watched.aborted

    def _status(self) -> None:
        # Built and sent under the lock: two saves ending at once must not send their counts
        # in the wrong order (STATUS= would go backwards).
        with self._lock:
            parts = [w.text or w.guest.name for w in self._running.values()]
            text = f"saving {min(self.done, self.total)}/{self.total}" + (": " + ", ".join(parts) if parts else "")
            waits = self.waits.describe()
            text += f"; waiting: {waits}" if waits else ""
            notify.status(text)
            if parts or waits:
                console.live(text)
            else:
                console.clear_live()

    def _loop(self) -> None:
        while not self._stop.wait(PROGRESS_POLL):
            with self._lock:
                watched = list(self._running.values())
            moving = False
            for save in watched:
                moving |= self._check(save)
            if watched or self.waits.describe():
                self._status()
            if moving:
                # A save that makes progress is never killed by systemd's stop timeout.
                notify.extend_timeout(PROGRESS_POLL * 10 + 30)

    @staticmethod
    def _measure(save: _Watched) -> JobProgress | None:
        """Bytes written so far: the image's size on disk when its path is known (that never
        blocks, and is what reaches the disk), else libvirt's job statistics, which block
        while libvirt holds the guest's job lock and count memory handed to the writer."""
        if save.image:
            written = file_size(save.image) or 0
            return JobProgress(written, max(written, save.plan.guest.memory_bytes))
        try:
            return save.guest.job_progress()
        except HypervisorError:
            return None

    def _check(self, save: _Watched) -> bool:
        """Look at one save (measured without the lock: that may block); True when it moved."""
        progress = self._measure(save)
        now = time.monotonic()
        with self._lock:
            if self._running.get(save.guest.uuid) is not save:
                return False  # it ended while we looked
            moving = self._record(save, progress, now)
            abort = self._abort_reason(save, now)
            if abort:
                save.aborted = abort
        if abort:
            self.events.send(GuestEvent(EventKind.SAVE_ABORTING, save.plan.guest, why=abort))
            try:
                save.guest.abort_job()
            except HypervisorError as error:
                self.events.send(GuestEvent(EventKind.SAVE_ABORT_FAILED, save.plan.guest, why=error.message))
        return moving

    def _record(self, save: _Watched, progress: JobProgress | None, now: float) -> bool:
        if progress is None:
            return False
        moving = progress.processed > save.last_bytes
        if moving:
            save.last_bytes = progress.processed
            save.last_change = now
        save.last_seen = progress.processed
        how_far = progress_text(progress, now - save.started)
        save.text = f"{save.guest.name} {how_far}"
        if now - save.last_log >= PROGRESS_EVERY - 0.05:
            save.last_log = now
            self.events.send(GuestEvent(EventKind.SAVE_PROGRESS, save.plan.guest, what=how_far,
                                        seconds=now - save.started, bytes=progress.processed))
        return moving

    def _abort_reason(self, save: _Watched, now: float) -> str | None:
        if save.aborted is not None:
            return None
        if now > save.timeout_at:
            return "save_timeout reached"
        if self.budget.overdue() and now - save.last_change > STALL_LIMIT:
            return f"past the shutdown deadline with no progress for {STALL_LIMIT:.0f} s"
        return None


class LiveWaits(_Ticker):
    """While the boot pass runs (no save to watch): every second, the waits (``execute.waiting``)
    after ``counts()`` ("starting 3/10") on the terminal's live line and in ``STATUS=``."""

    def __init__(self, counts, waits: Waits):
        self._counts = counts
        self._waits = waits
        _Ticker.__init__(self, "mgsave-waits")

    def _loop(self) -> None:
        shown = False
        while not self._stop.wait(PROGRESS_POLL):
            waits = self._waits.describe()
            if waits:
                text = f"{self._counts()}; waiting: {waits}"
                notify.status(text)
                console.live(text)
            elif shown:
                console.clear_live()
            shown = bool(waits)


def progress_text(progress: JobProgress, seconds: float) -> str:
    """``45% 120 MiB/s 12 s left``: how far, how fast, and how long still at that rate."""
    if progress.fraction is None:
        return units.size(progress.processed)
    text = f"{progress.fraction * 100:.0f}%"
    if seconds > 0 and progress.processed > 0:
        rate = progress.processed / seconds
        text += f" {units.rate(rate)}"
        if progress.total and progress.total > progress.processed:
            text += f" {units.seconds((progress.total - progress.processed) / rate)} left"
    return text


def mb(n: float | None) -> str:
    """Bytes for a log line, in the binary units every text uses."""
    return units.size(n, none="?")


def file_size(path: str | None) -> int | None:
    """The bytes a save wrote to ``path``: a sparse image (saved with channels) is as long as
    the guest's memory, holes included, so what it takes on disk counts when that is less."""
    if not path:
        return None
    try:
        st = os.stat(path)
    except OSError:
        return None
    return min(st.st_size, st.st_blocks * 512) if st.st_blocks else st.st_size
