"""Running one piece of work per guest in plan order: order groups, dependencies, bounded slots.

Guests run in order groups (the plan's ``order``, already descending at shutdown); inside a
group they run in parallel, a guest waiting only for the guests named in its ``wait_for``.
The expensive part of a guest's work (a save, a start) takes a slot from a bounded pool, so
the plan's priority order is the order in which those begin. The order is computed once, by
``Schedule``, and used both to hand out threads and to rank slots.
"""

from __future__ import annotations

import collections
import contextlib
import heapq
import logging
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor

from libmgsave import interrupt
from libmgsave.errors import OperationTimeout
from libmgsave.execute.waiting import Waits
from libmgsave.outcomes import GuestResult, Outcome, Wait, WaitKind
from libmgsave.plan import GuestKey, GuestPlan, Plan

log = logging.getLogger("mgsave")

# Threads per order group: every guest of a group gets one (waiting on its dependencies costs
# nothing); the expensive part of its work is bounded by Slots, not by this.
MAX_WORKERS = 256


class Schedule:
    """The plan's active guests in the order they are handed to threads: order groups in plan
    order, and inside a group plan order except that a guest comes after every guest it waits
    for (so a guest waiting for another never holds the last free thread while the other is
    still queued behind it)."""

    def __init__(self, plan: Plan, waits: Waits | None = None):
        self.waits = waits or Waits()  # the pass's: who waits for whom, on the live line
        self.groups: list[list[GuestPlan]] = [dependencies_first(g) for g in group_by_order(plan.active)]
        self.queued: dict[GuestKey, float] = {}  # when each guest's turn came (time.time())
        # when the schedule began, for the guests of a later order group: they waited from then
        self.began: float | None = None
        self._later = {e.key for group in self.groups[1:] for e in group}

    @property
    def entries(self) -> list[GuestPlan]:
        return [entry for group in self.groups for entry in group]

    def slots(self, size: int, takes_slot: Callable[[GuestPlan], bool]) -> Slots:
        """Slots for the guests for which ``takes_slot`` is true, ranked in this schedule's order."""
        holders = [e for e in self.entries if takes_slot(e)]
        return Slots(size, ranks={e.key: i for i, e in enumerate(holders)},
                     expected=[e.key for e in holders if not e.wait_for], waits=self.waits)

    def waited_for_others(self, entry: GuestPlan, until: float) -> list[Wait]:
        """What a guest waited for before its own work, which began at ``until``: the earlier
        order groups (from the schedule's start to its group's), then the guests it is ``after``
        in its own group."""
        queued = self.queued.get(entry.key)
        if queued is None:
            return []
        later = self.began is not None and entry.key in self._later
        waits = [Wait(WaitKind.ORDER, self.began, queued)] if later else []
        return waits + ([Wait(WaitKind.AFTER, queued, until)] if entry.wait_for else [])

    def run(self, work: Callable[[GuestPlan, dict], GuestResult], max_workers: int | None = None) -> dict:
        """``work(entry, results of the guests it waits for)`` for every guest, group after
        group; returns the results by guest key. A bug in ``work`` fails that guest alone."""
        results: dict[GuestKey, GuestResult] = {}
        self.began = time.time()
        for group in self.groups:
            done = {e.key: threading.Event() for e in group}
            names = {e.key: e.guest.name for e in group}

            def task(entry: GuestPlan) -> None:
                self.queued[entry.key] = time.time()
                try:
                    _await(self.waits, entry, [done[key] for key in entry.wait_for if key in done],
                           [names[key] for key in entry.wait_for if key in done])
                    results[entry.key] = work(entry, {k: results.get(k) for k in entry.wait_for})
                except Exception as error:  # a bug must not take the other guests down with it
                    log.exception("%s: internal error", entry.guest.name)
                    results[entry.key] = GuestResult(entry, Outcome.FAILED, messages=[f"internal error: {error!r}"])
                finally:
                    done[entry.key].set()

            workers = min(len(group), max_workers or MAX_WORKERS)
            with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="mgsave") as pool:
                list(pool.map(task, group))
        return results


def _await(waits: Waits, entry: GuestPlan, events: list[threading.Event], names: list[str]) -> None:
    """Until the guests ``entry`` waits for are done; meanwhile the live line says so."""
    pending = [(event, name) for event, name in zip(events, names, strict=True) if not event.is_set()]
    if not pending:
        return
    with waits.waiting(entry.guest.name, ", ".join(name for _, name in pending)):
        for event, _ in pending:
            event.wait()


def group_by_order(entries: Iterable[GuestPlan]) -> list[list[GuestPlan]]:
    """Consecutive entries of the same ``order``, as groups."""
    groups: list[list[GuestPlan]] = []
    for entry in entries:
        if groups and groups[-1][0].order == entry.order:
            groups[-1].append(entry)
        else:
            groups.append([entry])
    return groups


