"""Carrying out a shutdown plan: each running guest through its fallback chain, under the deadline.

A guest's chain (save -> shutdown -> poweroff by default) runs step after step until one goes
through. Saves take a slot (``limits.max_parallel_saves``) in the plan's order; a step that
cannot end before the deadline is skipped, except the last. A guest found already off is
settled by what it left behind: a completed save begun before, the shutdown it was asked for
arriving late, or someone else's doing.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

from libmgsave import interrupt, journal
from libmgsave.errors import GuestGone, HypervisorError, HypervisorUnavailable, OperationTimeout
from libmgsave.execute import migrate
from libmgsave.execute.progress import SaveProgress, file_size, mb
from libmgsave.execute.scheduler import Schedule
from libmgsave.execute.steps import StepTimes, add_step, log_outcome, unexpected_as_failure, unexpected_failure
from libmgsave.hypervisor import Connections, Guest
from libmgsave.inventory import GuestState
from libmgsave.outcomes import GuestResult, Outcome, StepResult, Wait, WaitKind
from libmgsave.plan import DEADLINE_RESERVE, Action, GuestPlan, Plan
from libmgsave.saveimages import save_file_is_complete
from libmgsave.state import RecordWriter, guest_record_key
from libmgsave.state.images import discard_partial_save, images_directory

log = logging.getLogger("mgsave")

SHUTDOWN_POLL = 0.5  # how often a guest asked to shut down is looked at
SAVES = (Action.SAVE, Action.SAVE_TO_FILE)

# The outcome of a shutdown step that went through.
OUTCOME_OF_STEP = {
    Action.MIGRATE: Outcome.MIGRATED,
    Action.SAVE: Outcome.SAVED,
    Action.SAVE_TO_FILE: Outcome.SAVED_TO_FILE,
    Action.SHUTDOWN: Outcome.SHUT_DOWN,
    Action.POWEROFF: Outcome.POWERED_OFF,
}

LATE_FOR_A_SLOT = "the shutdown deadline came while the save waited for a slot"
LATE_FOR_A_MIGRATION_SLOT = "the shutdown deadline came while the migration waited for a slot"
_OFF = object()  # a step found the guest already off (or gone): nothing was done


class ShutdownPass:
    def __init__(self, plan: Plan, connections: Connections, *, record: RecordWriter | None, deadline_at: float,
                 settle: Callable[[GuestResult], None] | None = None):
        self.plan = plan
        # the kind of pass's rule for a guest's result once its chain is over (actions: Shutdown.settle)
        self.settle = settle
        self.connections = connections
        self.record = record
        self.deadline_at = deadline_at  # time.monotonic()
        self.schedule = Schedule(plan)
        self.save_slots = self.schedule.slots(plan.limits.max_parallel_saves, lambda e: e.actions[0] in SAVES)
        self.migrate_slots = self.schedule.slots(plan.limits.max_parallel_migrations,
                                                 lambda e: e.actions[0] is Action.MIGRATE)
        self.link = migrate.LinkRate()  # saves and migrations share the deadline, not the rate
        self.progress: SaveProgress | None = None
        self._slot_waits: dict = {}  # guest key -> its wait for a save slot, for its result

    def run(self) -> list[GuestResult]:
        """Every active guest's result, in plan order."""
        saves = sum(1 for e in self.plan.active if e.actions[0] in SAVES)
        with SaveProgress(saves, self.deadline_at) as self.progress:
            results = self.schedule.run(lambda entry, _deps: self._guest(entry))
        return [results[e.key] for e in self.plan.active]

    def _past_deadline(self) -> bool:
        return time.monotonic() >= self.deadline_at - DEADLINE_RESERVE

    def _guest(self, entry: GuestPlan) -> GuestResult:
        try:
            result = self._chain(entry)
        finally:
            self.save_slots.withdraw(entry.key)  # never keep later guests waiting for this one's turn
            self.migrate_slots.withdraw(entry.key)
        if result.outcome is Outcome.FAILED:
            log.error("%s: every step failed; the guest may still be running", entry.guest.name,
                      extra=journal.guest_fields(entry.guest, result=Outcome.FAILED))
        log_outcome(result)
        if self.record:
            self.record.update_guest(
                guest_record_key(*entry.key), outcome=str(result.outcome), steps=[s.to_dict() for s in result.steps],
                waits=[w.to_dict() for w in result.waits], started=result.started, finished=result.finished, bytes=result.bytes, messages=list(result.messages),
                **({"peer": result.peer} if result.peer else {}),
            )
        return result

    def _chain(self, entry: GuestPlan) -> GuestResult:
        result = GuestResult(entry, Outcome.FAILED, started=time.time())
        result.waits.extend(self.schedule.waited_for_others(entry, result.started))
        result.messages.extend(entry.notes)
        for note in entry.notes:
            dropped = note == entry.save_dropped_because
            log.log(logging.WARNING if dropped else logging.INFO, "%s: %s", entry.guest.name, note,
                    extra=journal.guest_fields(entry.guest, action="save" if dropped else None,
                                               result="skipped" if dropped else None))
        for index, action in enumerate(entry.actions):
            if interrupt.requested():
                self._interrupted(result, action)
                break
            if self._past_deadline() and index < len(entry.actions) - 1:
                self.save_slots.withdraw(entry.key)
                result.messages.append(f"deadline reached: {action} skipped")
                log.warning("%s: shutdown deadline reached, skipping %s", entry.guest.name, action,
                            extra=journal.guest_fields(entry.guest, action=action, result="skipped"))
                continue
            try:
                step = self._step(entry, action, result.messages)
            except interrupt.Interrupted:  # while waiting (for a slot, or the guest to shut down)
                self._interrupted(result, action)
                break
            finally:
                self.save_slots.withdraw(entry.key)  # its save (if any) has had its turn
                if action is Action.MIGRATE:
                    self.migrate_slots.withdraw(entry.key)
                if entry.key in self._slot_waits:
                    result.waits.append(self._slot_waits.pop(entry.key))
            if step is _OFF:
                self._settle_found_off(result, action)
                break
            add_step(result, step)
            if step.ok:
                result.outcome = OUTCOME_OF_STEP[action]
                if action is Action.MIGRATE:
                    self._check_arrived(result)
                break
        if self.settle:
            self.settle(result)
        result.finished = time.time()
        return result

    def _interrupted(self, result: GuestResult, action: Action) -> None:
        """The pass was asked to stop before ``action`` could run (or while it waited)."""
        signal_name = interrupt.signal_received().name if interrupt.signal_received() else "a stop request"
        result.outcome = Outcome.INTERRUPTED
        result.messages.append(f"the pass was stopped ({signal_name}) before its {action}: left as it was")
        log.warning("%s: the pass was stopped (%s) before its %s; left as it was", result.plan.guest.name,
                    signal_name, action,
                    extra=journal.guest_fields(result.plan.guest, action=action, result=Outcome.INTERRUPTED))

    def _check_arrived(self, result: GuestResult) -> None:
        """After a migration libvirt called a success: the guest runs, persistent, on the peer."""
        entry = result.plan
        result.peer = entry.peer
        there = migrate.runs_on(entry.peer, entry.guest.uuid)
        if there is not True:
            what = "cannot be reached to check it" if there is None else "does not show it running and persistent"
            result.messages.append(f"migrated, but {entry.peer} {what}")
            log.warning("%s: migrated, but %s %s", entry.guest.name, entry.peer, what,
                        extra=journal.guest_fields(entry.guest, action="migrate", result="unverified"))

    def _settle_found_off(self, result: GuestResult, action: Action) -> None:
        """The guest was off (or gone) when ``action`` looked at it: say why."""
        entry = result.plan
        found = self._found_saved(entry)
        if not found and entry.peer and any(s.action is Action.MIGRATE for s in result.steps):
            # a migration reported as failed (the connection dropped as it ended) went through
            if migrate.runs_on(entry.peer, entry.guest.uuid):
                result.outcome, result.peer = Outcome.MIGRATED, entry.peer
                result.messages.append(f"found running on {entry.peer}: its migration had gone through")
                log.warning("%s: found running on %s: its migration had gone through", entry.guest.name,
                            entry.peer, extra=journal.guest_fields(entry.guest, result=Outcome.MIGRATED))
                return
        if found:  # a save begun before this step (an interrupted pass's) completed
            result.outcome = found
            result.messages.append("found saved: a save begun before (by an interrupted pass, or by "
                                   "someone else) completed; not saved again")
            log.warning("%s: found saved by a save begun before this pass's; not saved again",
                        entry.guest.name, extra=journal.guest_fields(entry.guest, result=found))
        elif any(s.action is Action.SHUTDOWN for s in result.steps):
            # it was asked to shut down and did, just after we stopped waiting for it
            result.outcome = Outcome.SHUT_DOWN
            result.messages.append(f"it shut down after its shutdown request had timed out; {action} "
                                   f"was not needed")
            log.warning("%s: shut down late, after its shutdown request had timed out", entry.guest.name,
                        extra=journal.guest_fields(entry.guest, action="shutdown", result="ok"))
        else:
            result.outcome = Outcome.VANISHED
            result.messages.append("the guest was stopped or undefined by someone else during the pass")
            log.warning("%s: stopped or undefined by someone else during the pass", entry.guest.name,
                        extra=journal.guest_fields(entry.guest, result=Outcome.VANISHED))

    def _found_saved(self, entry: GuestPlan) -> Outcome | None:
        """The outcome when a guest found off already has a complete saved state, else None."""
        try:
            guest = self.connections.guest(entry.guest.connection, entry.guest.uuid)
            if not guest.is_active() and guest.has_saved_state():
                return Outcome.SAVED
        except GuestGone:  # a transient guest is gone once saved: look at its file
            if save_file_is_complete(entry.image):
                return Outcome.SAVED_TO_FILE
        except HypervisorError:
            pass
        return None

    def _step(self, entry: GuestPlan, action: Action, messages: list[str]):
        """Run one step, once more after a reconnect if the daemon went away during it. Returns
        its StepResult, or _OFF when the guest was found off or gone."""
        times = StepTimes(time.time())

        def attempt():
            times.restart()
            guest = self.connections.guest(entry.guest.connection, entry.guest.uuid)
            if not guest.is_active():
                return _OFF
            size = self._do(guest, entry, action, times, messages)
            if size is _OFF:
                return _OFF
            return StepResult(action, True, times.started, times.finished or time.time(), bytes=size)

        def after_reconnect(error: HypervisorError):
            messages.append(f"the connection to libvirt was lost during the {action} ({error.message}); "
                            f"reconnected")
            return self._went_through(entry, action, times)

        try:
            return self.connections.call_with_reconnect(entry.guest.connection, attempt,
                                                        after_reconnect=after_reconnect)
        except GuestGone:
            return _OFF
        except HypervisorError as error:
            return StepResult(action, False, times.started, times.finished or time.time(), error=error.message)
        except OSError as error:  # our side of a save to a file: the images directory
            return StepResult(action, False, times.started, times.finished or time.time(),
                              error=f"{error.strerror}: {error.filename}")
        except interrupt.Interrupted:
            raise
        except Exception as error:  # noqa: BLE001 - a surprise fails this step; the chain goes on
            return StepResult(action, False, times.started, times.finished or time.time(),
                              error=unexpected_failure(entry.guest.name, action, error))

    def _went_through(self, entry: GuestPlan, action: Action, times: StepTimes) -> StepResult | None:
        """After a reconnect: a save that completed before the connection dropped, else None."""
        if action in SAVES and self._found_saved(entry) is OUTCOME_OF_STEP[action]:
            return StepResult(action, True, times.started, time.time())
        if action is Action.MIGRATE and migrate.runs_on(entry.peer, entry.guest.uuid):
            return StepResult(action, True, times.started, time.time())
        if action is Action.SAVE_TO_FILE:
            self._after_failed_save_to_file(entry, entry.image, "the connection was lost during it")
        return None

    def _do(self, guest: Guest, entry: GuestPlan, action: Action, times: StepTimes, messages: list[str]):
        """Carry out one step; returns the bytes saved (or None), or _OFF when the guest stopped
        meanwhile. A save's times leave out its wait for a slot."""
        settings = entry.effective.settings
        if action in SAVES:
            with self._save_slot(entry):
                if self._past_deadline():  # admitted just as the deadline came
                    raise OperationTimeout(LATE_FOR_A_SLOT)
                times.restart()
                try:
                    return self._save(guest, entry, action, messages)
                finally:
                    times.finished = time.time()
        if action is Action.MIGRATE:
            give_up_at = self.deadline_at - DEADLINE_RESERVE
            with self.migrate_slots.held(entry.key, give_up_at=give_up_at, late=LATE_FOR_A_MIGRATION_SLOT):
                times.restart()
                try:
                    return migrate.migrate(guest, entry, deadline_at=self.deadline_at, rate=self.link,
                                           messages=messages)
                finally:
                    times.finished = time.time()
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

    @contextlib.contextmanager
    def _save_slot(self, entry: GuestPlan):
        """A save slot held for the block; the wait for it is kept for the guest's result."""
        asked = time.time()
        try:
            with self.save_slots.held(entry.key, give_up_at=self.deadline_at - DEADLINE_RESERVE,
                                      late=LATE_FOR_A_SLOT, who=entry.guest.name, what="a save slot"):
                self._slot_waits[entry.key] = Wait(WaitKind.SLOT, asked, time.time())
                yield
        except (OperationTimeout, interrupt.Interrupted):
            self._slot_waits.setdefault(entry.key, Wait(WaitKind.SLOT, asked, time.time()))
            raise

    def _save(self, guest: Guest, entry: GuestPlan, action: Action, messages: list[str]):
        settings = entry.effective.settings
        if self._wait_for_a_save_under_way(guest, entry, settings.save_timeout, messages):
            return _OFF
        log.info("%s: saving (%s of memory)", entry.guest.name, mb(entry.guest.memory_bytes),
                 extra=journal.guest_fields(entry.guest, action=action, result="begin"))
        # A save interrupted by a daemon restart can leave a running guest paused: make sure the
        # image still comes back running.
        resume_running = entry.guest.state is GuestState.RUNNING and guest.state()[0] is GuestState.PAUSED
        image = entry.managed_image if action is Action.SAVE else entry.image
        self.progress.begin(guest, entry, settings.save_timeout, image)
        try:
            if action is Action.SAVE_TO_FILE:
                images_directory(Path(image).parent)
            # A surprise as a failed save here, so that what a failed save to a file left is seen to.
            with unexpected_as_failure(entry.guest.name, action):
                if action is Action.SAVE:
                    used = guest.save_memory_state(bypass_cache=settings.bypass_cache,
                                                   resume_running=resume_running, channels=entry.save_channels)
                else:
                    used = guest.save_to_file(image, bypass_cache=settings.bypass_cache,
                                              resume_running=resume_running, channels=entry.save_channels)
            if used < entry.save_channels:
                messages.append(f"saved in one stream: libvirt refused {entry.save_channels} channels")
        except HypervisorUnavailable:
            raise  # the save may have completed: the file is kept, and looked at after the reconnect
        except HypervisorError as error:
            if action is Action.SAVE_TO_FILE:
                self._after_failed_save_to_file(entry, image, error.message)
            raise
        finally:
            seen, aborted = self.progress.end(guest)
        if aborted:
            log.info("%s: %s", entry.guest.name, aborted)
        return file_size(image) or seen

    def _after_failed_save_to_file(self, entry: GuestPlan, image: str, why: str) -> None:
        """A save to a file failed (``why``): remove what it wrote only when the guest is known to
        still run, so that the file cannot be a completed save; otherwise keep it for the boot
        pass to decide (it restores a whole file, never a partial one)."""
        try:
            still_running = self.connections.guest(entry.guest.connection, entry.guest.uuid).is_active()
        except GuestGone:
            still_running = False
        except HypervisorError:
            still_running = None
        if not os.path.lexists(image):
            return
        if still_running:
            discard_partial_save(image, entry.guest.name, why)
        else:
            state = "is gone" if still_running is False else "cannot be looked at"
            log.warning("%s: its save to %s failed (%s), but the guest %s: the file is kept for the boot pass",
                        entry.guest.name, image, why, state,
                        extra=journal.guest_fields(entry.guest, action=Action.SAVE_TO_FILE, result="kept"))

    def _wait_for_a_save_under_way(self, guest: Guest, entry: GuestPlan, timeout: float, messages: list[str]) -> bool:
        """When a save of the guest begun by someone else (a pass killed mid-save: libvirtd goes
        on with it) is under way, wait for it rather than start a second one, which would fail
        once the first completes. True when the guest is no longer running afterwards."""
        if not guest.being_saved():
            return False
        text = "a save of it begun before (by an interrupted pass?) is under way: waiting for it"
        log.warning("%s: %s", entry.guest.name, text,
                    extra=journal.guest_fields(entry.guest, action="save", result="wait"))
        messages.append(text)
        give_up_at = min(time.monotonic() + timeout, self.deadline_at - DEADLINE_RESERVE)
        while time.monotonic() < give_up_at:
            if _stopped(guest):
                return True
            if not guest.being_saved():
                break
            interrupt.sleep(SHUTDOWN_POLL)
        return _stopped(guest)


def _stopped(guest: Guest) -> bool:
    """True once the guest no longer runs; a transient guest disappears when it stops."""
    try:
        return not guest.is_active()
    except GuestGone:
        return True
