"""Carrying out a boot plan: start, resume or restore each guest in start order.

Starts take a slot (``limits.max_parallel_starts``), ``limits.start_delay`` apart; a guest
waits for the guests it is ``after`` to be ready. A guest already running is left alone, so a
second boot pass changes nothing. What to do when a resume fails is the plan's decision.
"""

from __future__ import annotations

import os
import stat
import threading
import time

from libmgsave import interrupt, notify
from libmgsave.errors import GuestGone, HypervisorError, HypervisorUnavailable, OperationRefused
from libmgsave.events import EventKind, Events
from libmgsave.execute import migrate
from libmgsave.execute.progress import LiveWaits, file_size
from libmgsave.execute.scheduler import Schedule, Slots
from libmgsave.execute.steps import add_step, timed_step, unexpected_as_failure
from libmgsave.execute.waiting import Waits
from libmgsave.hypervisor import Connections, Guest
from libmgsave.outcomes import GuestResult, Outcome, Severity, StepResult, Wait, WaitKind
from libmgsave.plan import Action, GuestPlan, Plan
from libmgsave.policy import ReadyKind
from libmgsave.saveimages import is_sparse_image, saved_image_problem
from libmgsave.state import StateDir
from libmgsave.state.images import keep_failed_image, remove_used_image, set_aside_failed_file

_UP = (Outcome.RESUMED, Outcome.RESTORED, Outcome.STARTED, Outcome.BOOTED_FRESH, Outcome.RETURNED)


