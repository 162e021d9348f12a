"""``mgsave boot``: start, resume or leave off every guest, per its autostart setting.

The outline (``Boot.carry_out``): plan from the last shutdown record; carry out the plan; write
the boot record (saying whether the pass was stopped early); summarise (``passes.Pass.run``
does the frame).
"""

from __future__ import annotations

import logging
import time

from libmgsave import interrupt
from libmgsave.actions import inputs, passes
from libmgsave.context import Context
from libmgsave.execute import BootPass, dry_run_results, skipped_results
from libmgsave.outcomes import GuestResult, PassResult
from libmgsave.plan import PassKind, Plan
from libmgsave.state import write_json_atomic
from libmgsave.state.records import boot_record, current_boot_id
from libmgsave.state.writer import os_error_text

log = logging.getLogger("mgsave")


def run_boot(ctx: Context, options: passes.PassOptions, *, restore_unrecorded: bool = False
             ) -> PassResult | passes.StoppedEarly:
    """``restore_unrecorded``: also restore transient guests' save files no record names."""
    return Boot(restore_unrecorded).run(ctx, options)


class Boot(passes.Pass):
    """The boot pass: its record, written once every guest is handled, says what became of each."""

    kind = runs_as = PassKind.BOOT

    def __init__(self, restore_unrecorded: bool = False) -> None:
        self.restore_unrecorded = restore_unrecorded

    def carry_out(self, run: passes.PassRun) -> tuple[Plan, list[GuestResult]]:
        ctx = run.ctx
        inputs.check_state_dir(ctx, run.log)
        plan = inputs.boot_plan(ctx, run.log, run.guests, run.policy, run.connections,
                                restore_unrecorded=self.restore_unrecorded)
        run.announce(plan)
        if run.options.dry_run:
            return plan, dry_run_results(plan) + skipped_results(plan)
        started = time.time()
        boot_pass = BootPass(plan, run.connections, state_dir=ctx.state)
        results = boot_pass.run() + skipped_results(plan)
        for problem in boot_pass.cleanup_errors:
            run.log.bookkeeping_failed_because(problem)
        self.write_record(run, started, results)
        _usage, warning = inputs.kept_images(ctx, run.policy)
        if warning:
            run.log.warn(warning)
        return plan, results

    def write_record(self, run: passes.PassRun, started: float, results: list[GuestResult]) -> None:
        state = run.ctx.state
        run.log.gather(lambda warnings: state.set_aside_untrusted("boot", warnings))
        stopped_by = interrupt.signal_received()
        path = state.boot_record
        try:
            write_json_atomic(path, boot_record(started, results, stopped_by.name if stopped_by else None,
                                                 current_boot_id()))
        except OSError as error:
            reason = os_error_text(error)
            log.error("cannot write the boot record %s (%s)", path, reason)
            run.log.bookkeeping_failed_because(f"the boot record {path} could not be written ({reason})")
