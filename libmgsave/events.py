"""What happened to a guest while a pass carried out its plan, said once.

A ``GuestEvent`` is a value: its ``EventKind`` (a closed set) and the facts (the step, an error's
message, the peer, the seconds...). ``Events`` hands it to every sink of the pass, and each
renders its own text from it: the guest's summary lines (``GuestResult.messages``, which the
record keeps too), the journal (a log line with the ``MGSAVE_*`` fields), and the record (the
guest's entry, written when its outcome is settled). No sink reads another's text.

The texts are in one table, ``RENDERINGS``: a kind's summary line and log line side by side.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from libmgsave import journal, units
from libmgsave.outcomes import GuestResult, Severity

log = logging.getLogger("mgsave")


class EventKind(enum.Enum):
    # the plan's own words, said when the guest's turn comes
    NOTE = enum.auto()
    SAVE_DROPPED = enum.auto()
    LEFT_OFF_AT_A_LOSS = enum.auto()
    # a step: begun, ended, given up
    SAVE_BEGUN = enum.auto()
    MIGRATION_BEGUN = enum.auto()
    STEP_DONE = enum.auto()
    STEP_FAILED = enum.auto()
    SKIPPED_FOR_TIME = enum.auto()
    REPLANNED = enum.auto()  # the deadline moved down: a re-plan dropped this step (plan.replan)
    STOPPED_BEFORE_STEP = enum.auto()
    NOT_STARTED_STOPPED = enum.auto()
    # waited
    WAITING_FOR_SAVE_UNDER_WAY = enum.auto()
    AGENT_SILENT = enum.auto()
    READY_WAIT_CUT_SHORT = enum.auto()
    # degraded on the way
    SAVED_IN_ONE_STREAM = enum.auto()
    SAVED_IN_OWN_FORMAT = enum.auto()
    SAVE_ABORTING = enum.auto()
    SAVE_ABORT_FAILED = enum.auto()
    SAVE_ABORTED = enum.auto()
    SAVE_PROGRESS = enum.auto()
    FLUSHED = enum.auto()
    NOT_YET_ON_DISK = enum.auto()
    FAILED_SAVE_KEPT = enum.auto()
    MIGRATION_PROGRESS = enum.auto()
    MIGRATION_ABORT_FAILED = enum.auto()
    MIGRATION_STOPPED = enum.auto()
    MIGRATED = enum.auto()
    MIGRATION_UNVERIFIED = enum.auto()
    CLOCK_NOT_SYNCED = enum.auto()
    # found as it was
    FOUND_MIGRATED = enum.auto()
    FOUND_SAVED = enum.auto()
    SHUT_DOWN_LATE = enum.auto()
    VANISHED = enum.auto()
    UNDEFINED_AT_BOOT = enum.auto()
    ALREADY_RUNNING = enum.auto()
    NOT_ON_PEER = enum.auto()
    STAYS_ON_PEER = enum.auto()
    # the connection to libvirt
    CONNECTION_LOST = enum.auto()
    CONNECTION_LOST_STARTING = enum.auto()
    START_HAD_GONE_THROUGH = enum.auto()
    START_TRIED_AGAIN = enum.auto()
    # boot
    DEPENDENCY_FAILED = enum.auto()
    BOOTED_FRESH_INSTEAD = enum.auto()
    BOOTS_FRESH = enum.auto()
    RESUME_FAILED = enum.auto()
    WILL_NOT_RESUME = enum.auto()
    IMAGE_NOT_SET_ASIDE = enum.auto()
    NOT_A_REGULAR_FILE = enum.auto()
    RESTORE_FAILED = enum.auto()
    USED_FILE_KEPT = enum.auto()
    NOT_LOOKED_AT = enum.auto()
    # the guest's outcome, settled
    EVERY_STEP_FAILED = enum.auto()
    SETTLED = enum.auto()


@dataclass(frozen=True)
class GuestEvent:
    """One thing that happened to one guest."""

    kind: EventKind
    guest: Any  # a GuestInfo, or anything with .name, .uuid and .connection
    action: object = None  # the step (an Action, or its spelling)
    why: str = ""  # an error's message, a reason, the plan's note, a signal's name
    what: str = ""  # a second text: where an image is, a remark after a step's time
    peer: str = ""
    path: str = ""
    seconds: float | None = None
    bytes: int | None = None
    number: float | None = None  # a percentage, a count, a limit in seconds
    outcome: object = None
    severity: Severity | None = None


EVENT = object()  # in a Rendering: the event's own action or outcome


@dataclass(frozen=True)
class Rendering:
    """How the sinks say one kind of event: ``%(name)s``-style templates over ``_facts``."""

    summary: str | None = None  # the guest's summary line, or None
    level: int = logging.INFO
    log: str | None = None  # the log line, or None
    action: object = None  # MGSAVE_ACTION: EVENT (the event's), a fixed spelling, or None
    result: object = None  # MGSAVE_RESULT: EVENT (the event's outcome), a fixed spelling, or None
    measures: bool = False  # MGSAVE_SECONDS and MGSAVE_BYTES


_W, _E, _I = logging.WARNING, logging.ERROR, logging.INFO
_STOPPED = "the pass was stopped (%(why)s)"
_LOST = "the connection to libvirt was lost during the %(action)s"
_SAVED_BEFORE = "a save of it begun before (by an interrupted pass?) is under way: waiting for it"
_FRESH = "libvirt booted it fresh instead of resuming it: its saved image was not used"

RENDERINGS: dict[EventKind, Rendering] = {
    EventKind.NOTE: Rendering("%(why)s", _I, "%(name)s: %(why)s"),
    EventKind.SAVE_DROPPED: Rendering("%(why)s", _W, "%(name)s: %(why)s", "save", "skipped"),
    EventKind.LEFT_OFF_AT_A_LOSS: Rendering("%(why)s", _W, "%(name)s: %(why)s", EVENT, EVENT),
    EventKind.SAVE_BEGUN: Rendering(None, _I, "%(name)s: saving (%(size)s of memory)", EVENT, "begin"),
    EventKind.MIGRATION_BEGUN: Rendering(None, _I, "%(name)s: migrating to %(peer)s (%(size)s of memory, about "
                                         "%(seconds).0f s)", "migrate", "begin"),
    EventKind.STEP_DONE: Rendering(None, _I, "%(name)s: %(action)s ok in %(seconds).1f s%(sized)s%(what)s", EVENT,
                                   "ok", measures=True),
    EventKind.STEP_FAILED: Rendering(None, _W, "%(name)s: %(action)s failed after %(seconds).1f s: %(why)s", EVENT,
                                     "failed", measures=True),
    EventKind.SKIPPED_FOR_TIME: Rendering("deadline reached: %(action)s skipped", _W,
                                          "%(name)s: shutdown deadline reached, skipping %(action)s", EVENT,
                                          "skipped"),
    EventKind.REPLANNED: Rendering("%(why)s", _W, "%(name)s: %(why)s", EVENT, "skipped"),
    EventKind.STOPPED_BEFORE_STEP: Rendering(_STOPPED + " before its %(action)s: left as it was", _W,
                                             "%(name)s: " + _STOPPED + " before its %(action)s; left as it was",
                                             EVENT, EVENT),
    EventKind.NOT_STARTED_STOPPED: Rendering("not started: " + _STOPPED + " before it%(what)s", _W,
                                             "%(name)s: not started: " + _STOPPED + "%(what)s", EVENT, EVENT),
    EventKind.WAITING_FOR_SAVE_UNDER_WAY: Rendering(_SAVED_BEFORE, _W, "%(name)s: " + _SAVED_BEFORE, "save", "wait"),
    EventKind.AGENT_SILENT: Rendering("not ready: the guest agent did not answer within %(number)g s; dependents "
                                      "start anyway", _W, "%(name)s: guest agent did not answer within %(number)g s; "
                                      "dependents start anyway", "ready", "timeout"),
    EventKind.READY_WAIT_CUT_SHORT: Rendering("its readiness wait was cut short: the pass was stopped"),
    EventKind.SAVED_IN_ONE_STREAM: Rendering("saved in one stream: libvirt refused %(number)d channels"),
    EventKind.SAVED_IN_OWN_FORMAT: Rendering("saved in libvirt's own format: libvirt refused image_format %(what)s"),
    EventKind.SAVE_ABORTING: Rendering(None, _W, "%(name)s: aborting the save: %(why)s", "save", "abort"),
    EventKind.SAVE_ABORT_FAILED: Rendering(None, _W, "%(name)s: could not abort the save: %(why)s"),
    EventKind.SAVE_ABORTED: Rendering(None, _I, "%(name)s: %(why)s"),
    EventKind.SAVE_PROGRESS: Rendering(None, logging.DEBUG, "%(name)s: saving %(what)s", "save", "progress",
                                       measures=True),
    EventKind.FLUSHED: Rendering(None, _I, "%(name)s: image flushed to disk in %(seconds).2f s", "flush", "ok",
                                 measures=True),
    EventKind.NOT_YET_ON_DISK: Rendering("saved, but its image is not yet known to be on disk after %(seconds).1f s "
                                         "(%(why)s)", _W, "%(name)s: saved, but %(path)s is not yet known to be on "
                                         "disk after %(seconds).1f s: %(why)s", "flush", "unfinished",
                                         measures=True),
    EventKind.FAILED_SAVE_KEPT: Rendering(None, _W, "%(name)s: its save to %(path)s failed (%(why)s), but the guest "
                                          "%(what)s: the file is kept for the boot pass", EVENT, "kept"),
    EventKind.MIGRATION_PROGRESS: Rendering(None, _I, "%(name)s: migrating to %(peer)s: %(number).0f%% of %(size)s",
                                            "migrate", "progress"),
    EventKind.MIGRATION_ABORT_FAILED: Rendering(None, _W, "%(name)s: aborting the migration: %(why)s", "migrate",
                                                "abort-failed"),
    EventKind.MIGRATION_STOPPED: Rendering("the pass was stopped during the migration: aborted, it runs on here"),
    EventKind.MIGRATED: Rendering("migrated to %(peer)s in %(seconds).1f s"),
    EventKind.MIGRATION_UNVERIFIED: Rendering("migrated, but %(peer)s %(why)s", _W,
                                              "%(name)s: migrated, but %(peer)s %(why)s", "migrate", "unverified"),
    EventKind.CLOCK_NOT_SYNCED: Rendering("clock not synced (needs the guest agent): %(why)s", _W,
                                          "%(name)s: clock not synced: %(why)s", "sync_time", "failed"),
    EventKind.FOUND_MIGRATED: Rendering("found running on %(peer)s: its migration had gone through", _W,
                                        "%(name)s: found running on %(peer)s: its migration had gone through",
                                        None, EVENT),
    EventKind.FOUND_SAVED: Rendering("found saved: a save begun before (by an interrupted pass, or by someone else) "
                                     "completed; not saved again", _W, "%(name)s: found saved by a save begun before "
                                     "this pass's; not saved again", None, EVENT),
    EventKind.SHUT_DOWN_LATE: Rendering("it shut down after its shutdown request had timed out; %(action)s was not "
                                        "needed", _W, "%(name)s: shut down late, after its shutdown request had timed "
                                        "out", "shutdown", "ok"),
    EventKind.VANISHED: Rendering("the guest was stopped or undefined by someone else during the pass", _W,
                                  "%(name)s: stopped or undefined by someone else during the pass", None, EVENT),
    EventKind.UNDEFINED_AT_BOOT: Rendering("the guest was undefined by someone else during the pass", _W,
                                           "%(name)s: undefined by someone else during the pass", None, EVENT),
    EventKind.ALREADY_RUNNING: Rendering("already running (started by someone else)"),
    EventKind.NOT_ON_PEER: Rendering("it is not on %(peer)s any more (moved or undefined by someone else)", _W,
                                     "%(name)s: not on %(peer)s any more", None, EVENT),
    EventKind.STAYS_ON_PEER: Rendering("stays on %(peer)s: %(why)s", _W, "%(name)s: stays on %(peer)s: %(why)s",
                                       "return", EVENT),
    EventKind.CONNECTION_LOST: Rendering(_LOST + " (%(why)s); reconnected"),
    EventKind.CONNECTION_LOST_STARTING: Rendering(None, _W, "%(name)s: lost the connection while starting it "
                                                  "(%(why)s); reconnected", EVENT, "retry"),
    EventKind.START_HAD_GONE_THROUGH: Rendering(_LOST + "; it had gone through"),
    EventKind.START_TRIED_AGAIN: Rendering(_LOST + "; tried again"),
    EventKind.DEPENDENCY_FAILED: Rendering("starts although %(what)s, which it is after, failed"),
    EventKind.BOOTED_FRESH_INSTEAD: Rendering(_FRESH, _E, "%(name)s: " + _FRESH, "resume", "booted-fresh"),
    EventKind.BOOTS_FRESH: Rendering(None, _E, "%(name)s: %(why)s", "start", "booted-fresh"),
    EventKind.RESUME_FAILED: Rendering("resume failed: %(own_why)s; image %(what)s", _E, "%(name)s: resuming failed "
                                       "(%(why)s); the saved image is %(what)s", "resume", "failed"),
    EventKind.WILL_NOT_RESUME: Rendering("%(why)s; image %(what)s", _W, "%(name)s: %(why)s; the saved image is "
                                         "%(what)s", "resume", "skipped"),
    EventKind.IMAGE_NOT_SET_ASIDE: Rendering("left off: the image could not be set aside, so it is not discarded"),
    EventKind.NOT_A_REGULAR_FILE: Rendering("not restored: %(path)s is not a regular file; left alone", _E,
                                            "%(name)s: not restored: %(path)s is not a regular file", "restore",
                                            "failed"),
    EventKind.RESTORE_FAILED: Rendering("restore failed; a transient guest cannot boot fresh; image %(what)s"),
    EventKind.USED_FILE_KEPT: Rendering("its used save file could not be removed (%(why)s); the boot record marks "
                                        "it used"),
    EventKind.NOT_LOOKED_AT: Rendering("could not look at it after starting: %(why)s"),
    EventKind.EVERY_STEP_FAILED: Rendering(None, _E, "%(name)s: every step failed; the guest may still be running",
                                           None, EVENT),
    EventKind.SETTLED: Rendering(),  # the journal's line is ``_settled_line``'s
}


def _facts(event: GuestEvent) -> dict[str, object]:
    """What a template may name: the event's fields, with the sizes in the units every text uses."""
    name = event.guest.name
    facts = {"name": name, "action": event.action, "why": event.why, "what": event.what, "peer": event.peer,
             "path": event.path, "seconds": event.seconds, "number": event.number, "outcome": event.outcome,
             "size": units.size(event.bytes, none="?"), "sized": f", {units.size(event.bytes)}" if event.bytes else "",
             "own_why": event.why.removeprefix(name + ": ")}
    return {key: (str(value) if isinstance(value, enum.Enum) else value) for key, value in facts.items()
            if value is not None}


