"""Carrying out a plan: the shutdown and boot passes.

Guests run in order groups (ascending at boot, descending at shutdown); inside a group they
run in parallel, a guest waiting only for the guests named in its plan's ``wait_for``. Saves
and starts take a slot from a bounded, first-come pool, so the plan's priority order is the
order in which they begin. One guest's failure is recorded in its result and never stops the
others. With ``dry_run`` nothing is executed: each guest's result just repeats its plan.
"""

from __future__ import annotations

import collections
import contextlib
import heapq
import logging
import os
import shutil
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from libmgsave import interrupt, journal, notify, state
from libmgsave.errors import GuestGone, HypervisorError, HypervisorUnavailable, OperationRefused, OperationTimeout
from libmgsave.hypervisor import Guest, Host, JobProgress, managed_image_path, saved_image_is_partial
from libmgsave.inventory import GuestState
from libmgsave.outcomes import GuestResult, Outcome, StepResult
from libmgsave.plan import DEADLINE_RESERVE, Action, GuestPlan, Plan
from libmgsave.policy import OnResumeFailure, ReadyKind

log = logging.getLogger("mgsave")

PROGRESS_EVERY = 3.0  # seconds between progress lines for a running save
PROGRESS_POLL = 1.0  # how often running saves are looked at (the first line comes after this)
STALL_LIMIT = 60.0  # a save with no progress for this long, past the deadline, is aborted
SHUTDOWN_POLL = 0.5

# The outcome of a shutdown step that went through.
OUTCOME_OF_STEP = {
    Action.SAVE: Outcome.SAVED,
    Action.SAVE_TO_FILE: Outcome.SAVED_TO_FILE,
    Action.SHUTDOWN: Outcome.SHUT_DOWN,
    Action.POWEROFF: Outcome.POWERED_OFF,
}

class Slots:
    """At most ``size`` holders at once; once the pass is asked to stop, a holder still waiting
    gets ``interrupt.Interrupted`` instead of a slot.

    Without ``ranks``, holders are admitted in the order they asked. With ``ranks`` (key ->
    position in the plan), the waiting holder of lowest rank goes first, and nobody is admitted
    ahead of an ``expected`` key (one that will ask within moments: it waits for no other guest)
    of lower rank until that key asks or is withdrawn. So saves begin in the plan's priority
    order however the threads that run them happen to be scheduled; before, a thread's first
    libvirt calls decided, and under a tight deadline the top-priority guest could be the one
    left unsaved.
    """

    def __init__(self, size: int, ranks: dict | None = None, expected=()):
        self._free = max(1, size)
        self._queue: collections.deque[object] = collections.deque()
        self._cond = threading.Condition()
        self._ranks = dict(ranks or {})
        self._waiting: list[tuple[int, int]] = []  # heap of (rank, ticket number)
        self._tickets = 0
        self._expected = {key for key in expected if key in self._ranks}
        self._expected_ranks = sorted(self._ranks[key] for key in self._expected)  # ascending
        self._gone_ranks: set[int] = set()  # expected ranks withdrawn or arrived (lazy deletion)
        interrupt.on_stop(self._wake_all)

    def _wake_all(self) -> None:
        with self._cond:
            self._cond.notify_all()

    def withdraw(self, key) -> None:
        """``key`` will not ask (any more): stop keeping its turn."""
        with self._cond:
            if key in self._expected:
                self._expected.discard(key)
                self._gone_ranks.add(self._ranks[key])
                self._cond.notify_all()

    def _lowest_expected(self) -> float:
        while self._expected_ranks and self._expected_ranks[0] in self._gone_ranks:
            self._expected_ranks.pop(0)
        return self._expected_ranks[0] if self._expected_ranks else float("inf")

    @contextlib.contextmanager
    def held(self, key=None):
        with self._cond:
            if key is not None and key in self._ranks:
                rank = self._ranks[key]
                if key in self._expected:
                    self._expected.discard(key)
                    self._gone_ranks.add(rank)
                self._tickets += 1
                ticket = (rank, self._tickets)
                heapq.heappush(self._waiting, ticket)
                self._cond.wait_for(lambda: interrupt.requested() or (
                    self._free > 0 and self._waiting[0] is ticket and self._lowest_expected() > rank))
                if interrupt.requested():
                    self._waiting.remove(ticket)
                    heapq.heapify(self._waiting)
                    self._cond.notify_all()
                    raise interrupt.Interrupted()
                heapq.heappop(self._waiting)
            else:
                ticket = object()
                self._queue.append(ticket)
                self._cond.wait_for(lambda: interrupt.requested() or (self._free > 0 and self._queue[0] is ticket))
                if interrupt.requested():
                    self._queue.remove(ticket)
                    self._cond.notify_all()
                    raise interrupt.Interrupted()
                self._queue.popleft()
            self._free -= 1
            self._cond.notify_all()
        try:
            yield
        finally:
            with self._cond:
                self._free += 1
                self._cond.notify_all()


