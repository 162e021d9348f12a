"""``mgsave evacuate``: live-migrate every running guest that has peers to one of them, now.

A shutdown pass with every guest's chain cut down to its ``migrate`` step: a guest with no peer
that can take it (or none at all) stays running here, untouched, and one whose migration fails
stays too, which is no failure (degraded: 'stayed'), whenever the pass found it (those started
meanwhile too). The shutdown record says where each one went, so that ``mgsave return`` and
the next boot pass (with ``come_back``) can bring them home, and ``mgsave status`` shows them
on their peer. Evacuate adds its entries to that record (each marked as its own) and leaves
the others as the last shutdown pass wrote them: guests saved then are still resumed by the
next boot pass.
"""

from __future__ import annotations

import dataclasses

from libmgsave.actions import passes, shutdown
from libmgsave.context import Context
from libmgsave.errors import HypervisorError
from libmgsave.hypervisor import Connections
from libmgsave.outcomes import GuestResult, Outcome, PassResult
from libmgsave.plan import GuestPlan, PassKind, Plan
from libmgsave.policy import Match, Policy, Rule, SameChain, ShutdownStep
from libmgsave.state import RecordWriter, guest_record_key
from libmgsave.state.records import RecordedBy, current_boot_id, pending_entry


def run_evacuate(ctx: Context, options: passes.PassOptions) -> PassResult | passes.StoppedEarly:
    return Evacuate().run(ctx, options)


class Evacuate(shutdown.Shutdown):
    """The evacuation: logged, summarised and locked as a shutdown pass, with metrics of its own."""

    kind, runs_as = PassKind.EVACUATE, PassKind.SHUTDOWN

    def carry_out(self, run: passes.PassRun) -> tuple[Plan, list[GuestResult]]:
        return super().carry_out(dataclasses.replace(run, policy=migrate_only(run.policy)))

    def settle(self, run: passes.PassRun, result: GuestResult) -> None:
        """A guest whose migration (its whole chain) failed and that runs on here stayed: degraded,
        not failed. Every guest the pass handles, those started meanwhile too."""
        if result.outcome is Outcome.FAILED and _still_here(run.connections, result.plan):
            result.outcome = Outcome.STAYED
            result.messages.append("it runs on here")

    def begin_record(self, run: passes.PassRun, plan: Plan) -> RecordWriter:
        """The shutdown record with this pass's guests added, before any is touched: the entries of
        the guests it does not migrate stay as they are, whatever pass or boot wrote them."""
        state = run.ctx.state
        run.log.gather(lambda warnings: state.set_aside_untrusted("shutdown", warnings))
        ours = {guest_record_key(*entry.guest.key): pending_entry(entry) for entry in plan.active}
        return RecordWriter.amend(state.shutdown_record, "shutdown", state.last_shutdown(quiet=True), ours,
                                  by=RecordedBy.EVACUATE, extra={"boot_id": current_boot_id()})

    def learned(self, results: list[GuestResult]) -> dict:
        """Nothing: the save rates are the shutdown pass's own, and an evacuation saves nothing."""
        return {}


def _still_here(connections: Connections, entry: GuestPlan) -> bool:
    try:
        return connections.guest(entry.guest.connection, entry.guest.uuid).is_active()
    except HypervisorError:
        return False


def migrate_only(policy: Policy) -> Policy:
    """The policy with one more rule, last, matching every guest: its chain is the migration
    alone (the plan drops it, and leaves the guest alone, when no peer can take it), whatever
    its on_reboot chain (an evacuation is no shutdown of either kind)."""
    rule = Rule(index=len(policy.rules), match=Match(),
                settings={"on_shutdown": (ShutdownStep.MIGRATE,), "on_reboot": SameChain.ON_SHUTDOWN},
                comment="mgsave evacuate: migrate only")
    return dataclasses.replace(policy, rules=(*policy.rules, rule))
