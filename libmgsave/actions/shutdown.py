"""``mgsave shutdown``: save (or shut down, or power off) every running guest, as the policy says.

The outline (``Shutdown.carry_out``): plan; record which guests are running before touching
any; carry out the plan; handle the guests someone started meanwhile; write the final record
with the save rate learned (``passes.Pass.run`` does the frame: lock, connections, summary).
"""

from __future__ import annotations

import contextlib
import functools
import logging

from libmgsave import interrupt, journal
from libmgsave.actions import going_down, inputs, passes
from libmgsave.context import Context
from libmgsave.errors import HypervisorError
from libmgsave.execute import ShutdownPass, dry_run_results, skipped_results
from libmgsave.history import HostShutdown
from libmgsave.outcomes import GuestResult, Outcome, PassResult
from libmgsave.plan import PassKind, Plan
from libmgsave.saveimages import save_file_is_complete
from libmgsave.state import RecordWriter, guest_record_key
from libmgsave.state.carry_over import files_to_check, starting_entries
from libmgsave.state.records import current_boot_id, pending_entry
from libmgsave.state.throughput import RECORD_KEY as SAVE_RATES
from libmgsave.state.throughput import kept_rates, measured_rates

log = logging.getLogger("mgsave")

ARRIVAL_POLL = 1.0  # seconds between two looks at a guest still arriving


def run_shutdown(ctx: Context, options: passes.PassOptions, *, if_host_going_down: bool = False,
                 host_shutdown: HostShutdown | None = None) -> PassResult | passes.StoppedEarly | going_down.PassHeldBack:
    """``if_host_going_down``: mgsave.service's stop, which saves nothing on a host that stays up;
    ``host_shutdown``: the kind of shutdown (--reboot, --poweroff), else the stop asks systemd."""
    if if_host_going_down:
        held_back = going_down.hold_back()
        if isinstance(held_back, going_down.PassHeldBack):
            return held_back
        host_shutdown = host_shutdown or held_back  # the kind the host goes down by
    return Shutdown(host_shutdown).run(ctx, options)