class Connections:
    """The open hosts of a pass, reconnected (once at a time) when a daemon went away."""

    def __init__(self, hosts: dict[str, Host], give_up_at: float):
        self._hosts = hosts
        self._give_up_at = give_up_at
        self._locks = {uri: threading.Lock() for uri in hosts}

    def host(self, uri: str) -> Host:
        return self._hosts[uri]

    def uris(self) -> list[str]:
        return list(self._hosts)

    def guest(self, uri: str, uuid: str) -> Guest:
        return self._hosts[uri].guest(uuid)

    def recover(self, uri: str) -> None:
        """Reconnect to ``uri`` unless another thread already did; raises HypervisorUnavailable."""
        host = self._hosts[uri]
        with self._locks[uri]:
            if host.is_alive():
                return
            remaining = max(0.0, self._give_up_at - time.monotonic())
            log.warning("lost the connection to %s; reconnecting (for up to %.0f s)", uri, remaining)
            host.reconnect(retry_for=remaining)
            log.info("reconnected to %s", uri)


class _Progress:
    """Watches running saves: logs progress, keeps systemd informed, aborts hung saves."""

    def __init__(self, total: int, deadline_at: float):
        self.total = total
        self.done = 0
        self.deadline_at = deadline_at
        self._running: dict[str, dict] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="mgsave-progress", daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    def begin(self, guest: Guest, plan: GuestPlan, timeout: float, image: str | None = None) -> None:
        """Watch a save that writes ``image`` (None when its path is unknown)."""
        now = time.monotonic()
        with self._lock:
            self._running[guest.uuid] = {
                "guest": guest,
                "plan": plan,
                "started": now,
                "timeout_at": now + timeout,
                "last_bytes": -1,
                "last_change": now,
                "last_seen": None,
                "aborted": None,
                "image": image,
                "last_log": now - PROGRESS_EVERY + PROGRESS_POLL,
            }
        self._status()

    def end(self, guest: Guest) -> tuple[int | None, str | None]:
        """Stop watching; returns (bytes seen, why it was aborted or None)."""
        with self._lock:
            entry = self._running.pop(guest.uuid, None)
            self.done += 1
        self._status()
        if entry is None:
            return None, None
        return entry["last_seen"], entry["aborted"]

    def _status(self, detail: str = "") -> None:
        with self._lock:
            names = ", ".join(e["guest"].name for e in self._running.values())
        text = f"saving {self.done}/{self.total}"
        if names:
            text += f": {detail or names}"
        notify.status(text)

    def _loop(self) -> None:
        while not self._stop.wait(PROGRESS_POLL):
            with self._lock:
                entries = list(self._running.values())
            moving = False
            parts = []
            for entry in entries:
                moving |= self._check(entry, parts)
            if parts:
                self._status(", ".join(parts))
            if moving:
                # A save that makes progress is never killed by systemd's stop timeout.
                notify.extend_timeout(PROGRESS_POLL * 10 + 30)

    @staticmethod
    def _measure(entry: dict) -> JobProgress | None:
        """Bytes written so far: the image's size on disk when its path is known (that never
        blocks, and is what reaches the disk), else libvirt's job statistics, which block
        while libvirt holds the guest's job lock and count memory handed to the writer."""
        if entry["image"]:
            written = _file_size(entry["image"]) or 0
            return JobProgress(written, max(written, entry["plan"].guest.memory_bytes))
        try:
            return entry["guest"].job_progress()
        except HypervisorError:
            return None

    def _check(self, entry: dict, parts: list[str]) -> bool:
        guest: Guest = entry["guest"]
        now = time.monotonic()
        progress = self._measure(entry)
        moving = False
        if progress is not None:
            if progress.processed > entry["last_bytes"]:
                entry["last_bytes"] = progress.processed
                entry["last_change"] = now
                moving = True
            entry["last_seen"] = progress.processed
            fraction = progress.fraction
            percent = f"{fraction * 100:.0f}%" if fraction is not None else "?"
            parts.append(f"{guest.name} {percent}")
        if progress is not None and now - entry["last_log"] >= PROGRESS_EVERY - 0.05:
            entry["last_log"] = now
            log.info(
                "%s: saving %s (%s of %s)",
                guest.name,
                percent,
                _mb(progress.processed),
                _mb(progress.total) if progress.total else "?",
                extra=journal.guest_fields(entry["plan"].guest, action="save", result="progress",
                                           seconds=now - entry["started"], bytes_=progress.processed),
            )
        reason = None
        if now > entry["timeout_at"]:
            reason = "save_timeout reached"
        elif now > self.deadline_at and now - entry["last_change"] > STALL_LIMIT:
            reason = f"past the shutdown deadline with no progress for {STALL_LIMIT:.0f} s"
        if reason and entry["aborted"] is None:
            entry["aborted"] = reason
            log.warning("%s: aborting the save: %s", guest.name, reason,
                        extra=journal.guest_fields(entry["plan"].guest, action="save", result="abort"))
            try:
                guest.abort_job()
            except HypervisorError as error:
                log.warning("%s: could not abort the save: %s", guest.name, error.message)
        return moving


