"""The frame both passes share: the policy, the lock, the connections, the guests; the summary.

``run_pass`` does everything around the pass's own outline (``shutdown.carry_out`` or
``boot.carry_out``): log the start, take the lock, open the connections, look at the guests,
then, with the plan carried out, build the ``PassResult``, log the end and print the summary.
A pass asked to stop before it looked at any guest (waiting for the lock or for the daemon)
ends with ``StoppedEarly`` and does nothing.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from libmgsave import __version__, console, interrupt, journal, lock, metrics, notify, report, units
from libmgsave.actions import inputs
from libmgsave.context import Context
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


@dataclass
class PassRun:
    """What a pass's outline works with."""

    ctx: Context
    kind: PassKind
    policy: Policy
    problems: list[Problem]
    started: float  # time.time()
    deadline_at: float  # time.monotonic(): the end of the shutdown deadline
    connections: Connections
    guests: list
    warnings: list[str]  # connections that did not answer

    def time_left(self) -> float:
        return max(0.0, self.deadline_at - time.monotonic())

    def announce(self, plan: Plan) -> None:
        """Log the plan's warnings and print the plan (without settings) before carrying it out."""
        for warning in plan.warnings:
            log.warning("%s", warning)
        if not self.ctx.json:
            console.out(report.render_plan(plan))


Outline = Callable[[PassRun], tuple[Plan, list[GuestResult]]]


def run_pass(ctx: Context, kind: PassKind, outline: Outline, *, metrics_label: str | None = None
             ) -> PassResult | StoppedEarly:
    """Run ``outline`` in the frame of a ``kind`` pass; its metrics are labelled ``metrics_label``
    (``evacuate``, ``return``: their own, so that they never hide the last shutdown or boot pass)."""
    try:
        return _run(ctx, kind, outline, metrics_label)
    except interrupt.Interrupted:
        signal = interrupt.signal_received().name
        log.warning("%s pass stopped (%s) before it handled any guest: nothing was done", kind, signal)
        notify.status(f"{kind} pass failed: stopped by {signal} before any guest was handled")
        return StoppedEarly(kind, signal)


def _run(ctx: Context, kind: PassKind, outline: Outline, metrics_label: str | None) -> PassResult:
    use = inputs.pass_policy(ctx, keep=not ctx.dry_run)
    policy, problems = use.policy, use.problems
    deadline = ctx.deadline or policy.limits.shutdown_deadline
    started, deadline_at = time.time(), time.monotonic() + deadline
    dry = " (dry run)" if ctx.dry_run else ""
    log.info("%s pass%s begins (mgsave %s)", kind, dry, __version__,
             extra={"MESSAGE_ID": journal.PASS_START, "MGSAVE_PASS": str(kind)})
    notify.status(f"{kind} pass: starting")
    if kind is PassKind.SHUTDOWN and not ctx.dry_run:
        # The unit's TimeoutStopSec fits the default deadline; a policy may give a longer one.
        notify.extend_timeout(deadline + 60)
    with _lock(ctx, kind, deadline):
        connections, warnings = inputs.connect(policy, retry_for=min(inputs.PASS_CONNECT_RETRY, deadline / 4),
                                               give_up_at=deadline_at)
        guests = inputs.inventory(connections, policy, warnings)
        run = PassRun(ctx, kind, policy, problems, started, deadline_at, connections, guests, warnings)
        plan, results = outline(run)
        stopped_by = interrupt.signal_received()
        result = PassResult(kind=kind, dry_run=ctx.dry_run, started=started, finished=time.time(), results=results,
                            warnings=[str(p) for p in problems] + warnings + ctx.warnings + list(plan.warnings),
                            unreachable=tuple(uri for uri in policy.connections if uri not in connections.uris()),
                            bookkeeping_failed=ctx.bookkeeping_failed,
                            interrupted=stopped_by.name if stopped_by else None,
                            policy_problems=tuple(problems), policy=use.choice, host_shutdown=plan.host_shutdown)
    metrics.export(policy.metrics.textfile, result, metrics_label)
    _summarise(ctx, result)
    return result


@contextlib.contextmanager
def _lock(ctx: Context, kind: PassKind, deadline: float):
    """The pass lock (none for a dry run); a pass that cannot take it at all goes on without."""
    if ctx.dry_run:
        yield
        return
    if ctx.state.insecure:  # whoever can write there can hold or replace the lock: never wait for it
        ctx.bookkeeping_failed = True
        ctx.warnings.append(f"ran without the pass lock: the state directory {ctx.state.path} is not safe")
        yield
        return
    wait = ctx.wait if ctx.wait is not None else (deadline if kind is PassKind.SHUTDOWN else BOOT_LOCK_WAIT)
    with lock.pass_lock(ctx.state.path, f"mgsave {kind}", wait=wait) as locked:
        if not locked:
            ctx.bookkeeping_failed = True
            ctx.warnings.append(f"ran without the pass lock: it could not be taken in {ctx.state.path}")
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
