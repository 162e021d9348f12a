"""Pure: how much battery the shutdown pass of a plan needs, for the runtime to be weighed against.

The plan gives each save (or migration) its estimated end from the pass's start, on the
connection's learned rate, the saves before it on that connection counted in. A guest whose
chain begins with a graceful shutdown may take its ``shutdown_timeout``; a poweroff takes
nothing worth counting. Order groups run one after the other, so a guest cannot end before
the groups before it have. Whatever the sum, the pass itself ends by its deadline (what is not
done then is powered off), so the guests' part is never more than the plan's deadline.

The pass the watch starts must still be able to carry that plan out: on battery it plans
against the runtime it reads as it begins, less the margin and the host's final flush
(``power.deadline``), and a save must end before the deadline's reserve. So the need counts,
besides the guests' steps, that reserve, the final flush and the time from the shutdown command
to the pass's own reading of the UPS (``START_LAG``). Without them, a watch that started the
shutdown at exactly the guests' time plus the margin left a pass with no time for any save.
"""

from __future__ import annotations

from itertools import groupby

from libmgsave.budget import DEADLINE_RESERVE
from libmgsave.plan.model import Action, GuestPlan, Plan
from libmgsave.power.deadline import FINAL_FLUSH

_SAVES = (Action.SAVE, Action.SAVE_TO_FILE)
# seconds from the shutdown command to the pass reading the UPS (logind, mgsave-early starting
# the pass at its announcement): 0.2-1 s in the test rig's systemd container on a loaded 2-core
# machine; the rest is for a busier host, and a reading the watch took up to a poll late
START_LAG = 5.0


def needed_seconds(plan: Plan) -> float:
    """The seconds of battery the pass of ``plan`` needs before the margin: its guests' time (at
    most its deadline) with the deadline's reserve, then the final flush and the start lag; 0
    when no guest runs."""
    if not plan.active:
        return 0.0
    end = 0.0
    for _order, group in groupby(plan.active, key=lambda entry: entry.order):
        start = end
        for entry in group:
            end = max(end, _guest_end(plan, entry, start))
    deadline = plan.limits.shutdown_deadline if plan.deadline is None else plan.deadline
    return min(end + DEADLINE_RESERVE, deadline) + FINAL_FLUSH + START_LAG


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