def _mb(n: float | None) -> str:
    return "?" if n is None else f"{n / 1e6:.0f} MB"


def _group_by_order(entries: tuple[GuestPlan, ...]) -> list[list[GuestPlan]]:
    groups: list[list[GuestPlan]] = []
    for entry in entries:
        if groups and groups[-1][0].order == entry.order:
            groups[-1].append(entry)
        else:
            groups.append([entry])
    return groups


def _dependencies_first(group: list[GuestPlan]) -> list[GuestPlan]:
    """The group in plan order, except that a guest comes after every guest it waits for.

    Tasks are handed to a bounded thread pool in this order, first come first served, so a
    task that waits for another can never hold the last free thread while the other is still
    queued behind it.
    """
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


def _run_groups(plan: Plan, work, max_workers: int) -> list[GuestResult]:
    """Run ``work(entry, dependency_results)`` for every active entry, honouring order and wait_for."""
    results: dict[tuple[str, str], GuestResult] = {}
    for group in _group_by_order(plan.active):
        done_events = {e.key: threading.Event() for e in group}

        def task(entry: GuestPlan):
            try:
                for key in entry.wait_for:
                    if key in done_events:
                        done_events[key].wait()
                results[entry.key] = work(entry, {k: results.get(k) for k in entry.wait_for})
            except Exception as error:  # a bug must not take the other guests down with it
                log.exception("%s: internal error", entry.guest.name)
                results[entry.key] = GuestResult(entry, Outcome.FAILED, messages=[f"internal error: {error!r}"])
            finally:
                done_events[entry.key].set()

        # Every guest of a group gets a thread (waiting on its dependencies costs nothing);
        # the expensive part, a save or a start, is bounded by Slots.
        with ThreadPoolExecutor(max_workers=min(len(group), max_workers), thread_name_prefix="mgsave") as pool:
            list(pool.map(task, _dependencies_first(group)))
    return [results[e.key] for e in plan.active]


def _skipped(plan: Plan) -> list[GuestResult]:
    return [GuestResult(e, Outcome.SKIPPED, messages=[e.reason]) for e in plan.entries if e.skipped]


def _log_step(entry: GuestPlan, step: StepResult, extra_text: str = "") -> None:
    name = entry.guest.name
    fields = journal.guest_fields(entry.guest, action=step.action, result="ok" if step.ok else "failed",
                                  seconds=step.seconds, bytes_=step.bytes)
    if step.ok:
        size = f", {_mb(step.bytes)}" if step.bytes else ""
        log.info("%s: %s ok in %.1f s%s%s", name, step.action, step.seconds, size, extra_text, extra=fields)
    else:
        log.warning("%s: %s failed after %.1f s: %s", name, step.action, step.seconds, step.error, extra=fields)


# --- shutdown -------------------------------------------------------------------------------


