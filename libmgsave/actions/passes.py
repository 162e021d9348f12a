"""The frame every pass shares, and the kinds of pass.

A kind of pass (``Pass``: shutdown, boot, and the on-demand evacuate and return) is its own
small type: its outline (``carry_out``), its record from begin to finish, and its rules (what
counts as ok for a guest, which metrics label it writes). ``Pass.run`` does everything around
the outline: log the start, take the lock, open the connections, look at the guests, then,
with the plan carried out, build the ``PassResult``, log the end and print the summary. A pass
asked to stop before it looked at any guest (waiting for the lock or for the daemon) ends with
``StoppedEarly`` and does nothing.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import time
from dataclasses import dataclass, field
from typing import ClassVar

from libmgsave import __version__, console, interrupt, journal, lock, metrics, notify, report, units
from libmgsave.actions import inputs
from libmgsave.budget import Budget
from libmgsave.context import Context, PassLog
from libmgsave.errors import Problem
from libmgsave.hypervisor import Connections
from libmgsave.outcomes import GuestResult, PassResult, Severity
from libmgsave.plan import PassKind, Plan
from libmgsave.policy import Policy

log = logging.getLogger("mgsave")

BOOT_LOCK_WAIT = 300.0  # how long a boot pass waits for another pass's lock by default


@dataclass(frozen=True)
class StoppedEarly:
    """The pass was stopped (``signal``) before it handled any guest: nothing was done."""

    kind: PassKind
    signal: str

    def exit_code(self) -> int:
        return 128 + signal.Signals[self.signal]  # the shell's convention for a process ended by a signal


@dataclass(frozen=True)
class PassOptions:
    """A pass's own options, from the command line."""

    dry_run: bool = False
    wait: float | None = None  # how long to wait for the pass lock; None: the pass's default
    deadline: float | None = None  # shutdown, evacuate: instead of limits.shutdown_deadline


@dataclass(frozen=True)
class PassRun:
    """What a pass's outline works with."""

    ctx: Context
    options: PassOptions
    log: PassLog  # the problems met on the way, for the summary and the exit code
    policy: Policy
    problems: list[Problem]
    started: float  # time.time()
    budget: Budget  # the shutdown deadline: the pass's one clock for every step and re-plan
    connections: Connections
    guests: list
    warnings: list[str]  # connections that did not answer
    battery: object = None  # a shutdown pass on a UPS: the deadline it read (power.deadline.BatteryDeadline)
    deadline_moves: list = field(default_factory=list)  # power.battery.DeadlineMove, as the runtime fell
    replans: list = field(default_factory=list)  # execute.replanning.ReplanRound, on each move

    def announce(self, plan: Plan) -> None:
        """Log the plan's warnings and print the plan (without settings) before carrying it out."""
        for warning in plan.warnings:
            log.warning("%s", warning)
        if not self.ctx.json:
            console.out(report.render_plan(plan))
            if self.battery:  # the runtime the plan's deadline came from
                console.out(f"Shutdown deadline: {self.battery.why}")


class Pass:
    """A kind of pass: its outline (``carry_out``), its record, its rules. ``kind`` is its own
    (its metrics' label: evacuate and return never hide the last shutdown or boot pass);
    ``runs_as`` is the pass it is a form of: whose plan it makes, whose lock it takes, as which
    it is logged, summarised and reported (evacuate is a shutdown pass cut down to migrations,
    return a boot pass cut down to the guests coming home)."""

    kind: ClassVar[PassKind]
    runs_as: ClassVar[PassKind]

    def carry_out(self, run: PassRun) -> tuple[Plan, list[GuestResult]]:
        """The pass's outline: its plan and every guest's result."""
        raise NotImplementedError

    def battery(self, policy: Policy, limit: float):  # noqa: ANN201 - power/ is imported only on a UPS
        """The pass's deadline on the UPS's runtime (a ``BatteryDeadline``), or None: only a
        shutdown pass on a policy with ``power:`` plans against a battery."""
        return None

    def run(self, ctx: Context, options: PassOptions) -> PassResult | StoppedEarly:
        """Carry out the pass in its frame."""
        try:
            return _run(ctx, options, self)
        except interrupt.Interrupted:
            kind, stopped_by = self.runs_as, interrupt.signal_received().name
            log.warning("%s pass stopped (%s) before it handled any guest: nothing was done", kind, stopped_by)
            notify.status(f"{kind} pass failed: stopped by {stopped_by} before any guest was handled")
            return StoppedEarly(kind, stopped_by)


def _run(ctx: Context, options: PassOptions, this: Pass) -> PassResult:
    use = inputs.pass_policy(ctx, keep=not options.dry_run)
    policy, problems, kind, pass_log = use.policy, use.problems, this.runs_as, PassLog()
    deadline = options.deadline or policy.limits.shutdown_deadline
    started, battery = time.time(), this.battery(policy, deadline)
    deadline = battery.seconds if battery else deadline
    budget = Budget.starting_now(deadline)
    dry = " (dry run)" if options.dry_run else ""
    log.info("%s pass%s begins (mgsave %s)", kind, dry, __version__,
             extra={"MESSAGE_ID": journal.PASS_START, "MGSAVE_PASS": str(kind)})
    notify.status(f"{kind} pass: starting")
    if kind is PassKind.SHUTDOWN and not options.dry_run:
        # The unit's TimeoutStopSec fits the default deadline; a policy may give a longer one.
        notify.extend_timeout(deadline + 60)
    with _lock(ctx, options, kind, deadline, pass_log):
        connections, warnings = inputs.connect(policy, retry_for=min(inputs.PASS_CONNECT_RETRY, deadline / 4),
                                               give_up_at=budget.ends_at())
        guests = inputs.inventory(connections, policy, warnings)
        run = PassRun(ctx, options, pass_log, policy, problems, started, budget, connections, guests, warnings,
                      battery)
        plan, results = this.carry_out(run)
        stopped_by = interrupt.signal_received()
        result = PassResult(kind=kind, dry_run=options.dry_run, started=started, finished=time.time(),
                            results=results,
                            warnings=([str(p) for p in problems] + warnings + pass_log.warnings + list(plan.warnings)
                                      + _battery_warnings(run)),
                            unreachable=tuple(uri for uri in policy.connections if uri not in connections.uris()),
                            bookkeeping_failed=pass_log.bookkeeping_failed,
                            interrupted=stopped_by.name if stopped_by else None,
                            policy_problems=tuple(problems), policy=use.choice, host_shutdown=plan.host_shutdown,
                            deadline=_deadline(run))
    metrics.export(policy.metrics.textfile, result, str(this.kind))
    _summarise(ctx, result)
    return result


