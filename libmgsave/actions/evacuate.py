"""``mgsave evacuate``: live-migrate every running guest that has peers to one of them, now.

The shutdown pass's outline with every guest's chain cut down to its ``migrate`` step: a guest
with no peer that can take it (or none at all) stays running here, untouched. The shutdown
record says where each one went, so that ``mgsave return`` and the next boot pass (with
``come_back``) can bring them home, and ``mgsave status`` shows them on their peer.
"""

from __future__ import annotations

import dataclasses

from libmgsave.actions import passes, shutdown
from libmgsave.context import Context
from libmgsave.outcomes import PassResult
from libmgsave.plan import PassKind
from libmgsave.policy import Match, Policy, Rule, ShutdownStep


def run_evacuate(ctx: Context) -> PassResult | passes.StoppedEarly:
    return passes.run_pass(ctx, PassKind.SHUTDOWN, _carry_out, metrics_label="evacuate")


def _carry_out(run: passes.PassRun):
    return shutdown.carry_out(dataclasses.replace(run, policy=migrate_only(run.policy)), staying_is_fine=True)


def migrate_only(policy: Policy) -> Policy:
    """The policy with one more rule, last, matching every guest: its chain is the migration
    alone (the plan drops it, and leaves the guest alone, when no peer can take it)."""
    rule = Rule(index=len(policy.rules), match=Match(), settings={"on_shutdown": (ShutdownStep.MIGRATE,)},
                comment="mgsave evacuate: migrate only")
    return dataclasses.replace(policy, rules=(*policy.rules, rule))