class ShutdownPass:
    def __init__(self, plan: Plan, connections: Connections, *, record: state.RecordWriter | None,
                 deadline_at: float, dry_run: bool = False):
        self.plan = plan
        self.connections = connections
        self.record = record
        self.deadline_at = deadline_at  # monotonic
        self.dry_run = dry_run
        # Saves begin in plan order (dependencies first, then priority, then name).
        saves = [e for group in _group_by_order(plan.active) for e in _dependencies_first(group)
                 if e.actions[0] in (Action.SAVE, Action.SAVE_TO_FILE)]
        self.save_slots = Slots(plan.limits.max_parallel_saves, ranks={e.key: i for i, e in enumerate(saves)},
                                expected=[e.key for e in saves if not e.wait_for])
        self.progress: _Progress | None = None

    def run(self) -> list[GuestResult]:
        if self.dry_run:
            return [GuestResult(e, Outcome.PLANNED, messages=[e.reason, *e.notes]) for e in self.plan.active] + _skipped(self.plan)
        with _Progress(sum(1 for e in self.plan.active if e.actions[0] in (Action.SAVE, Action.SAVE_TO_FILE)),
                       self.deadline_at) as self.progress:
            results = _run_groups(self.plan, lambda entry, _deps: self._guest(entry), max_workers=256)
        return results + _skipped(self.plan)

    def _past_deadline(self) -> bool:
        return time.monotonic() >= self.deadline_at - DEADLINE_RESERVE

    def _guest(self, entry: GuestPlan) -> GuestResult:
        try:
            return self._chain(entry)
        finally:
            self.save_slots.withdraw(entry.key)  # never keep later guests waiting for this one's turn

    def _chain(self, entry: GuestPlan) -> GuestResult:
        result = GuestResult(entry, Outcome.FAILED, started=time.time())
        result.messages.extend(entry.notes)
        for note in entry.notes:  # e.g. why its save was dropped from the chain up front
            skipped = note.startswith("save skipped")
            log.log(logging.WARNING if skipped else logging.INFO, "%s: %s", entry.guest.name, note,
                    extra=journal.guest_fields(entry.guest, action="save" if skipped else None,
                                               result="skipped" if skipped else None))
        chain = list(entry.actions)
        key = state.guest_record_key(*entry.key)
        for index, action in enumerate(chain):
            last = index == len(chain) - 1
            if interrupt.requested():
                self._interrupted(entry, result, action)
                break
            if self._past_deadline() and not last:
                self.save_slots.withdraw(entry.key)
                result.messages.append(f"deadline reached: {action} skipped")
                log.warning("%s: shutdown deadline reached, skipping %s", entry.guest.name, action,
                            extra=journal.guest_fields(entry.guest, action=action, result="skipped"))
                continue
            try:
                step = self._step(entry, action, result.messages)
            except interrupt.Interrupted:  # while waiting (for a slot, or the guest to shut down)
                self._interrupted(entry, result, action)
                break
            finally:
                self.save_slots.withdraw(entry.key)  # its save (if any) has had its turn
            if step is None:  # the guest is already off or gone
                found = self._found_saved(entry)
                if found:  # a save begun before this step (an interrupted pass's) completed
                    result.outcome = found
                    result.messages.append("found saved: a save begun before (by an interrupted pass, or by "
                                           "someone else) completed; not saved again")
                    log.warning("%s: found saved by a save begun before this pass's; not saved again",
                                entry.guest.name, extra=journal.guest_fields(entry.guest, result=found))
                    break
                if any(s.action is Action.SHUTDOWN for s in result.steps):
                    # it was asked to shut down and did, just after we stopped waiting for it
                    result.outcome = Outcome.SHUT_DOWN
                    result.messages.append(f"it shut down after its shutdown request had timed out; {action} "
                                           f"was not needed")
                    log.warning("%s: shut down late, after its shutdown request had timed out", entry.guest.name,
                                extra=journal.guest_fields(entry.guest, action="shutdown", result="ok"))
                    break
                result.outcome = Outcome.VANISHED
                result.messages.append("the guest was stopped or undefined by someone else during the pass")
                log.warning("%s: stopped or undefined by someone else during the pass", entry.guest.name,
                            extra=journal.guest_fields(entry.guest, result=Outcome.VANISHED))
                break
            result.steps.append(step)
            _log_step(entry, step)
            if step.ok:
                result.outcome = OUTCOME_OF_STEP[action]
                break
        result.finished = time.time()
        if result.outcome is Outcome.FAILED:
            log.error("%s: every step failed; the guest may still be running", entry.guest.name,
                      extra=journal.guest_fields(entry.guest, result=Outcome.FAILED))
        if self.record:
            self.record.update_guest(
                key, outcome=result.outcome, steps=[s.to_dict() for s in result.steps],
                finished=result.finished, bytes=result.bytes, messages=list(result.messages),
            )
        return result

    def _interrupted(self, entry: GuestPlan, result: GuestResult, action: Action) -> None:
        """The pass was asked to stop before ``action`` could run (or while it waited)."""
        signal_name = interrupt.signal_received().name if interrupt.signal_received() else "a stop request"
        result.outcome = Outcome.INTERRUPTED
        result.messages.append(f"the pass was stopped ({signal_name}) before its {action}: left as it was")
        log.warning("%s: the pass was stopped (%s) before its %s; left as it was", entry.guest.name, signal_name,
                    action, extra=journal.guest_fields(entry.guest, action=action, result=Outcome.INTERRUPTED))

    def _found_saved(self, entry: GuestPlan) -> Outcome | None:
        """The outcome when a guest found off already has a complete saved state, else None."""
        try:
            guest = self.connections.guest(entry.guest.connection, entry.guest.uuid)
            if not guest.is_active() and guest.has_saved_state():
                return Outcome.SAVED
        except GuestGone:  # a transient guest is gone once saved: look at its file
            if entry.image and os.path.isfile(entry.image) and not saved_image_is_partial(entry.image):
                return Outcome.SAVED_TO_FILE
        except HypervisorError:
            pass
        return None

    def _step(self, entry: GuestPlan, action: Action, messages: list[str] | None = None) -> StepResult | None:
        """Run one step, reconnecting once if the daemon went away. None: the guest is gone/off."""
        for attempt in (1, 2):
            started = time.time()
            # A save's own start and end, set once it holds a slot: waiting for a slot is not saving.
            span: list = [started, None]
            try:
                guest = self.connections.guest(entry.guest.connection, entry.guest.uuid)
                if not guest.is_active():
                    return None
                size = self._do(guest, entry, action, span, messages)
                if size is _NOT_RUNNING:
                    return None
                return StepResult(action, True, span[0], span[1] or time.time(), bytes=size)
            except GuestGone:
                return None
            except HypervisorUnavailable as error:
                if attempt == 2:
                    return StepResult(action, False, started, time.time(), error=error.message)
                if messages is not None:
                    messages.append(f"the connection to libvirt was lost during the {action} ({error.message}); "
                                    f"reconnected")
                try:
                    self.connections.recover(entry.guest.connection)
                except HypervisorUnavailable as again:
                    return StepResult(action, False, started, time.time(), error=again.message)
                # The step may have completed before the connection dropped.
                if action in (Action.SAVE, Action.SAVE_TO_FILE):
                    with contextlib.suppress(HypervisorError):
                        guest = self.connections.guest(entry.guest.connection, entry.guest.uuid)
                        if not guest.is_active() and (action is Action.SAVE_TO_FILE or guest.has_saved_state()):
                            return StepResult(action, True, started, time.time())
            except HypervisorError as error:
                return StepResult(action, False, span[0], span[1] or time.time(), error=error.message)
            except OSError as error:  # our side of a save to a file: the images directory
                return StepResult(action, False, span[0], span[1] or time.time(),
                                  error=f"{error.strerror}: {error.filename}")
        raise AssertionError("unreachable")

    def _do(self, guest: Guest, entry: GuestPlan, action: Action, span: list | None = None,
            messages: list[str] | None = None):
        """Carry out one step. A save puts the times it began (holding its slot) and ended in
        ``span[0]`` and ``span[1]``, so the step's times leave out the wait for a slot.
        Returns the bytes saved (or None), or _NOT_RUNNING when the guest stopped meanwhile."""
        span = span if span is not None else [None, None]
        settings = entry.effective.settings
        if action in (Action.SAVE, Action.SAVE_TO_FILE):
            with self.save_slots.held(entry.key):
                if self._past_deadline():
                    raise OperationTimeout("the shutdown deadline came while the save waited for a slot")
                span[0] = time.time()
                timeout = settings.save_timeout
                if self._wait_for_a_save_under_way(guest, entry, timeout, messages):
                    return _NOT_RUNNING
                log.info("%s: saving (%s of memory)", entry.guest.name, _mb(entry.guest.memory_bytes),
                         extra=journal.guest_fields(entry.guest, action=action, result="begin"))
                # A save interrupted by a daemon restart can leave a running guest paused: make
                # sure the image still comes back running.
                resume_running = entry.guest.state is GuestState.RUNNING and guest.state()[0] is GuestState.PAUSED
                image = (managed_image_path(entry.guest.connection, entry.guest.name)
                         if action is Action.SAVE else entry.image)
                self.progress.begin(guest, entry, timeout, image)
                aborted = None
                try:
                    if action is Action.SAVE:
                        guest.save_memory_state(bypass_cache=settings.bypass_cache, resume_running=resume_running)
                        path = managed_image_path(entry.guest.connection, entry.guest.name)
                    else:
                        path = entry.image
                        Path(path).parent.mkdir(parents=True, exist_ok=True)
                        guest.save_to_file(path, bypass_cache=settings.bypass_cache, resume_running=resume_running)
                except HypervisorError:
                    if action is Action.SAVE_TO_FILE:
                        with contextlib.suppress(OSError):
                            os.unlink(entry.image)  # never leave a partial file to be "restored"
                    raise
                finally:
                    seen, aborted = self.progress.end(guest)
                    span[1] = time.time()
                if aborted:
                    log.info("%s: %s", entry.guest.name, aborted)
                return _file_size(path) or seen
        if action is Action.SHUTDOWN:
            guest.request_shutdown()
            wait_until = min(time.monotonic() + settings.shutdown_timeout, self.deadline_at - DEADLINE_RESERVE)
            while not _stopped(guest):
                if time.monotonic() >= wait_until:
                    raise OperationTimeout(f"still running {settings.shutdown_timeout:g} s after the shutdown request")
                interrupt.sleep(SHUTDOWN_POLL)
            return None
        if action is Action.POWEROFF:
            guest.power_off()
            return None
        raise ValueError(f"not a shutdown step: {action}")


    def _wait_for_a_save_under_way(self, guest: Guest, entry: GuestPlan, timeout: float,
                                   messages: list[str] | None) -> bool:
        """When a save of the guest begun by someone else (a pass killed mid-save: libvirtd goes
        on with it) is under way, wait for it rather than start a second one, which would fail
        once the first completes. True when the guest is no longer running afterwards."""
        if not guest.being_saved():
            return False
        text = "a save of it begun before (by an interrupted pass?) is under way: waiting for it"
        log.warning("%s: %s", entry.guest.name, text,
                    extra=journal.guest_fields(entry.guest, action="save", result="wait"))
        if messages is not None:
            messages.append(text)
        give_up_at = min(time.monotonic() + timeout, self.deadline_at - DEADLINE_RESERVE)
        while time.monotonic() < give_up_at:
            if _stopped(guest):
                return True
            if not guest.being_saved():
                break
            interrupt.sleep(SHUTDOWN_POLL)
        return _stopped(guest)