def summary_line(event: GuestEvent) -> str | None:
    """The guest's summary line for the event, or None when the summary does not say it."""
    template = RENDERINGS[event.kind].summary
    return None if template is None else template % _facts(event)


class Sink(Protocol):
    def take(self, event: GuestEvent, result: GuestResult | None) -> None: ...


class Summary:
    """The guest's summary lines: ``result.messages`` (the record keeps them, the report shows them)."""

    def take(self, event: GuestEvent, result: GuestResult | None) -> None:
        line = summary_line(event)
        if line is not None and result is not None:
            result.messages.append(line)


def _field(chosen: object, own: object) -> object:
    return own if chosen is EVENT else chosen


class Journal:
    """The log (the journal under systemd): one line an event, with the guest's ``MGSAVE_*`` fields.
    The texts others wrote go as arguments, which ``journal.UntrustedText`` escapes."""

    def take(self, event: GuestEvent, result: GuestResult | None) -> None:
        if event.kind is EventKind.SETTLED:
            _settled_line(event)
            return
        rendering = RENDERINGS[event.kind]
        if rendering.log is None:
            return
        fields = journal.guest_fields(event.guest, action=_field(rendering.action, event.action),
                                      result=_field(rendering.result, event.outcome),
                                      seconds=event.seconds if rendering.measures else None,
                                      bytes_=event.bytes if rendering.measures else None)
        log.log(rendering.level, rendering.log, _facts(event), extra=fields)


