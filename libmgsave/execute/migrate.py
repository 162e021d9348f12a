"""Carrying out one migration: begun only when it can end in time, run in a worker thread while
this one watches its job, aborted past its timeout or when the pass is asked to stop.

libvirt's migration call blocks until the migration ends, and a stop request must not wait
for that: the call runs in a worker; this thread logs its progress, aborts it when due
(``virDomainAbortJob``: the guest keeps running here) and then waits for the worker to end.
With peer-to-peer migration, ``PERSIST_DEST`` and ``UNDEFINE_SOURCE`` the guest is defined on
exactly one side at every moment; after any failure, where it runs is looked up, not assumed.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from libmgsave import interrupt, notify
from libmgsave.budget import Budget
from libmgsave.errors import GuestGone, HypervisorError, OperationRefused, OperationTimeout
from libmgsave.events import EventKind, Events
from libmgsave.execute.steps import add_step
from libmgsave.hypervisor import Guest, ask_peer, open_peer
from libmgsave.outcomes import GuestResult, Outcome, StepResult
from libmgsave.plan import Action, GuestPlan
from libmgsave.plan.peers import DEFAULT_MIGRATION_THROUGHPUT, migration_seconds
from libmgsave.policy import DiskMode

WATCH_EVERY = 0.5  # how often a running migration's job is looked at
PROGRESS_EVERY = 5.0  # seconds between two progress lines of one migration
ABORT_GRACE = 60.0  # how long an aborted migration may take to wind down


class LinkRate:
    """The migration rate measured in this pass (bytes/s, over the migrations that ended), or
    the default before any did. Shared by the pass's threads."""

    def __init__(self, default: float = DEFAULT_MIGRATION_THROUGHPUT):
        self._default = default
        self._bytes = 0.0
        self._seconds = 0.0
        self._lock = threading.Lock()

    def current(self) -> float:
        with self._lock:
            return self._bytes / self._seconds if self._seconds > 0 else self._default

    def measured(self, nbytes: int, seconds: float) -> None:
        with self._lock:
            self._bytes += nbytes
            self._seconds += max(seconds, 0.001)


def migrate(guest: Guest, entry: GuestPlan, *, budget: Budget, rate: LinkRate, say: Callable[..., None],
            to: str | None = None) -> int:
    """Migrate the guest to ``to`` (by default its plan's peer); returns the bytes its memory had. Raises
    OperationTimeout when it cannot end in time (not begun, or aborted: the guest runs on
    here), interrupt.Interrupted when the pass was stopped meanwhile (aborted the same way),
    HypervisorError when libvirt refused or failed it. ``say(kind, **facts)``: an event of the guest's."""
    settings = entry.effective.settings.migrate
    to = to or entry.peer
    size = entry.guest.memory_bytes
    estimate = migration_seconds(size, settings, rate.current())
    left = budget.left_for_steps()
    if not budget.may_begin(estimate):
        raise OperationTimeout(f"not begun: it would take about {estimate:.0f} s and only {max(left, 0):.0f} s "
                               f"are left before the deadline")
    give_up_after = min(settings.timeout, left)
    say(EventKind.MIGRATION_BEGUN, peer=to, bytes=size, seconds=estimate)
    began = time.monotonic()
    worker = _Worker(guest, to, settings.live, settings.bandwidth, settings.disks is DiskMode.COPY)
    worker.start()
    cut_short = _watch(worker, guest, began + give_up_after, say)
    if cut_short is not None:
        _abort(worker, guest, say)
        if cut_short == "stop":
            say(EventKind.MIGRATION_STOPPED)
            raise interrupt.Interrupted()
        raise OperationTimeout(f"aborted after {give_up_after:.0f} s (its timeout, or the deadline): "
                               f"it runs on here")
    if worker.error is not None:
        raise worker.error
    seconds = time.monotonic() - began
    rate.measured(size, seconds)
    say(EventKind.MIGRATED, peer=to, seconds=seconds)
    return size