class BootPass:
    def __init__(self, plan: Plan, connections: Connections, *, state_dir: StateDir):
        self.plan = plan
        self.connections = connections
        self.state_dir = state_dir
        self.waits = Waits()  # who waits for whom, on the live line
        self.events = Events()  # what happens to each guest: its summary, the journal
        self.start_slots = Slots(plan.limits.max_parallel_starts, waits=self.waits)
        self._last_start = 0.0
        self._delay_lock = threading.Lock()
        self._started_count = 0
        self._count_lock = threading.Lock()
        self.cleanup_errors: list[str] = []  # files the pass should have removed and could not

    def run(self) -> list[GuestResult]:
        """Every active guest's result, in plan order."""
        self.schedule = Schedule(self.plan, self.waits)
        with LiveWaits(self._counts, self.waits):
            results = self.schedule.run(self._guest)
        return [results[e.key] for e in self.plan.active]

    def _counts(self) -> str:
        with self._count_lock:
            return f"starting {self._started_count}/{len(self.plan.active)}"

    def _guest(self, entry: GuestPlan, deps: dict) -> GuestResult:
        result = GuestResult(entry, Outcome.FAILED, started=time.time())
        result.waits.extend(self.schedule.waited_for_others(entry, result.started))
        result.messages.extend(entry.notes)
        for dep in deps.values():
            if dep is not None and dep.severity is Severity.FAILED:
                self.events.say(result, EventKind.DEPENDENCY_FAILED, what=dep.plan.guest.name)
        action = entry.actions[0]
        step_started = None  # once a start slot is held: waiting for one is not starting
        try:
            interrupt.check()
            asked = time.time()
            with self.start_slots.held(who=entry.guest.name, what="a start slot"):
                self._respect_start_delay()
                interrupt.check()  # the last moment to leave it alone: after this, libvirt starts it
                step_started = time.time()
                result.waits.append(Wait(WaitKind.SLOT, asked, step_started))
                result.outcome = self._start(entry, action, result)
        except interrupt.Interrupted:
            self._not_started(action, result)
        except GuestGone:
            result.outcome = Outcome.VANISHED
            self.events.say(result, EventKind.UNDEFINED_AT_BOOT, outcome=Outcome.VANISHED)
        except HypervisorError as error:
            add_step(self.events, result, StepResult(action, False, step_started or time.time(), time.time(), error=error.message))
        else:
            with self._count_lock:
                self._started_count += 1
                notify.status(f"starting {self._started_count}/{len(self.plan.active)}: {entry.guest.name}")
            if result.outcome in _UP:
                self._after_start(entry, result)
        result.finished = time.time()
        self.events.settled(result)
        return result

    def _not_started(self, action: Action, result: GuestResult) -> None:
        """The pass was asked to stop before it started the guest: it stays off, and keeps its
        saved state (and its entry in the shutdown record) for the next boot pass."""
        signal_name = interrupt.signal_received().name if interrupt.signal_received() else "a stop request"
        kept = "; its saved state is kept for the next boot" if action in (Action.RESUME, Action.RESTORE) else ""
        result.outcome = Outcome.INTERRUPTED
        self.events.say(result, EventKind.NOT_STARTED_STOPPED, action=action, why=signal_name, what=kept,
                        outcome=Outcome.INTERRUPTED)

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
        if action is Action.RETURN:
            return migrate.bring_home(entry, result, self.events)
        started = [time.time()]

        def attempt() -> Outcome:
            return self._start_once(entry, action, result, started[0])

        def after_reconnect(error: HypervisorError) -> Outcome | None:
            # The daemon went away during the start: see whether it had gone through.
            self.events.say(result, EventKind.CONNECTION_LOST_STARTING, action=action, why=error.message)
            guest = self.connections.guest(entry.guest.connection, entry.guest.uuid)
            if guest.is_active():
                self.events.say(result, EventKind.START_HAD_GONE_THROUGH, action=action)
                return self._started(entry, action, guest, result, started[0])
            self.events.say(result, EventKind.START_TRIED_AGAIN, action=action)
            started[0] = time.time()
            return None

        return self.connections.call_with_reconnect(entry.guest.connection, attempt, after_reconnect=after_reconnect)

    def _start_once(self, entry: GuestPlan, action: Action, result: GuestResult, started: float) -> Outcome:
        guest = self.connections.guest(entry.guest.connection, entry.guest.uuid)
        if guest.is_active():
            self.events.say(result, EventKind.ALREADY_RUNNING)
            return Outcome.SKIPPED
        if entry.will_not_resume and action is Action.START:
            return self._fresh_instead(entry, guest, result, started)
        problem = saved_image_problem(entry.managed_image) if action is Action.RESUME else None
        if problem:
            # libvirt would delete it and boot the guest fresh without telling: decide ourselves
            error = OperationRefused(_with_change(entry, f"{entry.guest.name}: {problem}"))
            add_step(self.events, result, StepResult(action, False, started, time.time(), error=error.message))
            return self._resume_failed(entry, guest, result, error)
        try:
            with unexpected_as_failure(entry.guest.name, action):  # a surprise is a failed start or resume
                if not self._resumed_with_channels(entry, action, guest):
                    guest.start(bypass_cache=entry.effective.settings.bypass_cache)
        except HypervisorUnavailable:
            raise  # retried after a reconnect
        except HypervisorError as error:
            if action is not Action.RESUME or not guest.has_saved_state():
                raise  # recorded by the caller
            error.message = _with_change(entry, error.message)
            add_step(self.events, result, StepResult(action, False, started, time.time(), error=error.message))
            return self._resume_failed(entry, guest, result, error)
        return self._started(entry, action, guest, result, started)

    @staticmethod
    def _resumed_with_channels(entry: GuestPlan, action: Action, guest: Guest) -> bool:
        """Resume a channelled (sparse) managed image with the plan's channels; False when the
        guest is to be started the usual way (one stream)."""
        if action is not Action.RESUME or entry.save_channels < 2 or not is_sparse_image(entry.managed_image):
            return False
        return guest.resume_with_channels(entry.managed_image, entry.save_channels,
                                          bypass_cache=entry.effective.settings.bypass_cache)

    def _started(self, entry: GuestPlan, action: Action, guest: Guest, result: GuestResult, started: float) -> Outcome:
        """The outcome of a start that went through."""
        step = StepResult(action, True, started, time.time())
        if action is Action.RESUME and not self._resumed(entry, guest):
            add_step(self.events, result, step, " (booted fresh, not resumed)")
            self.events.say(result, EventKind.BOOTED_FRESH_INSTEAD)
            return Outcome.BOOTED_FRESH
        add_step(self.events, result, step)
        if action is Action.START and entry.boots_fresh_because:
            self.events.say(result, EventKind.BOOTS_FRESH, why=entry.boots_fresh_because)
            return Outcome.BOOTED_FRESH
        return Outcome.RESUMED if action is Action.RESUME else Outcome.STARTED

    @staticmethod
    def _resumed(entry: GuestPlan, guest: Guest) -> bool:
        """False only when libvirt says a guest it was asked to resume booted instead. Only QEMU
        connections (whose image location we know) say so reliably; elsewhere, assume it did."""
        if entry.managed_image is None:
            return True
        try:
            return guest.was_restored()
        except HypervisorError:
            return True

    def _resume_failed(self, entry: GuestPlan, guest: Guest, result: GuestResult, error: HypervisorError) -> Outcome:
        kept = keep_failed_image(entry.managed_image, self.state_dir.failed_images, entry.guest.name)
        where = f"kept at {kept}" if kept else "left in place"
        self.events.say(result, EventKind.RESUME_FAILED, why=error.message, what=where)
        if kept is None or entry.if_resume_fails is Action.SKIP:
            if kept is None:
                self.events.say(result, EventKind.IMAGE_NOT_SET_ASIDE)
            return Outcome.LEFT_OFF
        started = time.time()
        guest.discard_saved_state()
        guest.start(bypass_cache=entry.effective.settings.bypass_cache, force_boot=True)
        add_step(self.events, result, StepResult(Action.START, True, started, time.time()),
                 " (booted fresh after the failed resume)")
        return Outcome.BOOTED_FRESH

    def _fresh_instead(self, entry: GuestPlan, guest: Guest, result: GuestResult, started: float) -> Outcome:
        """A guest whose image the plan knows will not resume here: the image kept (as after a
        failed resume), then the guest booted fresh; left off when the image cannot be kept."""
        kept = keep_failed_image(entry.managed_image, self.state_dir.failed_images, entry.guest.name)
        self.events.say(result, EventKind.WILL_NOT_RESUME, why=entry.will_not_resume,
                        what=f"kept at {kept}" if kept else "left in place")
        if kept is None:
            self.events.say(result, EventKind.IMAGE_NOT_SET_ASIDE)
            return Outcome.LEFT_OFF
        guest.discard_saved_state()
        guest.start(bypass_cache=entry.effective.settings.bypass_cache, force_boot=True)
        add_step(self.events, result, StepResult(Action.START, True, started, time.time()),
                 " (booted fresh: its saved image will not resume here)")
        return Outcome.BOOTED_FRESH

    def _restore_transient(self, entry: GuestPlan, result: GuestResult) -> Outcome:
        host = self.connections.host(entry.guest.connection)
        if not _is_regular_file(entry.image):  # the plan's path is this guest's; the file must be a file
            self.events.say(result, EventKind.NOT_A_REGULAR_FILE, path=entry.image)
            return Outcome.LEFT_OFF
        try:
            with timed_step(self.events, result, Action.RESTORE) as step:
                host.restore_from_file(entry.image, bypass_cache=entry.effective.settings.bypass_cache,
                                       channels=entry.save_channels)
                step.bytes = file_size(entry.image)
        except HypervisorError:
            kept = set_aside_failed_file(entry.image, self.state_dir.failed_images, entry.guest.name)
            where = f"kept at {kept}" if kept else f"left at {entry.image}"
            self.events.say(result, EventKind.RESTORE_FAILED, what=where)
            return Outcome.LEFT_OFF
        # A save file restored once is stale the moment the guest runs on: never restore it twice.
        # The boot record marks it used in any case; a file that cannot be removed is an error.
        problem = remove_used_image(entry.image, entry.guest.name)
        if problem:
            self.events.say(result, EventKind.USED_FILE_KEPT, why=problem)
            with self._count_lock:
                self.cleanup_errors.append(f"{entry.guest.name}: its used save file could not be removed "
                                           f"({problem})")
        return Outcome.RESTORED

    def _after_start(self, entry: GuestPlan, result: GuestResult) -> None:
        settings = entry.effective.settings
        try:
            guest = self.connections.guest(entry.guest.connection, entry.guest.uuid)
        except HypervisorError as error:
            self.events.say(result, EventKind.NOT_LOOKED_AT, why=error.message)
            return
        if settings.sync_time and result.outcome in (Outcome.RESUMED, Outcome.RESTORED):
            try:
                guest.sync_clock()
            except HypervisorError as error:
                self.events.say(result, EventKind.CLOCK_NOT_SYNCED, why=error.message)
        waiting_since = time.time()
        what = "its guest agent" if settings.ready.kind is ReadyKind.AGENT else "its ready delay"
        try:
            if settings.ready.kind is ReadyKind.NONE:
                _wait_until_ready(guest, result, self.events)
            else:
                with self.waits.waiting(entry.guest.name, what):
                    _wait_until_ready(guest, result, self.events)
        except interrupt.Interrupted:
            self.events.say(result, EventKind.READY_WAIT_CUT_SHORT)
        if settings.ready.kind is not ReadyKind.NONE:
            result.waits.append(Wait(WaitKind.READY, waiting_since, time.time()))


def _with_change(entry: GuestPlan, message: str) -> str:
    """A failed resume's error, naming the hypervisor's change since the save when there was one."""
    return f"{message} (after an upgrade: {entry.changed_since_save})" if entry.changed_since_save else message


def _is_regular_file(path: str | None) -> bool:
    try:
        return path is not None and stat.S_ISREG(os.lstat(path).st_mode)
    except OSError:
        return False


def _wait_until_ready(guest: Guest, result: GuestResult, events: Events) -> None:
    ready = result.plan.effective.settings.ready
    if ready.kind is ReadyKind.DELAY:
        interrupt.sleep(ready.seconds)
    elif ready.kind is ReadyKind.AGENT:
        give_up_at = time.monotonic() + ready.seconds
        while not guest.agent_responds(timeout=2):
            if time.monotonic() >= give_up_at:
                events.say(result, EventKind.AGENT_SILENT, number=ready.seconds)
                break
            interrupt.sleep(1)