def _battery_warnings(run: PassRun) -> list[str]:
    """What the summary says of the battery: a UPS that could not be used, each time the end moved."""
    if not run.battery:
        return []
    return ([run.battery.warning] if run.battery.warning else []) + [m.describe() for m in run.deadline_moves] + [
        r.describe() for r in run.replans]


def battery_record(run: PassRun) -> list[dict] | None:
    """The record's ``battery``: each decision on the UPS's runtime so far, in time order (None
    without a UPS)."""
    if not run.battery:
        return None
    decisions = [run.battery.decision(run.started), *(m.decision() for m in run.deadline_moves),
                 *(r.decision() for r in run.replans)]
    return [d.to_dict() for d in sorted(decisions, key=lambda d: d.at)]


def _deadline(run: PassRun) -> dict | None:
    """The pass's deadline against the battery, for ``--json``: None without a UPS."""
    if not run.battery:
        return None
    return {**run.battery.to_dict(), "moves": [m.to_dict() for m in run.deadline_moves],
            "replans": [r.to_dict() for r in run.replans]}


@contextlib.contextmanager
def _lock(ctx: Context, options: PassOptions, kind: PassKind, deadline: float, pass_log: PassLog):
    """The pass lock (none for a dry run); a pass that cannot take it at all goes on without."""
    if options.dry_run:
        yield
        return
    if ctx.state.insecure:  # whoever can write there can hold or replace the lock: never wait for it
        pass_log.bookkeeping_failed_because(f"ran without the pass lock: the state directory {ctx.state.path} "
                                            f"is not safe")
        yield
        return
    wait = options.wait if options.wait is not None else (deadline if kind is PassKind.SHUTDOWN else BOOT_LOCK_WAIT)
    with lock.pass_lock(ctx.state.path, f"mgsave {kind}", wait=wait) as locked:
        if not locked:
            pass_log.bookkeeping_failed_because(f"ran without the pass lock: it could not be taken in "
                                                f"{ctx.state.path}")
        yield


def _summarise(ctx: Context, result: PassResult) -> None:
    failed, degraded, total = len(result.failed), len(result.degraded), len(result.results)
    dry = " (dry run)" if result.dry_run else ""
    defaults = (f"; it ran on {result.policy.describe()}: the policy file is broken" if result.policy_problems
                and result.policy else "")
    # A dry run says what would happen, never what happened.
    counts = "%d would be degraded, %d would fail" if result.dry_run else "%d degraded, %d failed"
    log.log(_PASS_END_LEVEL[result.severity], "%s pass%s ends: %s, " + counts + ", %s%s",
            result.kind, dry, units.plural(total, "guest"), degraded, failed,
            units.duration(result.finished - result.started), defaults,
            extra={"MESSAGE_ID": journal.PASS_END, "MGSAVE_PASS": str(result.kind),
                   "MGSAVE_SEVERITY": result.severity.value,
                   **({"MGSAVE_SHUTDOWN_KIND": str(result.host_shutdown.kind)} if result.host_shutdown else {}),
                   **({"MGSAVE_POLICY": str(result.policy.origin)} if result.policy else {})})
    notify.status(_final_status(result))
    if ctx.json:
        ctx.emit(result.to_dict(), "")
    else:
        ctx.emit({}, report.render_result(result))


def _final_status(result: PassResult) -> str:
    """What ``systemctl status`` keeps showing after the pass: the counts and, when the pass was
    not ok (the unit is then failed, on purpose: see mgsave(8), EXIT STATUS), the first guests
    that were not and why the pass ran on another policy than the file."""
    failed, degraded, total = len(result.failed), len(result.degraded), len(result.results)
    dry, would = (" (dry run)", "would be ") if result.dry_run else ("", "")
    text = (f"{result.kind} pass{dry}: done, {total - failed - degraded}/{total} guests {would}ok"
            + (f", {degraded} {would}degraded" if degraded else "") + (f", {failed} failed" if failed else ""))
    if result.severity is Severity.OK:
        return text
    named = [f"{r.plan.guest.name} {r.outcome}" for r in (result.failed + result.degraded)[:3]]
    text += f" ({', '.join(named)}{', ...' if failed + degraded > 3 else ''})" if named else ""
    if result.policy_problems and result.policy:
        text += f"; ran on {result.policy.describe()}: the policy file is broken"
    return f"{text}; {result.severity.value}: 'journalctl -t mgsave -b' says more"


_PASS_END_LEVEL = {Severity.OK: logging.INFO, Severity.DEGRADED: logging.WARNING, Severity.FAILED: logging.ERROR}
