"""``mgsave return``: migrate home, now, the guests the last shutdown pass (or ``mgsave
evacuate``) sent to a peer and whose policy has ``come_back``.

The boot pass's plan cut down to those guests: in the boot order, after their ``after``
guests, parallel up to ``limits.max_parallel_starts``. No boot record is written (the host did
not boot): a guest brought home is defined here again, which is what later passes go by.
"""

from __future__ import annotations

import dataclasses

from libmgsave.actions import inputs, passes
from libmgsave.context import Context
from libmgsave.execute import BootPass, dry_run_results
from libmgsave.outcomes import PassResult
from libmgsave.plan import Action, PassKind, Plan


def run_return(ctx: Context) -> PassResult | passes.StoppedEarly:
    return passes.run_pass(ctx, PassKind.BOOT, _carry_out, metrics_label="return")


def _carry_out(run: passes.PassRun):
    ctx = run.ctx
    inputs.check_state_dir(ctx)
    plan = returns_only(inputs.boot_plan(ctx, run.guests, run.policy, run.connections))
    run.announce(plan)
    if ctx.dry_run:
        return plan, dry_run_results(plan)
    return plan, BootPass(plan, run.connections, state_dir=ctx.state).run()


def returns_only(plan: Plan) -> Plan:
    """The boot plan's guests that come home from a peer, and nothing else."""
    return dataclasses.replace(plan, entries=tuple(e for e in plan.entries if e.actions[0] is Action.RETURN))