# How a guest that did not get its first choice is logged: its priority and MESSAGE_ID.
_OUTCOME_LOG = {
    Severity.DEGRADED: (logging.WARNING, journal.GUEST_DEGRADED, "degraded: did not get its first choice"),
    Severity.FAILED: (logging.ERROR, journal.GUEST_FAILED, "FAILED"),
}


def _settled_line(event: GuestEvent) -> None:
    """The guest's outcome: a warning when it is degraded, an error when it failed (each with its
    MESSAGE_ID, for ``journalctl MESSAGE_ID=...``); info when ok. ``what``: its first choice."""
    fields = journal.guest_fields(event.guest, action=event.action)
    fields.update(MGSAVE_OUTCOME=str(event.outcome), MGSAVE_SEVERITY=event.severity.value)
    if event.severity is Severity.OK:
        log.info("%s: %s", event.guest.name, event.outcome, extra=fields)
        return
    level, message_id, what = _OUTCOME_LOG[event.severity]
    fields["MESSAGE_ID"] = message_id
    log.log(level, "%s: %s, %s (first choice: %s)", event.guest.name, event.outcome, what, event.what, extra=fields)


class Record:
    """The pass's record: a guest's entry written once its outcome is settled."""

    def __init__(self, writer: Any, key: Callable[[GuestResult], str]):
        self.writer = writer  # a state.RecordWriter
        self.key = key  # the entry's key for a guest's result

    def take(self, event: GuestEvent, result: GuestResult | None) -> None:
        if event.kind is not EventKind.SETTLED or result is None:
            return
        self.writer.update_guest(
            self.key(result), outcome=str(result.outcome), steps=[s.to_dict() for s in result.steps],
            waits=[w.to_dict() for w in result.waits], started=result.started, finished=result.finished,
            bytes=result.bytes, messages=list(result.messages), **({"peer": result.peer} if result.peer else {}),
            **({"needs": result.needs.to_dict()} if result.needs else {}),
        )


class Events:
    """One pass's dispatcher: every event to every sink, in the sinks' order."""

    def __init__(self, sinks: Sequence[Sink] = ()):
        self.sinks = tuple(sinks) or (Summary(), Journal())

    def send(self, event: GuestEvent, result: GuestResult | None = None) -> None:
        for sink in self.sinks:
            sink.take(event, result)

    def say(self, result: GuestResult, kind: EventKind, **facts: Any) -> None:
        """An event of ``kind`` about ``result``'s guest, with ``facts`` (``GuestEvent``'s fields)."""
        self.send(GuestEvent(kind, result.plan.guest, **facts), result)

    def to(self, result: GuestResult) -> Callable[..., None]:
        """``say`` bound to one guest's result: ``to(result)(kind, **facts)``."""
        return lambda kind, **facts: self.say(result, kind, **facts)

    def settled(self, result: GuestResult) -> None:
        """The guest's outcome is settled: logged, and its entry written to the record."""
        self.send(settled_event(result), result)


def settled_event(result: GuestResult) -> GuestEvent:
    return GuestEvent(EventKind.SETTLED, result.plan.guest, action=result.achieved_by, outcome=result.outcome,
                      severity=result.severity, what=str(result.plan.first_choice))
