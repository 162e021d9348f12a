"""Carrying out a plan, and reporting what happened; nothing here decides anything the plan has not.

    scheduler  order groups, dependencies (computed once), bounded slots that respect the deadline
    steps      one step: timed, logged, added to the guest's result
    progress   running saves watched: the log, systemd's status, hung saves aborted
    shutdown   ShutdownPass: each running guest through its fallback chain
    boot       BootPass: start, resume or restore each guest

One guest's failure is recorded in its result and never stops the others. Every libvirt call
goes through ``hypervisor.Connections``, which reconnects when a daemon went away.
"""

from __future__ import annotations

from libmgsave.events import EventKind, Events
from libmgsave.outcomes import GuestResult, Outcome
from libmgsave.plan import Plan

__all__ = ["BootPass", "ShutdownPass", "dry_run_results", "skipped_results"]


def dry_run_results(plan: Plan) -> list[GuestResult]:
    """What a dry run reports: each active guest's plan, as if carried out."""
    return [GuestResult(e, Outcome.PLANNED, messages=[e.reason, *e.notes]) for e in plan.active]


def skipped_results(plan: Plan) -> list[GuestResult]:
    """The guests the plan leaves alone, with why. One it leaves off at a loss (``GuestPlan.
    left_off_because``: it may run on a peer that could not be asked) is ``left-off``, degraded,
    and logged so."""
    results, events = [], Events()
    for entry in (e for e in plan.entries if e.skipped):
        if entry.left_off_because:
            result = GuestResult(entry, Outcome.LEFT_OFF, peer=entry.peer)
            events.say(result, EventKind.LEFT_OFF_AT_A_LOSS, why=entry.left_off_because, action=entry.first_choice,
                       outcome=Outcome.LEFT_OFF)
            events.settled(result)
        else:
            result = GuestResult(entry, Outcome.SKIPPED, messages=[entry.reason])
        results.append(result)
    return results


def __getattr__(name: str):
    """``BootPass`` and ``ShutdownPass``, imported when first asked for: a pass loads only the
    executor it runs."""
    if name == "BootPass":
        from libmgsave.execute.boot import BootPass
        return BootPass
    if name == "ShutdownPass":
        from libmgsave.execute.shutdown import ShutdownPass
        return ShutdownPass
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
