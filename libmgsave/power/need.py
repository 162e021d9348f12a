"""Pure: how long the shutdown pass would take on a plan, for the battery to be weighed against.

The plan gives each save (or migration) its estimated end from the pass's start, on the
connection's learned rate, the saves before it on that connection counted in. A guest whose
chain begins with a graceful shutdown may take its ``shutdown_timeout``; a poweroff takes
nothing worth counting. Order groups run one after the other, so a guest cannot end before
the groups before it have. Whatever the sum, the pass itself ends by its deadline (what is not
done then is powered off), so the need is never more than the plan's deadline.
"""

from __future__ import annotations

from itertools import groupby

from libmgsave.plan.model import Action, GuestPlan, Plan

_SAVES = (Action.SAVE, Action.SAVE_TO_FILE)


def needed_seconds(plan: Plan) -> float:
    """The seconds from the pass's start until the last guest of ``plan`` is handled, at most its
    deadline; 0 when no guest runs."""
    end = 0.0
    for _order, group in groupby(plan.active, key=lambda entry: entry.order):
        start = end
        for entry in group:
            end = max(end, _guest_end(plan, entry, start))
    deadline = plan.limits.shutdown_deadline if plan.deadline is None else plan.deadline
    return min(end, deadline)


def _guest_end(plan: Plan, entry: GuestPlan, group_start: float) -> float:
    """When the guest is handled at the latest, its group beginning at ``group_start``."""
    head = entry.actions[0]
    if head in _SAVES or head is Action.MIGRATE:
        own = 0.0
        rate = (plan.rates or {}).get(entry.guest.connection)
        if head in _SAVES and rate and rate.bytes_per_second > 0:
            own = entry.guest.memory_bytes / rate.bytes_per_second
        # The estimate counts from the pass's start; the guest's own save from its group's.
        return max(entry.estimate_seconds or 0.0, group_start + own)
    if head is Action.SHUTDOWN:
        return group_start + entry.effective.settings.shutdown_timeout
    return group_start
