"""``mgsave check``: validate the policy, then warn about what would fight it on this host."""

from __future__ import annotations

import sys
from dataclasses import dataclass

from libmgsave import conflicts
from libmgsave.actions import inputs
from libmgsave.context import Context
from libmgsave.errors import HypervisorUnavailable, PolicyError, Problem
from libmgsave.plan import dependency_warnings


@dataclass(frozen=True)
class CheckResult:
    problems: tuple[Problem, ...]  # empty: the policy is valid
    warnings: tuple[str, ...]


def run_check(ctx: Context) -> CheckResult:
    try:
        policy = inputs.strict_policy(ctx)
    except PolicyError as error:
        _report_problems(ctx, error.problems)
        return CheckResult(tuple(error.problems), ())
    warnings = conflicts.host_conflicts()
    layout = conflicts.daemon_layout()
    warnings += _guest_warnings(policy)
    source = policy.source or f"built-in defaults (no file at {ctx.policy_path})"
    text = [f"{source}: the policy is valid", f"libvirt daemons: {layout}"] + [f"warning: {w}" for w in warnings]
    ctx.emit({"ok": True, "policy": policy.source, "problems": [], "warnings": warnings,
              "daemon_layout": layout.kind}, "\n".join(text))
    return CheckResult((), tuple(warnings))


def _guest_warnings(policy) -> list[str]:
    """Guests whose libvirt autostart flag fights the policy, and 'after' names that match no
    guest or form a cycle; or why the guests could not be looked at."""
    try:
        connections, warnings = inputs.connect(policy)
    except HypervisorUnavailable as error:
        return [f"could not look at the guests: {error.message}"]
    guests = inputs.inventory(connections, policy)
    return warnings + conflicts.guest_conflicts(policy, guests) + dependency_warnings(guests, policy)


def _report_problems(ctx: Context, problems: list[Problem]) -> None:
    if ctx.json:
        ctx.emit({"ok": False, "policy": ctx.policy_path, "problems": inputs.problems_dict(problems),
                  "warnings": []}, "")
        return
    for problem in problems:
        print(problem, file=sys.stderr)
    noun = "problem" if len(problems) == 1 else "problems"
    print(f"{ctx.policy_path}: {len(problems)} {noun}; no change was made", file=sys.stderr)
