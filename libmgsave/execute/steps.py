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

from libmgsave import interrupt
from libmgsave.errors import HypervisorError, OperationRefused
from libmgsave.events import EventKind, Events
from libmgsave.outcomes import GuestResult, StepResult
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
def timed_step(events: Events, result: GuestResult, action: Action) -> Iterator[StepTimes]:
    """Run a step in the block. When the block ends, the step is added to ``result`` as done and
    logged; when it raises HypervisorError (or anything unexpected, as ``unexpected_as_failure``
    turns it into one), the step is added as failed with the error's message, logged, and the
    error raised on."""
    times = StepTimes(time.time())
    try:
        with unexpected_as_failure(result.plan.guest.name, action):
            yield times
    except HypervisorError as error:
        add_step(events, result, StepResult(action, False, times.started, time.time(), error=error.message))
        raise
    add_step(events, result, StepResult(action, True, times.started, times.finished or time.time(), bytes=times.bytes),
             times.note)


def add_step(events: Events, result: GuestResult, step: StepResult, note: str = "") -> None:
    """Add a finished step to the guest's result, and say so (``note``: said after its time)."""
    result.steps.append(step)
    kind = EventKind.STEP_DONE if step.ok else EventKind.STEP_FAILED
    events.say(result, kind, action=step.action, seconds=step.seconds, bytes=step.bytes, why=step.error or "",
               what=note)