def dependencies_first(group: Sequence[GuestPlan]) -> list[GuestPlan]:
    """The group in its order, except that a guest comes after every guest it waits for."""
    position = {e.key: i for i, e in enumerate(group)}
    waiting_on = {e.key: {k for k in e.wait_for if k in position} for e in group}
    dependents: dict = collections.defaultdict(list)
    for e in group:
        for k in waiting_on[e.key]:
            dependents[k].append(e.key)
    ready = [position[e.key] for e in group if not waiting_on[e.key]]
    heapq.heapify(ready)
    ordered = []
    while ready:
        entry = group[heapq.heappop(ready)]
        ordered.append(entry)
        for key in dependents[entry.key]:
            waiting_on[key].discard(entry.key)
            if not waiting_on[key]:
                heapq.heappush(ready, position[key])
    if len(ordered) != len(group):  # a cycle: the planner breaks them, so this is a bug
        raise AssertionError("dependency cycle left in the plan")
    return ordered


class Cancelled(Exception):
    """A holder's turn was cancelled while it waited (``Slots.cancel``): it no longer takes a slot."""


class Slots:
    """At most ``size`` holders at once.

    Holders are admitted lowest rank first (``ranks``: key -> position in the schedule; a key
    without a rank comes after the ranked ones, in the order it asked), and nobody is admitted
    ahead of an ``expected`` key (one that will ask within moments: it waits for no other guest)
    of lower rank until that key asks or is withdrawn. So saves begin in the plan's priority
    order however the threads that run them happen to be scheduled; otherwise a thread's first
    libvirt calls would decide, and under a tight deadline the top-priority guest could be the
    one left unsaved.

    A holder gives up waiting at its ``give_up_at`` (``OperationTimeout``), once the pass is
    asked to stop (``interrupt.Interrupted``), and once its turn is cancelled (``Cancelled``: a
    re-plan moved its guest to a step that takes no slot).
    """

    def __init__(self, size: int, ranks: dict | None = None, expected=(), waits: Waits | None = None):
        self._free = max(1, size)
        self._waits = waits or Waits()  # where a holder waiting for its turn says so
        self._cond = threading.Condition()
        self._ranks = dict(ranks or {})
        self._waiting: list[tuple[int, int]] = []  # heap of (rank, ticket number)
        self._tickets = 0
        self._expected = {key for key in expected if key in self._ranks}
        self._expected_ranks = sorted(self._ranks[key] for key in self._expected)  # ascending
        self._gone_ranks: set[int] = set()  # expected ranks withdrawn or arrived (lazy deletion)
        self._cancelled: set = set()  # keys that no longer take a slot, waiting or not
        interrupt.on_stop(self._wake_all)

    def _wake_all(self) -> None:
        with self._cond:
            self._cond.notify_all()

    def withdraw(self, key) -> None:
        """``key`` will not ask (any more): stop keeping its turn."""
        with self._cond:
            self._arrived(key)

    def cancel(self, key) -> None:
        """``key`` no longer takes a slot: a wait of it under way ends with ``Cancelled``, and so
        does a later one; later holders stop keeping its turn."""
        with self._cond:
            self._cancelled.add(key)
            self._arrived(key)
            self._cond.notify_all()

    def _arrived(self, key) -> None:
        if key in self._expected:
            self._expected.discard(key)
            self._gone_ranks.add(self._ranks[key])
            self._cond.notify_all()

    def _lowest_expected(self) -> float:
        while self._expected_ranks and self._expected_ranks[0] in self._gone_ranks:
            self._expected_ranks.pop(0)
        return self._expected_ranks[0] if self._expected_ranks else float("inf")

    @contextlib.contextmanager
    def held(self, key=None, *, give_up_at: float | None = None, late: str = "gave up waiting for a slot",
             who: str | None = None, what: str = "a slot"):
        """Hold a slot for the block; ``OperationTimeout(late)`` when none is free by ``give_up_at``
        (a ``time.monotonic()`` time). ``who`` (a guest's name) waits for ``what`` on the live line."""
        with self._cond:
            self._arrived(key)
            rank = self._ranks.get(key, len(self._ranks))
            self._tickets += 1
            ticket = (rank, self._tickets)
            heapq.heappush(self._waiting, ticket)

            def admitted() -> bool:
                return self._free > 0 and self._waiting[0] is ticket and self._lowest_expected() > rank

            with self._waits.waiting(who, what) if who and not admitted() else contextlib.nullcontext():
                while not (admitted() or interrupt.requested() or key in self._cancelled):
                    timeout = None if give_up_at is None else give_up_at - time.monotonic()
                    if timeout is not None and timeout <= 0:
                        break
                    self._cond.wait(None if timeout is None else interrupt.wait_bound(timeout))
            if interrupt.requested() or key in self._cancelled or not admitted():
                self._waiting.remove(ticket)
                heapq.heapify(self._waiting)
                self._cond.notify_all()
                if interrupt.requested():
                    raise interrupt.Interrupted()
                if key in self._cancelled:
                    raise Cancelled()
                raise OperationTimeout(late)
            heapq.heappop(self._waiting)
            self._free -= 1
            self._cond.notify_all()
        try:
            yield
        finally:
            with self._cond:
                self._free += 1
                self._cond.notify_all()