class Shutdown(passes.Pass):
    """The shutdown pass: every running guest through its chain; its record, begun before any
    guest is touched, says which guests ran and, once finished, what became of each."""

    kind = runs_as = PassKind.SHUTDOWN

    def __init__(self, host_shutdown: HostShutdown | None = None) -> None:
        self.record: RecordWriter | None = None
        self.host_shutdown = host_shutdown  # which chain each guest gets; None: not known (on_shutdown)

    def carry_out(self, run: passes.PassRun) -> tuple[Plan, list[GuestResult]]:
        inputs.check_state_dir(run.ctx, run.log)
        # a guest still arriving (a peer is migrating it here) cannot be saved yet: the later looks take it up
        arriving = [g for g in run.guests if g.settling]
        _say_arriving(arriving, set())
        plan = inputs.shutdown_plan(run.ctx, [g for g in run.guests if not g.settling], run.policy,
                                    deadline=run.budget.time_left(), connections=run.connections,
                                    host_shutdown=self.host_shutdown)
        run.announce(plan)
        if run.options.dry_run:
            return plan, dry_run_results(plan) + skipped_results(plan)
        self.record = self.begin_record(run, plan)
        with _following_the_battery(run):
            results = self.execute(run, plan)
            results = _late_guests(self, run, results + skipped_results(plan))
        self.finish_record(run, results)
        return plan, results

    def battery(self, policy, limit: float):  # noqa: ANN001, ANN201 - power/ is imported only on a UPS
        if policy.power is None or self.kind is not PassKind.SHUTDOWN:
            return None
        from libmgsave.power.battery import at_start  # noqa: PLC0415 - a host without a UPS loads none of it
        return at_start(policy.power, limit)

    def execute(self, run: passes.PassRun, plan: Plan, earlier: list[GuestResult] = ()) -> list[GuestResult]:
        """The plan's guests through their chains, each result settled by this kind's rule;
        ``earlier``: the results of the rounds before this one (the live counts go on from them)."""
        carried_out = ShutdownPass(plan, run.connections, record=self.record, budget=run.budget, earlier=earlier,
                                   settle=functools.partial(self.settle, run))
        try:
            return carried_out.run()
        finally:
            run.replans.extend(carried_out.replanner.rounds)

    def settle(self, run: passes.PassRun, result: GuestResult) -> None:
        """What counts as ok for a guest once its chain is over: for a shutdown pass, its result
        as it came."""

    def begin_record(self, run: passes.PassRun, plan: Plan) -> RecordWriter:
        """Write the record's guest list before any guest is touched: every guest running now,
        plus what an earlier pass of this host cycle recorded (see ``state.carry_over``)."""
        state = run.ctx.state
        run.log.gather(lambda warnings: state.set_aside_untrusted("shutdown", warnings))
        previous = state.last_shutdown(quiet=True)
        boot = state.last_boot(quiet=True)
        complete = {path for path in files_to_check(previous) if save_file_is_complete(path)}
        boot_id = current_boot_id()
        entries = starting_entries(previous, boot, plan, complete, boot_id=boot_id)
        # the save rates learned so far, kept for the connections this pass will not measure
        return RecordWriter.begin(state.shutdown_record, "shutdown", entries,
                                  extra={SAVE_RATES: kept_rates(previous, {}), "boot_id": boot_id,
                                         "host_shutdown": plan.host_shutdown.to_dict() if plan.host_shutdown else None,
                                         **self.battery_record(run)})

    @staticmethod
    def battery_record(run: passes.PassRun) -> dict:
        """The record's ``battery`` (on a UPS only: a record without one reads as before)."""
        decisions = passes.battery_record(run)
        return {} if decisions is None else {"battery": decisions}

    def learned(self, results: list[GuestResult]) -> dict:
        """What the record keeps of what the pass learned: the save rates."""
        return {SAVE_RATES: kept_rates(self.record.data, measured_rates(results))}

    def finish_record(self, run: passes.PassRun, results: list[GuestResult]) -> None:
        stopped_by = interrupt.signal_received()
        self.record.finish(**self.learned(results), **self.battery_record(run), ok=all(r.ok for r in results),
                           interrupted=stopped_by.name if stopped_by else None)
        if self.record.error:
            run.log.bookkeeping_failed_because(
                f"the shutdown record {self.record.path} could not be written ({self.record.error}): the next "
                f"boot pass will go by the guests' saved images alone")


def _late_guests(this: Shutdown, run: passes.PassRun, results: list[GuestResult]) -> list[GuestResult]:
    """Guests started by someone else while the pass ran, or migrated here by a peer that is
    going down too, would be left running and killed with the host: once the plan is done, look
    again, and again until a look finds no guest to handle (bounded by the deadline), and put
    each one found through its chain. A guest still arriving (paused while its migration or
    start goes on) cannot be saved yet: it is waited for, and handled once it runs here."""
    waiting_for = {g.key for g in run.guests if g.settling}  # said so already
    while not run.budget.past() and not interrupt.requested():
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
                interrupt.sleep(min(ARRIVAL_POLL, run.budget.left_for_steps()))
            except interrupt.Interrupted:
                break
            continue
        plan = inputs.shutdown_plan(run.ctx, late, run.policy, deadline=run.budget.time_left(),
                                    connections=run.connections, host_shutdown=this.host_shutdown)
        for entry in plan.active:
            log.warning("%s: started by someone else (or migrated here) during the pass; handling it now",
                        entry.guest.name, extra=journal.guest_fields(entry.guest, result="late"))
            this.record.add_guest(guest_record_key(*entry.guest.key), pending_entry(entry))
        more = this.execute(run, plan, results)  # settled by the pass's own rule, as the first guests were
        results = _merge_late(results, more + skipped_results(plan))
    return results


@contextlib.contextmanager
def _following_the_battery(run: passes.PassRun):
    """While the block runs, the UPS re-read every ``power.poll``: the budget's end moves down
    when the runtime falls faster than planned (each move kept in ``run.deadline_moves``)."""
    if run.battery is None:
        yield
        return
    from libmgsave.power.battery import RuntimeFollower  # noqa: PLC0415 - only on a UPS
    follower = RuntimeFollower(run.policy.power, run.budget)
    try:
        with follower:
            yield
    finally:
        run.deadline_moves.extend(follower.moves)


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
