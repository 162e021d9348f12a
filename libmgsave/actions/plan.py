"""``mgsave plan``: print the plan a pass would carry out now, computed as the pass computes it.

A broken policy file, or a guest named that is not there, fails the command (exit 2) after the
plan is printed: the plan is then the one a pass would carry out on the policy it falls back to,
which a script must not take for the admin's.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from libmgsave import jsonout, report
from libmgsave.actions import inputs
from libmgsave.context import Context, PassLog
from libmgsave.errors import ExitCode
from libmgsave.history import HostShutdown
from libmgsave.plan import PassKind
from libmgsave.spelling import did_you_mean

log = logging.getLogger("mgsave")


@dataclass(frozen=True)
class PlanOptions:
    """``plan``'s own options."""

    which: str | None = None  # one pass only (shutdown or boot)
    guests: tuple[str, ...] = ()  # only these guests (by name), in full
    verbose: bool = False  # every guest in full, with where each setting came from
    host_shutdown: HostShutdown | None = None  # --reboot, --poweroff: which chain each guest gets


@dataclass(frozen=True)
class PlanResult:
    """What ``mgsave plan`` could not plan."""
    policy_broken: bool
    unknown_guests: tuple[str, ...]  # named on the command line, not a guest on any connection

    @property
    def failed(self) -> bool:
        return self.policy_broken or bool(self.unknown_guests)

    def exit_code(self) -> int:
        return ExitCode.BAD_INPUT if self.failed else ExitCode.OK


def run_plan(ctx: Context, options: PlanOptions) -> PlanResult:
    use = inputs.pass_policy(ctx)
    policy, problems = use.policy, use.problems
    connections, warnings = inputs.connect(policy)
    guests = inputs.inventory(connections, policy, warnings)
    plans, met = [], PassLog()
    if options.which in (None, "shutdown"):
        plans.append(inputs.shutdown_plan(ctx, guests, policy, connections=connections,
                                          host_shutdown=options.host_shutdown))
    if options.which in (None, "boot"):
        plans.append(inputs.boot_plan(ctx, met, guests, policy, connections))
    fit = _ups_fit(policy, plans)
    warnings += met.warnings + inputs.policy_warnings(use)
    warnings += inputs.refused_flag_warnings(guests, policy, connections)
    # Only the form asked for: each costs as much as the plan itself with thousands of guests.
    if ctx.json:
        ctx.emit(jsonout.document("plan", {"policy_problems": inputs.problems_dict(problems),
                                           "policy_used": use.choice.to_dict(), "warnings": warnings,
                                           "plans": [_only(p.to_dict(), options.guests) for p in plans],
                                           "ups_fit": fit.to_dict() if fit else None}), "")
    else:
        text = "\n\n".join(report.render_plan(p, guests=options.guests, verbose=options.verbose)
                           for p in plans)
        if fit:
            text += "\n" + "\n".join(report.wrapped([fit.describe()], indent=""))
        if warnings:
            text += "\n" + "\n".join(report.wrapped((f"warning: {w}" for w in warnings), indent=""))
        ctx.emit({}, text)
    return PlanResult(bool(problems), _unknown(options.guests, guests, connections.uris()))


def _ups_fit(policy, plans):  # noqa: ANN001, ANN202
    """With a UPS in ``power:``, whether the shutdown plan fits its runtime now (None otherwise:
    nothing of NUT's loaded)."""
    shutdown = next((p for p in plans if p.kind is PassKind.SHUTDOWN), None)
    if policy.power is None or shutdown is None:
        return None
    from libmgsave.power.fit import plan_fit

    return plan_fit(policy.power, shutdown)


def _unknown(named: tuple[str, ...], guests, uris: list[str]) -> tuple[str, ...]:
    """The names that are no guest's, each logged as an error with the nearest guests' names."""
    names = [g.name for g in guests]
    unknown = tuple(name for name in dict.fromkeys(named) if name not in names)
    for name in unknown:
        near = did_you_mean(name, names)
        log.error("no guest named %r on %s%s", name, ", ".join(uris), f" ({near})" if near else "")
    return unknown


def _only(plan: dict, guests: tuple[str, ...]) -> dict:
    """The plan with only the guests named (all when none is)."""
    if guests:
        plan["guests"] = [g for g in plan["guests"] if g["name"] in guests]
    return plan
