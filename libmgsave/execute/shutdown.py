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
from collections.abc import Callable, Sequence
from pathlib import Path

from libmgsave import interrupt
from libmgsave.budget import Budget
from libmgsave.domainxml import DefinitionError, resume_needs
from libmgsave.durable import flush_image
from libmgsave.errors import GuestGone, HypervisorError, HypervisorUnavailable, OperationTimeout
from libmgsave.events import EventKind, Events, Journal, Record, Summary
from libmgsave.execute import migrate
from libmgsave.execute.progress import SaveProgress, file_size
from libmgsave.execute.replanning import Replanner
from libmgsave.execute.scheduler import Cancelled, Schedule
from libmgsave.execute.steps import StepTimes, add_step, unexpected_as_failure, unexpected_failure
from libmgsave.execute.waiting import Waits
from libmgsave.history import ResumeNeeds
from libmgsave.hypervisor import Connections, Guest
from libmgsave.inventory import GuestState
from libmgsave.outcomes import GuestResult, Outcome, StepResult, Wait, WaitKind
from libmgsave.plan import Action, GuestPlan, Plan
from libmgsave.plan.replan import SAVES
from libmgsave.saveimages import save_file_is_complete
from libmgsave.state import RecordWriter, guest_record_key
from libmgsave.state.images import discard_partial_save, images_directory

log = logging.getLogger("mgsave")

