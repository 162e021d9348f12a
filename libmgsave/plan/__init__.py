"""Planning: guests + policy (+ the last shutdown record) in, decisions out. Pure.

Nothing here talks to libvirt or changes the disk. The plan is computed once, as data; ``mgsave
plan`` and ``--dry-run`` print it and the real pass executes exactly it, so what an admin sees is
what happens.

    model     Plan, GuestPlan, Action: the decisions
    ordering  ``after`` resolved to guests, cycles broken, effective order groups
    shutdown  plan_shutdown: fallback chains under the deadline and the free space
    boot      plan_boot: start, resume, restore or leave off, from the last shutdown record
    replan    replan: the guests not yet begun fitted again to a deadline moved down, by priority
"""

from __future__ import annotations

from libmgsave.plan.model import (DEADLINE_RESERVE, DEFAULT_SAVE_THROUGHPUT, FILES_ROOM, Action, GuestKey, GuestPlan,
                                  PassKind, Plan, SaveRate)
from libmgsave.plan.ordering import AfterProblem, after_problems

__all__ = [
    "DEADLINE_RESERVE", "DEFAULT_SAVE_THROUGHPUT", "FILES_ROOM", "Action", "GuestKey", "GuestPlan", "PassKind", "Plan",
    "AfterProblem", "SaveRate", "after_problems", "plan_boot", "plan_shutdown",
]


def __getattr__(name: str):
    """``plan_boot`` and ``plan_shutdown``, imported when first asked for: a pass loads only the
    planner it runs, and what that imports."""
    if name == "plan_boot":
        from libmgsave.plan.boot import plan_boot
        return plan_boot
    if name == "plan_shutdown":
        from libmgsave.plan.shutdown import plan_shutdown
        return plan_shutdown
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
