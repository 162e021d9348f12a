"""``mgsave return``: migrate home, now, the guests the last shutdown pass (or ``mgsave
evacuate``) sent to a peer and whose policy has ``come_back``.

The boot pass's plan cut down to those guests: in the boot order, after their ``after``
guests, parallel up to ``limits.max_parallel_starts``. No boot record is written (the host did
not boot): the shutdown record's entry of each guest brought home says so instead ('returned',
marked as return's own), so that no later pass counts it away any more; a guest whose return
failed keeps its entry, with why, and stays on its peer as far as every later pass is concerned.
"""

from __future__ import annotations

import dataclasses

from libmgsave import interrupt
from libmgsave.actions import inputs, passes
from libmgsave.context import Context
from libmgsave.execute import BootPass, dry_run_results
from libmgsave.outcomes import GuestResult, Outcome, PassResult
from libmgsave.plan import Action, PassKind, Plan
from libmgsave.state import GuestEntry, RecordWriter, guest_record_key
from libmgsave.state.records import RecordedBy


def run_return(ctx: Context, options: passes.PassOptions) -> PassResult | passes.StoppedEarly:
    return Return().run(ctx, options)


class Return(passes.Pass):
    """The return: logged, summarised and locked as a boot pass, with metrics of its own; its
    record is the shutdown record's entries of the guests it took up."""

    kind, runs_as = PassKind.RETURN, PassKind.BOOT

    def carry_out(self, run: passes.PassRun) -> tuple[Plan, list[GuestResult]]:
        ctx = run.ctx
        inputs.check_state_dir(ctx, run.log)
        plan = returns_only(inputs.boot_plan(ctx, run.log, run.guests, run.policy, run.connections))
        run.announce(plan)
        if run.options.dry_run:
            return plan, dry_run_results(plan)
        results = BootPass(plan, run.connections, state_dir=ctx.state).run()
        self.write_record(run, results)
        return plan, results

    def write_record(self, run: passes.PassRun, results: list[GuestResult]) -> None:
        """The shutdown record's entries of the guests this pass took up: 'returned' for those
        brought home, a note for those still on their peer (their entry says so as before)."""
        state = run.ctx.state
        record = state.last_shutdown(quiet=True)
        if record is None or not results:
            return
        home, noted = {}, dict(record["guests"])
        for r in results:
            key = guest_record_key(*r.plan.key)
            if key not in record["guests"]:
                continue
            if r.outcome is Outcome.RETURNED:
                home[key] = GuestEntry.from_dict(record["guests"][key]).replace(
                    outcome=r.outcome, peer=None, messages=r.messages, steps=[s.to_dict() for s in r.steps],
                    started=r.started, finished=r.finished).to_dict()
            else:
                noted[key] = GuestEntry.from_dict(record["guests"][key]).replace(
                    note=f"mgsave return did not bring it home ({r.outcome}): {'; '.join(r.messages)}").to_dict()
        stopped_by = interrupt.signal_received()
        writer = RecordWriter.amend(state.shutdown_record, "shutdown", dict(record, guests=noted), home,
                                    by=RecordedBy.RETURN)
        writer.finish(ok=all(r.ok for r in results), interrupted=stopped_by.name if stopped_by else None)
        if writer.error:
            run.log.bookkeeping_failed_because(
                f"the shutdown record {writer.path} could not be written ({writer.error}): it still counts the "
                f"guests brought home as on their peer")


def returns_only(plan: Plan) -> Plan:
    """The boot plan's guests that come home from a peer, and nothing else."""
    return dataclasses.replace(plan, entries=tuple(e for e in plan.entries if e.actions[0] is Action.RETURN))