SHUTDOWN_POLL = 0.5  # how often a guest asked to shut down is looked at
# A save that ends past the steps' budget still gets this long for its flush: a quick one counts.
FLUSH_GRACE = 1.0

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
    def __init__(self, plan: Plan, connections: Connections, *, record: RecordWriter | None, budget: Budget,
                 earlier: Sequence[GuestResult] = (), settle: Callable[[GuestResult], None] | None = None):
        """``budget``: the pass's deadline; ``earlier``: the results of the pass's earlier rounds
        (this one is over guests started meanwhile), whose saves the live counts go on from;
        ``settle``: the kind of pass's rule for a guest's result once its chain is over."""
        self.plan = plan
        # the kind of pass's rule for a guest's result once its chain is over (actions: Shutdown.settle)
        self.settle = settle
        self.connections = connections
        self.record = record
        self.events = Events([Summary(), Journal(), *([Record(record, _record_key)] if record else [])])
        self.budget = budget
        self.waits = Waits()
        self.schedule = Schedule(plan, self.waits)
        self.save_slots = self.schedule.slots(plan.limits.max_parallel_saves, lambda e: e.actions[0] in SAVES)
        self.migrate_slots = self.schedule.slots(plan.limits.max_parallel_migrations,
                                                 lambda e: e.actions[0] is Action.MIGRATE)
        self.link = migrate.LinkRate()  # saves and migrations share the deadline, not the rate
        # the chains of the guests not yet begun, planned again when the deadline moves down
        self.replanner = Replanner(plan, budget, self.save_slots)
        self.progress: SaveProgress | None = None
        self._saves_before = sum(1 for r in earlier if r.plan.actions[0] in SAVES)
        self._slot_waits: dict = {}  # guest key -> its wait for a save slot, for its result

    def run(self) -> list[GuestResult]:
        """Every active guest's result, in plan order."""
        saves = sum(1 for e in self.plan.active if e.actions[0] in SAVES)
        with SaveProgress(saves, self.budget, self.waits, self.events,
                          settled_before=self._saves_before) as self.progress, self.replanner.listen():
            results = self.schedule.run(lambda entry, _deps: self._guest(entry))
        return [results[e.key] for e in self.plan.active]

    def _guest(self, entry: GuestPlan) -> GuestResult:
        try:
            result = self._chain(entry)
        finally:
            self.save_slots.withdraw(entry.key)  # never keep later guests waiting for this one's turn
            self.migrate_slots.withdraw(entry.key)
        if result.outcome is Outcome.FAILED:
            self.events.say(result, EventKind.EVERY_STEP_FAILED, outcome=Outcome.FAILED)
        self.events.settled(result)  # logged, and its entry written to the record
        return result

    def _chain(self, entry: GuestPlan) -> GuestResult:
        result = GuestResult(entry, Outcome.FAILED, started=time.time())
        result.waits.extend(self.schedule.waited_for_others(entry, result.started))
        for note in entry.notes:
            dropped = note == entry.save_dropped_because
            self.events.say(result, EventKind.SAVE_DROPPED if dropped else EventKind.NOTE, why=note)
        for index, action in enumerate(entry.actions):
            if interrupt.requested():
                self._interrupted(result, action)
                break
            if self.budget.past() and index < len(entry.actions) - 1:
                self.save_slots.withdraw(entry.key)
                self.replanner.passed(entry, action)
                self.events.say(result, EventKind.SKIPPED_FOR_TIME, action=action)
                continue
            if action not in SAVES and self._replanned_away(result, action):
                continue  # a save's turn is taken once it has its slot
            try:
                step = self._step(entry, action, result)
            except interrupt.Interrupted:  # while waiting (for a slot, or the guest to shut down)
                self._interrupted(result, action)
                break
            except Cancelled:  # re-planned while it waited for a save slot, or as it got one
                self._replanned_away(result, action)
                continue
            finally:
                self.replanner.passed(entry, action)
                self.save_slots.withdraw(entry.key)  # its save (if any) has had its turn
                if action is Action.MIGRATE:
                    self.migrate_slots.withdraw(entry.key)
                if entry.key in self._slot_waits:
                    result.waits.append(self._slot_waits.pop(entry.key))
            if step is _OFF:
                self._settle_found_off(result, action)
                break
            add_step(self.events, result, step)
            if step.ok:
                result.outcome = OUTCOME_OF_STEP[action]
                if action is Action.MIGRATE:
                    self._check_arrived(result)
                break
        if self.settle:
            self.settle(result)
        result.finished = time.time()
        return result

    def _replanned_away(self, result: GuestResult, action: Action) -> bool:
        """Whether a re-plan dropped ``action`` from the guest's chain (said so), else it begins."""
        moved = self.replanner.begin(result.plan, action)
        if moved:
            self.events.say(result, EventKind.REPLANNED, action=action, why=moved.why)
        return moved is not None

    def _interrupted(self, result: GuestResult, action: Action) -> None:
        """The pass was asked to stop before ``action`` could run (or while it waited)."""
        signal_name = interrupt.signal_received().name if interrupt.signal_received() else "a stop request"
        result.outcome = Outcome.INTERRUPTED
        self.events.say(result, EventKind.STOPPED_BEFORE_STEP, action=action, why=signal_name,
                        outcome=Outcome.INTERRUPTED)

    def _check_arrived(self, result: GuestResult) -> None:
        """After a migration libvirt called a success: the guest runs, persistent, on the peer."""
        entry = result.plan
        result.peer = entry.peer
        there = migrate.runs_on(entry.peer, entry.guest.uuid)
        if there is not True:
            what = "cannot be reached to check it" if there is None else "does not show it running and persistent"
            self.events.say(result, EventKind.MIGRATION_UNVERIFIED, peer=entry.peer, why=what)

    def _settle_found_off(self, result: GuestResult, action: Action) -> None:
        """The guest was off (or gone) when ``action`` looked at it: say why."""
        entry = result.plan
        found = self._found_saved(entry)
        if not found and entry.peer and any(s.action is Action.MIGRATE for s in result.steps):
            # a migration reported as failed (the connection dropped as it ended) went through
            if migrate.runs_on(entry.peer, entry.guest.uuid):
                result.outcome, result.peer = Outcome.MIGRATED, entry.peer
                self.events.say(result, EventKind.FOUND_MIGRATED, peer=entry.peer, outcome=Outcome.MIGRATED)
                return
        if found:  # a save begun before this step (an interrupted pass's) completed
            result.outcome = found
            self.events.say(result, EventKind.FOUND_SAVED, outcome=found)
        elif any(s.action is Action.SHUTDOWN for s in result.steps):
            # it was asked to shut down and did, just after we stopped waiting for it
            result.outcome = Outcome.SHUT_DOWN
            self.events.say(result, EventKind.SHUT_DOWN_LATE, action=action)
        else:
            result.outcome = Outcome.VANISHED
            self.events.say(result, EventKind.VANISHED, outcome=Outcome.VANISHED)

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

    def _step(self, entry: GuestPlan, action: Action, result: GuestResult):
        """Run one step, once more after a reconnect if the daemon went away during it. Returns
        its StepResult, or _OFF when the guest was found off or gone."""
        times = StepTimes(time.time())

        def attempt():
            times.restart()
            guest = self.connections.guest(entry.guest.connection, entry.guest.uuid)
            if not guest.is_active():
                return _OFF
            size = self._do(guest, entry, action, times, result)
            if size is _OFF:
                return _OFF
            return StepResult(action, True, times.started, times.finished or time.time(), bytes=size)

        def after_reconnect(error: HypervisorError):
            self.events.say(result, EventKind.CONNECTION_LOST, action=action, why=error.message)
            return self._went_through(result, action, times)

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
        except (interrupt.Interrupted, Cancelled):
            raise
        except Exception as error:  # noqa: BLE001 - a surprise fails this step; the chain goes on
            return StepResult(action, False, times.started, times.finished or time.time(),
                              error=unexpected_failure(entry.guest.name, action, error))

    def _went_through(self, result: GuestResult, action: Action, times: StepTimes) -> StepResult | None:
        """After a reconnect: a save that completed before the connection dropped, else None."""
        entry = result.plan
        if action in SAVES and self._found_saved(entry) is OUTCOME_OF_STEP[action]:
            return StepResult(action, True, times.started, time.time())
        if action is Action.MIGRATE and migrate.runs_on(entry.peer, entry.guest.uuid):
            return StepResult(action, True, times.started, time.time())
        if action is Action.SAVE_TO_FILE:
            self._after_failed_save_to_file(result, entry.image, "the connection was lost during it")
        return None

    def _do(self, guest: Guest, entry: GuestPlan, action: Action, times: StepTimes, result: GuestResult):
        """Carry out one step; returns the bytes saved (or None), or _OFF when the guest stopped
        meanwhile. A save's times leave out its wait for a slot."""
        settings = entry.effective.settings
        if action in SAVES:
            with self._save_slot(entry):
                if self.budget.past():  # admitted just as the deadline came
                    raise OperationTimeout(LATE_FOR_A_SLOT)
                if self.replanner.begin(entry, action):  # re-planned just as it got its slot
                    raise Cancelled()
                times.restart()
                try:
                    return self._save(guest, entry, action, result)
                finally:
                    times.finished = time.time()
        if action is Action.MIGRATE:
            with self.migrate_slots.held(entry.key, give_up_at=self.budget.give_up_at(),
                                         late=LATE_FOR_A_MIGRATION_SLOT):
                times.restart()
                try:
                    return migrate.migrate(guest, entry, budget=self.budget, rate=self.link,
                                           say=self.events.to(result))
                finally:
                    times.finished = time.time()
        if action is Action.SHUTDOWN:
            guest.request_shutdown()
            asked = self.budget.now()
            while not _stopped(guest):
                # the budget asked on every look: its end may move down (a UPS's runtime falling)
                if self.budget.now() >= min(asked + settings.shutdown_timeout, self.budget.give_up_at()):
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
            with self.save_slots.held(entry.key, give_up_at=self.budget.give_up_at(),
                                      late=LATE_FOR_A_SLOT, who=entry.guest.name, what="a save slot"):
                self._slot_waits[entry.key] = Wait(WaitKind.SLOT, asked, time.time())
                yield
        except (OperationTimeout, interrupt.Interrupted, Cancelled):
            self._slot_waits.setdefault(entry.key, Wait(WaitKind.SLOT, asked, time.time()))
            raise

    def _save(self, guest: Guest, entry: GuestPlan, action: Action, result: GuestResult):
        settings = entry.effective.settings
        if self._wait_for_a_save_under_way(guest, entry, settings.save_timeout, result):
            return _OFF
        self.events.say(result, EventKind.SAVE_BEGUN, action=action, bytes=entry.guest.memory_bytes)
        # A save interrupted by a daemon restart can leave a running guest paused: make sure the
        # image still comes back running.
        resume_running = entry.guest.state is GuestState.RUNNING and guest.state()[0] is GuestState.PAUSED
        image = entry.managed_image if action is Action.SAVE else entry.image
        result.needs = self._needs(guest, entry)
        self.progress.begin(guest, entry, settings.save_timeout, image)
        try:
            if action is Action.SAVE_TO_FILE:
                images_directory(Path(image).parent)
            # A surprise as a failed save here, so that what a failed save to a file left is seen to.
            with unexpected_as_failure(entry.guest.name, action):
                how = {"bypass_cache": settings.bypass_cache, "resume_running": resume_running,
                       "channels": entry.save_channels, "image_format": _asked_format(entry)}
                used = guest.save_memory_state(**how) if action is Action.SAVE else guest.save_to_file(image, **how)
            if used.channels < entry.save_channels:
                self.events.say(result, EventKind.SAVED_IN_ONE_STREAM, number=entry.save_channels)
            elif how["image_format"] and not used.image_format:
                self.events.say(result, EventKind.SAVED_IN_OWN_FORMAT, what=how["image_format"])
        except HypervisorUnavailable:
            raise  # the save may have completed: the file is kept, and looked at after the reconnect
        except HypervisorError as error:
            if action is Action.SAVE_TO_FILE:
                self._after_failed_save_to_file(result, image, error.message)
            raise
        finally:
            seen, aborted = self.progress.end(guest)
        if aborted:
            self.events.say(result, EventKind.SAVE_ABORTED, why=aborted)
        self._flush(result, image)
        return file_size(image) or seen

    def _needs(self, guest: Guest, entry: GuestPlan) -> ResumeNeeds | None:
        """What resuming the image about to be written needs, from libvirt (the live definition,
        the connection's versions, asked once a pass); None when libvirt cannot say: the save
        goes on all the same, and the boot pass reads the image's own definition instead."""
        try:
            qemu, lib = self.connections.host(entry.guest.connection).versions()
            return resume_needs(guest.definition(), qemu, lib)
        except (HypervisorError, DefinitionError) as error:
            log.debug("%s: what resuming its image needs is not known (%s)", entry.guest.name, error)
        except Exception as error:  # noqa: BLE001 - a surprise here must never cost the guest its save
            log.warning("%s: what resuming its image needs could not be read (%r); saving it all the same",
                        entry.guest.name, error)
        return None

    def _flush(self, result: GuestResult, image: str | None) -> None:
        """The saved image onto stable storage before the guest counts as saved, waited for no
        longer than the steps' budget: its time is the save step's (the learned rate counts it)."""
        if not image or not os.path.lexists(image):  # another host's image (a remote connection)
            return
        flush = flush_image(image, max(FLUSH_GRACE, self.budget.left_for_steps()))
        if flush.done:
            self.events.say(result, EventKind.FLUSHED, path=image, seconds=flush.seconds)
        else:
            self.events.say(result, EventKind.NOT_YET_ON_DISK, path=image, seconds=flush.seconds,
                            why=flush.error or "the deadline came first; the kernel goes on writing it")

    def _after_failed_save_to_file(self, result: GuestResult, image: str, why: str) -> None:
        """A save to a file failed (``why``): remove what it wrote only when the guest is known to
        still run, so that the file cannot be a completed save; otherwise keep it for the boot
        pass to decide (it restores a whole file, never a partial one)."""
        entry = result.plan
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
            self.events.say(result, EventKind.FAILED_SAVE_KEPT, action=Action.SAVE_TO_FILE, path=image, why=why,
                            what=state)

    def _wait_for_a_save_under_way(self, guest: Guest, entry: GuestPlan, timeout: float, result: GuestResult) -> bool:
        """When a save of the guest begun by someone else (a pass killed mid-save: libvirtd goes
        on with it) is under way, wait for it rather than start a second one, which would fail
        once the first completes. True when the guest is no longer running afterwards."""
        if not guest.being_saved():
            return False
        self.events.say(result, EventKind.WAITING_FOR_SAVE_UNDER_WAY)
        give_up_at = self.budget.wait_until(timeout)
        while self.budget.now() < give_up_at:
            if _stopped(guest):
                return True
            if not guest.being_saved():
                break
            interrupt.sleep(SHUTDOWN_POLL)
        return _stopped(guest)


def _record_key(result: GuestResult) -> str:
    return guest_record_key(*result.plan.key)


def _stopped(guest: Guest) -> bool:
    """True once the guest no longer runs; a transient guest disappears when it stops."""
    try:
        return not guest.is_active()
    except GuestGone:
        return True


def _asked_format(entry: GuestPlan) -> str | None:
    """The format the save asks libvirt for: none when the plan leaves it to libvirt, nor for
    channels (``parallelsave`` writes sparse with them)."""
    return str(entry.image_format) if entry.image_format and entry.save_channels == 1 else None