class _Worker(threading.Thread):
    def __init__(self, guest: Guest, peer: str, live: bool, bandwidth: int | None, copy_disks: bool):
        super().__init__(name=f"migrate-{guest.name}", daemon=True)
        self.guest, self.peer = guest, peer
        self.options = dict(live=live, bandwidth_mib=bandwidth, copy_disks=copy_disks)
        self.error: HypervisorError | None = None

    def run(self) -> None:
        try:
            self.guest.migrate_to(self.peer, **self.options)
        except HypervisorError as error:
            self.error = error
        except Exception as error:  # a bug must not leave the watcher waiting for ever
            self.error = OperationRefused(f"{self.guest.name}: migrating: internal error {error!r}")


def _watch(worker: _Worker, guest: Guest, give_up_at: float, say: Callable[..., None]) -> str | None:
    """Wait for the worker, logging progress; "stop" or "late" when the migration must be aborted."""
    next_line = time.monotonic() + PROGRESS_EVERY
    seen = -1  # bytes the job had sent at the last progress line
    while worker.is_alive():
        worker.join(WATCH_EVERY)
        if not worker.is_alive():
            break
        if interrupt.requested():
            return "stop"
        if time.monotonic() >= give_up_at:
            return "late"
        if time.monotonic() >= next_line:
            next_line += PROGRESS_EVERY
            seen = _progress_line(guest, worker.peer, seen, say)
    return None


def _progress_line(guest: Guest, to: str, seen: int, say: Callable[..., None]) -> int:
    """Log the job's progress; while it moves, systemd's stop timeout is pushed back, as for a
    save. Returns the bytes sent so far."""
    try:
        progress = guest.job_progress()
    except HypervisorError:
        return seen
    if progress is None:
        return seen
    if progress.processed > seen:
        notify.extend_timeout(PROGRESS_EVERY * 2 + 30)
    if progress.fraction is not None:
        say(EventKind.MIGRATION_PROGRESS, peer=to, number=100 * progress.fraction, bytes=progress.total)
    return progress.processed


def _abort(worker: _Worker, guest: Guest, say: Callable[..., None]) -> None:
    try:
        guest.abort_job()
    except HypervisorError as error:  # it may have ended just now: where it runs is looked up after
        say(EventKind.MIGRATION_ABORT_FAILED, why=error.message)
    worker.join(ABORT_GRACE)


def bring_home(entry: GuestPlan, result: GuestResult, events: Events) -> Outcome:
    """Migrate a guest the last shutdown sent to ``entry.peer`` back to this host (the policy's
    ``migrate.home``, as the peer reaches it). When the peer does not answer or the migration
    fails, the guest stays there (it runs on there: nothing is lost) and the result says so."""
    started = time.time()
    try:
        host = open_peer(entry.peer)
    except HypervisorError as error:
        return _stays(events, result, f"{entry.peer} does not answer ({error.message})")
    try:
        guest = host.guest(entry.guest.uuid)
        if not guest.is_active():
            return _stays(events, result, f"it is not running on {entry.peer}")
        size = migrate(guest, entry, budget=Budget.unbounded(), rate=LinkRate(), say=events.to(result),
                       to=entry.effective.settings.migrate.home)
    except GuestGone:
        events.say(result, EventKind.NOT_ON_PEER, peer=entry.peer, outcome=Outcome.VANISHED)
        return Outcome.VANISHED
    except HypervisorError as error:
        add_step(events, result, StepResult(Action.RETURN, False, started, time.time(), error=error.message))
        return _stays(events, result, "its migration home failed")
    finally:
        host.close()
    add_step(events, result, StepResult(Action.RETURN, True, started, time.time(), bytes=size))
    return Outcome.RETURNED


def _stays(events: Events, result: GuestResult, why: str) -> Outcome:
    result.peer = result.plan.peer
    events.say(result, EventKind.STAYS_ON_PEER, peer=result.plan.peer, why=why, outcome=Outcome.ON_PEER)
    return Outcome.ON_PEER


def runs_on(uri: str, uuid: str) -> bool | None:
    """Whether the guest runs, persistent, on ``uri``: True, False, or None when that host does
    not answer (in time). Opens its own connection: a peer is not one of the pass's connections."""
    def ask(host) -> bool:
        try:
            guest = host.guest(uuid)
            return guest.is_active() and guest.is_persistent()
        except GuestGone:
            return False

    try:
        return ask_peer(uri, ask, stoppable=False)  # where the guest is must be known, even when stopping
    except HypervisorError:
        return None
