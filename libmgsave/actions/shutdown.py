"""``mgsave shutdown``: save (or shut down, or power off) every running guest, as the policy says.

The outline: plan; record which guests are running before touching any; carry out the plan;
handle the guests someone started meanwhile; write the final record with the save rate
learned; summarise (``passes.run_pass`` does the frame: lock, connections, summary).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from libmgsave import interrupt, journal
from libmgsave.actions import going_down, inputs, passes
from libmgsave.context import Context
from libmgsave.errors import HypervisorError
from libmgsave.execute import ShutdownPass, dry_run_results, skipped_results
from libmgsave.outcomes import GuestResult, Outcome, PassResult
from libmgsave.plan import DEADLINE_RESERVE, PassKind, Plan
from libmgsave.saveimages import save_file_is_complete
from libmgsave.state import RecordWriter, guest_record_key
from libmgsave.state.carry_over import files_to_check, starting_entries
from libmgsave.state.records import current_boot_id, pending_entry
from libmgsave.state.throughput import RECORD_KEY as SAVE_RATES
from libmgsave.state.throughput import kept_rates, measured_rates

log = logging.getLogger("mgsave")

ARRIVAL_POLL = 1.0  # seconds between two looks at a guest still arriving


def run_shutdown(ctx: Context) -> PassResult | passes.StoppedEarly | going_down.PassHeldBack:
    if ctx.if_host_going_down:  # mgsave.service's stop: not on a host that stays up
        held_back = going_down.hold_back()
        if isinstance(held_back, going_down.PassHeldBack):
            return held_back
        ctx.host_shutdown = ctx.host_shutdown or held_back  # the kind the host goes down by
    return passes.run_pass(ctx, PassKind.SHUTDOWN, carry_out)


RecordStart = Callable[[Context, Plan], RecordWriter]


def carry_out(run: passes.PassRun, *, staying_is_fine: bool = False,
              begin_record: RecordStart | None = None) -> tuple[Plan, list[GuestResult]]:
    """``staying_is_fine``: for evacuate, a guest still running here after its chain is degraded,
    not failed; ``begin_record``: how the pass starts its record (by default, a new shutdown record)."""
    ctx = run.ctx
    inputs.check_state_dir(ctx)
    # a guest still arriving (a peer is migrating it here) cannot be saved yet: the later looks take it up
    arriving = [g for g in run.guests if g.settling]
    _say_arriving(arriving, set())
    plan = inputs.shutdown_plan(ctx, [g for g in run.guests if not g.settling], run.policy, deadline=run.time_left(),
                                connections=run.connections)
    run.announce(plan)
    if ctx.dry_run:
        return plan, dry_run_results(plan) + skipped_results(plan)
    record = (begin_record or _begin_record)(ctx, plan)
    results = ShutdownPass(plan, run.connections, record=record, deadline_at=run.deadline_at,
                           staying_is_fine=staying_is_fine).run()
    results = _late_guests(run, record, results + skipped_results(plan))
    _finish_record(ctx, record, results)
    return plan, results


def _begin_record(ctx: Context, plan: Plan) -> RecordWriter:
    """Write the record's guest list before any guest is touched: every guest running now, plus
    what an earlier pass of this host cycle recorded (see ``state.carry_over``)."""
    ctx.state.set_aside_untrusted("shutdown", ctx.warnings)
    previous = ctx.state.last_shutdown(quiet=True)
    boot = ctx.state.last_boot(quiet=True)
    complete = {path for path in files_to_check(previous) if save_file_is_complete(path)}
    boot_id = current_boot_id()
    entries = starting_entries(previous, boot, plan, complete, boot_id=boot_id)
    # the save rates learned so far, kept for the connections this pass will not measure
    return RecordWriter.begin(ctx.state.shutdown_record, "shutdown", entries,
                              extra={SAVE_RATES: kept_rates(previous, {}), "boot_id": boot_id,
                                     "host_shutdown": plan.host_shutdown.to_dict() if plan.host_shutdown else None})


def _finish_record(ctx: Context, record: RecordWriter, results: list[GuestResult]) -> None:
    stopped_by = interrupt.signal_received()
    # the save rates are the shutdown pass's own (a pass that amends its record saves nothing)
    rates = {SAVE_RATES: kept_rates(record.data, measured_rates(results))} if record.by is None else {}
    record.finish(**rates, ok=all(r.ok for r in results), interrupted=stopped_by.name if stopped_by else None)
    if record.error:
        ctx.bookkeeping_failed = True
        ctx.warnings.append(f"the shutdown record {record.path} could not be written ({record.error}): the next "
                            f"boot pass will go by the guests' saved images alone")


def _late_guests(run: passes.PassRun, record: RecordWriter, results: list[GuestResult]) -> list[GuestResult]:
    """Guests started by someone else while the pass ran, or migrated here by a peer that is
    going down too, would be left running and killed with the host: once the plan is done, look
    again, and again until a look finds no guest to handle (bounded by the deadline), and put
    each one found through its chain. A guest still arriving (paused while its migration or
    start goes on) cannot be saved yet: it is waited for, and handled once it runs here."""
    waiting_for = {g.key for g in run.guests if g.settling}  # said so already
    while (remaining := run.deadline_at - time.monotonic()) > DEADLINE_RESERVE and not interrupt.requested():
        # every step failed, (evacuate) it stayed here, or the plan leaves it alone: not again
        left_running = {r.plan.key for r in results if _left_running(r)}
        found = [g for g in _running_guests(run) if g.key not in left_running]
        late = [g for g in found if not g.settling]
        if not late:
            arriving = [g for g in found if g.settling]
            if not arriving:
                break
            _say_arriving(arriving, waiting_for)
            try:
                interrupt.sleep(min(ARRIVAL_POLL, remaining - DEADLINE_RESERVE))
            except interrupt.Interrupted:
                break
            continue
        plan = inputs.shutdown_plan(run.ctx, late, run.policy, deadline=remaining, connections=run.connections)
        for entry in plan.active:
            log.warning("%s: started by someone else (or migrated here) during the pass; handling it now",
                        entry.guest.name, extra=journal.guest_fields(entry.guest, result="late"))
            record.add_guest(guest_record_key(*entry.guest.key), pending_entry(entry))
        more = ShutdownPass(plan, run.connections, record=record, deadline_at=run.deadline_at).run()
        results = _merge_late(results, more + skipped_results(plan))
    return results


def _left_running(result: GuestResult) -> bool:
    """A guest the pass leaves running here on purpose (its later looks do not take it up): every
    step failed, (evacuate) it stayed here, or the plan left it alone while it ran."""
    if result.outcome is Outcome.SKIPPED:
        return result.plan.guest.state.is_active
    return result.outcome in (Outcome.FAILED, Outcome.STAYED)


def _say_arriving(arriving: list, said: set) -> None:
    for guest in arriving:
        if guest.key not in said:
            said.add(guest.key)
            log.warning("%s: being migrated (or started) here during the pass; handled once it runs",
                        guest.name, extra=journal.guest_fields(guest, result="late"))


def _running_guests(run: passes.PassRun) -> list:
    details = inputs.needs_details(run.policy)
    running = []
    for host in run.connections.hosts():
        try:
            running += [g for g in host.guests(with_details=details) if g.state.is_active]
        except HypervisorError as error:
            log.warning("could not look for guests started during the pass on %s: %s", host.uri, error.message)
    return running


def _merge_late(results: list[GuestResult], late: list[GuestResult]) -> list[GuestResult]:
    merged = list(results)
    index = {r.plan.key: i for i, r in enumerate(merged)}
    for r in late:
        r.messages.insert(0, "started by someone else during the pass: handled after the others")
        if r.plan.key in index:  # stopped by this pass, then started again
            merged[index[r.plan.key]] = r
        else:
            merged.append(r)
    return merged
