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

from libmgsave.execute.boot import BootPass
from libmgsave.execute.shutdown import ShutdownPass
from libmgsave.outcomes import GuestResult, Outcome
from libmgsave.plan import Plan

__all__ = ["BootPass", "ShutdownPass", "dry_run_results", "skipped_results"]


def dry_run_results(plan: Plan) -> list[GuestResult]:
    """What a dry run reports: each active guest's plan, as if carried out."""
    return [GuestResult(e, Outcome.PLANNED, messages=[e.reason, *e.notes]) for e in plan.active]


def skipped_results(plan: Plan) -> list[GuestResult]:
    """The guests the plan leaves alone, with why."""
    return [GuestResult(e, Outcome.SKIPPED, messages=[e.reason]) for e in plan.entries if e.skipped]
