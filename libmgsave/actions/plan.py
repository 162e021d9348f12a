"""``mgsave plan``: print the plan a pass would carry out now, computed as the pass computes it."""

from __future__ import annotations

from libmgsave import jsonout, report
from libmgsave.actions import inputs
from libmgsave.actions.check import rule_lines
from libmgsave.context import Context


def run_plan(ctx: Context) -> None:
    use = inputs.pass_policy(ctx)
    policy, problems = use.policy, use.problems
    connections, warnings = inputs.connect(policy)
    guests = inputs.inventory(connections, policy, warnings)
    plans = []
    if ctx.which in (None, "shutdown"):
        plans.append(inputs.shutdown_plan(ctx, guests, policy, connections=connections))
    if ctx.which in (None, "boot"):
        plans.append(inputs.boot_plan(ctx, guests, policy, connections))
    warnings += ctx.warnings + inputs.policy_warnings(use)
    lines = rule_lines(policy)
    # Only the form asked for: each costs as much as the plan itself with thousands of guests.
    if ctx.json:
        ctx.emit(jsonout.document("plan", {"policy_problems": inputs.problems_dict(problems),
                                           "policy_used": use.choice.to_dict(), "warnings": warnings,
                                           "plans": [_only(p.to_dict(lines), ctx.guests) for p in plans]}), "")
        return
    text = "\n\n".join(report.render_plan(p, guests=ctx.guests, verbose=ctx.verbose, rule_lines=lines)
                       for p in plans)
    if warnings:
        text += "\n" + "\n".join(report.wrapped((f"warning: {w}" for w in warnings), indent=""))
    ctx.emit({}, text)


def _only(plan: dict, guests: tuple[str, ...]) -> dict:
    """The plan with only the guests named (all when none is)."""
    if guests:
        plan["guests"] = [g for g in plan["guests"] if g["name"] in guests]
    return plan