_NOT_RUNNING = object()  # _do: the guest was found stopped, nothing was done


def _stopped(guest: Guest) -> bool:
    """True once the guest no longer runs; a transient guest disappears when it stops."""
    try:
        return not guest.is_active()
    except GuestGone:
        return True


def _file_size(path: str | None) -> int | None:
    if not path:
        return None
    try:
        return os.stat(path).st_size
    except OSError:
        return None


# --- boot -----------------------------------------------------------------------------------


class BootPass:
    def __init__(self, plan: Plan, connections: Connections, *, state_dir: Path, dry_run: bool = False):
        self.plan = plan
        self.connections = connections
        self.state_dir = state_dir
        self.dry_run = dry_run
        self.start_slots = Slots(plan.limits.max_parallel_starts)
        self._last_start = 0.0
        self._delay_lock = threading.Lock()
        self._started_count = 0
        self._count_lock = threading.Lock()

    def run(self) -> list[GuestResult]:
        if self.dry_run:
            return [GuestResult(e, Outcome.PLANNED, messages=[e.reason, *e.notes]) for e in self.plan.active] + _skipped(self.plan)
        return _run_groups(self.plan, self._guest, max_workers=256) + _skipped(self.plan)

    def _guest(self, entry: GuestPlan, deps: dict) -> GuestResult:
        result = GuestResult(entry, Outcome.FAILED, started=time.time())
        result.messages.extend(entry.notes)
        for key, dep in deps.items():
            if dep is not None and not dep.ok:
                result.messages.append(f"starts although {dep.plan.guest.name}, which it is after, failed")
        action = entry.actions[0]
        step_started = None  # once a start slot is held: waiting for one is not starting
        try:
            interrupt.check()
            with self.start_slots.held():
                self._respect_start_delay()
                interrupt.check()  # the last moment to leave it alone: after this, libvirt starts it
                step_started = time.time()
                outcome = self._start(entry, action, result)
        except interrupt.Interrupted:
            return self._not_started(entry, action, result)
        except GuestGone:
            result.outcome = Outcome.VANISHED
            result.messages.append("the guest was undefined by someone else during the pass")
            log.warning("%s: undefined by someone else during the pass", entry.guest.name,
                        extra=journal.guest_fields(entry.guest, result=Outcome.VANISHED))
            result.finished = time.time()
            return result
        except HypervisorError as error:
            step = StepResult(action, False, step_started or time.time(), time.time(), error=error.message)
            result.steps.append(step)
            _log_step(entry, step)
            result.finished = time.time()
            return result
        with self._count_lock:
            self._started_count += 1
            notify.status(f"starting {self._started_count}/{len(self.plan.active)}: {entry.guest.name}")
        result.outcome = outcome
        if outcome in (Outcome.RESUMED, Outcome.RESTORED, Outcome.STARTED, Outcome.BOOTED_FRESH):
            self._after_start(entry, result)
        result.finished = time.time()
        return result

    @staticmethod
    def _not_started(entry: GuestPlan, action: Action, result: GuestResult) -> GuestResult:
        """The pass was asked to stop before it started the guest: it stays off, and keeps its
        saved state (and its entry in the shutdown record) for the next boot pass."""
        signal_name = interrupt.signal_received().name if interrupt.signal_received() else "a stop request"
        kept = "; its saved state is kept for the next boot" if action in (Action.RESUME, Action.RESTORE) else ""
        result.outcome = Outcome.INTERRUPTED
        result.messages.append(f"not started: the pass was stopped ({signal_name}) before it{kept}")
        log.warning("%s: not started: the pass was stopped (%s)%s", entry.guest.name, signal_name, kept,
                    extra=journal.guest_fields(entry.guest, action=action, result=Outcome.INTERRUPTED))
        result.finished = time.time()
        return result

    def _respect_start_delay(self) -> None:
        delay = self.plan.limits.start_delay
        if delay <= 0:
            return
        with self._delay_lock:
            wait = self._last_start + delay - time.monotonic()
            if wait > 0:
                interrupt.sleep(wait)
            self._last_start = time.monotonic()

    def _start(self, entry: GuestPlan, action: Action, result: GuestResult) -> Outcome:
        if action is Action.RESTORE:
            return self._restore_transient(entry, result)
        started = time.time()
        try:
            return self._start_once(entry, action, result, started)
        except HypervisorUnavailable as error:
            # The daemon went away during the start: reconnect, then see whether it started.
            log.warning("%s: lost the connection while starting it (%s); reconnecting", entry.guest.name,
                        error.message, extra=journal.guest_fields(entry.guest, action=action, result="retry"))
            self.connections.recover(entry.guest.connection)
            guest = self._guest_handle(entry)
            if guest.is_active():
                result.messages.append(f"the connection to libvirt was lost during the {action}; it had gone through")
                return self._started(entry, action, guest, result, started)
            result.messages.append(f"the connection to libvirt was lost during the {action}; tried again")
            return self._start_once(entry, action, result, time.time())

    def _start_once(self, entry: GuestPlan, action: Action, result: GuestResult, started: float) -> Outcome:
        settings = entry.effective.settings
        guest = self._guest_handle(entry)
        if guest.is_active():
            result.messages.append("already running (started by someone else)")
            return Outcome.SKIPPED
        if action is Action.RESUME and saved_image_is_partial(
                managed_image_path(entry.guest.connection, entry.guest.name)):
            # libvirt would delete it and boot the guest fresh without telling: decide ourselves
            error = OperationRefused(f"{entry.guest.name}: its saved image is incomplete: the save never "
                                     f"finished (a power loss or crash during the shutdown pass)")
            step = StepResult(action, False, started, time.time(), error=error.message)
            result.steps.append(step)
            _log_step(entry, step)
            return self._resume_failed(entry, guest, result, error)
        try:
            guest.start(bypass_cache=settings.bypass_cache)
        except HypervisorUnavailable:
            raise
        except HypervisorError as error:
            if action is not Action.RESUME or not guest.has_saved_state():
                raise  # recorded by the caller
            step = StepResult(action, False, started, time.time(), error=error.message)
            result.steps.append(step)
            _log_step(entry, step)
            return self._resume_failed(entry, guest, result, error)
        return self._started(entry, action, guest, result, started)

    def _started(self, entry: GuestPlan, action: Action, guest: Guest, result: GuestResult, started: float) -> Outcome:
        """The outcome of a start that went through."""
        step = StepResult(action, True, started, time.time())
        result.steps.append(step)
        if action is Action.RESUME and not self._resumed(entry, guest):
            message = "libvirt booted it fresh instead of resuming it: its saved image was not used"
            result.messages.append(message)
            _log_step(entry, step, " (booted fresh, not resumed)")
            log.error("%s: %s", entry.guest.name, message,
                      extra=journal.guest_fields(entry.guest, action="resume", result="booted-fresh"))
            return Outcome.BOOTED_FRESH
        _log_step(entry, step)
        if action is Action.START and entry.unsaved:
            log.error("%s: %s", entry.guest.name, entry.notes[0],
                      extra=journal.guest_fields(entry.guest, action="start", result="booted-fresh"))
            return Outcome.BOOTED_FRESH
        return Outcome.RESUMED if action is Action.RESUME else Outcome.STARTED

    @staticmethod
    def _resumed(entry: GuestPlan, guest: Guest) -> bool:
        """False only when libvirt says a guest it was asked to resume booted instead. Only QEMU
        connections (whose image location we know) say so reliably; elsewhere, assume it did."""
        if managed_image_path(entry.guest.connection, entry.guest.name) is None:
            return True
        try:
            return guest.was_restored()
        except HypervisorError:
            return True

    def _guest_handle(self, entry: GuestPlan) -> Guest:
        try:
            return self.connections.guest(entry.guest.connection, entry.guest.uuid)
        except HypervisorUnavailable:
            self.connections.recover(entry.guest.connection)
            return self.connections.guest(entry.guest.connection, entry.guest.uuid)

    def _resume_failed(self, entry: GuestPlan, guest: Guest, result: GuestResult, error: HypervisorError) -> Outcome:
        kept = self._keep_failed_image(entry)
        where = f"kept at {kept}" if kept else "left in place"
        log.error("%s: resuming failed (%s); the saved image is %s", entry.guest.name, error.message, where,
                  extra=journal.guest_fields(entry.guest, action="resume", result="failed"))
        result.messages.append(f"resume failed: {error.message}; image {where}")
        if kept is None or entry.effective.settings.on_resume_failure is OnResumeFailure.LEAVE_OFF:
            if kept is None:
                result.messages.append("left off: the image could not be set aside, so it is not discarded")
            return Outcome.LEFT_OFF
        started = time.time()
        guest.discard_saved_state()
        guest.start(bypass_cache=entry.effective.settings.bypass_cache, force_boot=True)
        step = StepResult(Action.START, True, started, time.time())
        result.steps.append(step)
        _log_step(entry, step, " (booted fresh after the failed resume)")
        return Outcome.BOOTED_FRESH

    def _keep_failed_image(self, entry: GuestPlan) -> str | None:
        """Move the image that failed to resume into failed-images/; None when that is impossible."""
        source = managed_image_path(entry.guest.connection, entry.guest.name)
        if source is None or not os.path.exists(source):
            return None
        target_dir = self.state_dir / "failed-images"
        try:
            target_dir.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            log.error("%s: could not keep the image: %s: %s", entry.guest.name, error.strerror, target_dir)
            return None
        target = target_dir / f"{entry.guest.name}-{time.strftime('%Y%m%d-%H%M%S')}.save"
        try:
            os.link(source, target)  # instant on the same filesystem; the data outlives libvirt's unlink
        except OSError:
            try:
                shutil.copy2(source, target)
            except OSError as error:
                log.error("%s: could not keep the image: %s", entry.guest.name, error)
                with contextlib.suppress(OSError):
                    target.unlink()
                return None
        return str(target)

    def _restore_transient(self, entry: GuestPlan, result: GuestResult) -> Outcome:
        host = self.connections.host(entry.guest.connection)
        started = time.time()
        try:
            host.restore_from_file(entry.image, bypass_cache=entry.effective.settings.bypass_cache)
        except HypervisorError as error:
            step = StepResult(Action.RESTORE, False, started, time.time(), error=error.message)
            result.steps.append(step)
            _log_step(entry, step)
            kept = self.state_dir / "failed-images" / Path(entry.image).name
            kept.parent.mkdir(parents=True, exist_ok=True)
            with contextlib.suppress(OSError):
                os.replace(entry.image, kept)
            result.messages.append(f"restore failed; a transient guest cannot boot fresh; image kept at {kept}")
            return Outcome.LEFT_OFF
        step = StepResult(Action.RESTORE, True, started, time.time(), bytes=_file_size(entry.image))
        result.steps.append(step)
        _log_step(entry, step)
        # A save file restored once is stale the moment the guest runs on: never restore it twice.
        with contextlib.suppress(OSError):
            os.unlink(entry.image)
        return Outcome.RESTORED

    def _after_start(self, entry: GuestPlan, result: GuestResult) -> None:
        settings = entry.effective.settings
        try:
            guest = self.connections.guest(entry.guest.connection, entry.guest.uuid)
        except HypervisorError as error:
            result.messages.append(f"could not look at it after starting: {error.message}")
            return
        if settings.sync_time and result.outcome in (Outcome.RESUMED, Outcome.RESTORED):
            try:
                guest.sync_clock()
            except HypervisorError as error:
                result.messages.append(f"clock not synced (needs the guest agent): {error.message}")
                log.warning("%s: clock not synced: %s", entry.guest.name, error.message,
                            extra=journal.guest_fields(entry.guest, action="sync_time", result="failed"))
        try:
            self._wait_until_ready(entry, guest, result)
        except interrupt.Interrupted:
            result.messages.append("its readiness wait was cut short: the pass was stopped")

    @staticmethod
    def _wait_until_ready(entry: GuestPlan, guest: Guest, result: GuestResult) -> None:
        ready = entry.effective.settings.ready
        if ready.kind is ReadyKind.DELAY:
            interrupt.sleep(ready.seconds)
        elif ready.kind is ReadyKind.AGENT:
            give_up_at = time.monotonic() + ready.seconds
            while not guest.agent_responds(timeout=2):
                if time.monotonic() >= give_up_at:
                    result.messages.append(
                        f"not ready: the guest agent did not answer within {ready.seconds:g} s; dependents start anyway"
                    )
                    log.warning("%s: guest agent did not answer within %g s; dependents start anyway",
                                entry.guest.name, ready.seconds,
                                extra=journal.guest_fields(entry.guest, action="ready", result="timeout"))
                    break
                interrupt.sleep(1)
