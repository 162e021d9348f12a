"""One step of one guest (a save, a start...): timed, logged, and added to the guest's result.

A step that raises anything unexpected (a bug, a library's surprise) has failed like one libvirt
refused: the guest goes on to the next step of its chain, never past the rest of it.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass

from libmgsave import interrupt, journal
from libmgsave.errors import HypervisorError, OperationRefused
from libmgsave.execute.progress import mb
from libmgsave.outcomes import GuestResult, Severity, StepResult
from libmgsave.plan import Action

log = logging.getLogger("mgsave")


@dataclass
class StepTimes:
    """Filled in by the code that runs a step inside ``timed_step``."""

    started: float
    finished: float | None = None  # when the work ended, if before the block does
    bytes: int | None = None
    note: str = ""  # said after "ok in 1.2 s" in the log, e.g. " (booted fresh, not resumed)"

    def restart(self) -> None:
        """The step's work begins now (after waiting for a slot, which is not part of it)."""
        self.started = time.time()


@contextlib.contextmanager
def unexpected_as_failure(guest_name: str, action: Action | str) -> Iterator[None]:
    """The block as one step: mgsave's own errors and a stop request pass as they are; any other
    exception is raised as OperationRefused, the error of a step that failed, so that whoever
    runs the chain goes on to its next step."""
    try:
        yield
    except (HypervisorError, interrupt.Interrupted):
        raise
    except Exception as error:  # noqa: BLE001 - one step's surprise must not cost the guest its chain
        raise OperationRefused(unexpected_failure(guest_name, action, error)) from error


def unexpected_failure(guest_name: str, action: Action | str, error: Exception) -> str:
    """What a step that raised ``error`` (not one of mgsave's) says; logged with its traceback."""
    log.error("%s: internal error in its %s (%r); taken as a failed %s", guest_name, action, error, action,
              exc_info=error)
    return f"{guest_name}: {action}: internal error: {error!r}"


@contextlib.contextmanager
def timed_step(result: GuestResult, action: Action) -> Iterator[StepTimes]:
    """Run a step in the block. When the block ends, the step is added to ``result`` as done and
    logged; when it raises HypervisorError (or anything unexpected, as ``unexpected_as_failure``
    turns it into one), the step is added as failed with the error's message, logged, and the
    error raised on."""
    times = StepTimes(time.time())
    try:
        with unexpected_as_failure(result.plan.guest.name, action):
            yield times
    except HypervisorError as error:
        add_step(result, StepResult(action, False, times.started, time.time(), error=error.message))
        raise
    add_step(result, StepResult(action, True, times.started, times.finished or time.time(), bytes=times.bytes),
             times.note)


def add_step(result: GuestResult, step: StepResult, note: str = "") -> None:
    """Add a finished step to the guest's result, and log it."""
    result.steps.append(step)
    guest = result.plan.guest
    fields = journal.guest_fields(guest, action=step.action, result="ok" if step.ok else "failed",
                                  seconds=step.seconds, bytes_=step.bytes)
    if step.ok:
        size = f", {mb(step.bytes)}" if step.bytes else ""
        log.info("%s: %s ok in %.1f s%s%s", guest.name, step.action, step.seconds, size, note, extra=fields)
    else:
        log.warning("%s: %s failed after %.1f s: %s", guest.name, step.action, step.seconds, step.error,
                    extra=fields)


# How a guest that did not get its first choice is logged: its priority and MESSAGE_ID.
_OUTCOME_LOG = {
    Severity.DEGRADED: (logging.WARNING, journal.GUEST_DEGRADED, "degraded: did not get its first choice"),
    Severity.FAILED: (logging.ERROR, journal.GUEST_FAILED, "FAILED"),
}


def log_outcome(result: GuestResult) -> None:
    """The guest's outcome, once it is settled: a warning when it is degraded, an error when it
    failed (each with its MESSAGE_ID, for ``journalctl MESSAGE_ID=...``); info when ok."""
    guest, severity = result.plan.guest, result.severity
    fields = journal.guest_fields(guest, action=result.achieved_by)
    fields.update(MGSAVE_OUTCOME=str(result.outcome), MGSAVE_SEVERITY=severity.value)
    if severity is Severity.OK:
        log.info("%s: %s", guest.name, result.outcome, extra=fields)
        return
    level, message_id, what = _OUTCOME_LOG[severity]
    fields["MESSAGE_ID"] = message_id
    log.log(level, "%s: %s, %s (first choice: %s)", guest.name, result.outcome, what, result.plan.first_choice,
            extra=fields)
