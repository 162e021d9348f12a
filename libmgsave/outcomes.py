"""What a pass did: the results of steps, guests and passes (their closed sets: ``history``).

The executor produces these, the actions record and summarise them, ``report`` renders them
and the exit code is computed from them alone, never from message text.
"""

from __future__ import annotations

import dataclasses
import signal
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from libmgsave import jsonout
from libmgsave.errors import ExitCode
# Action, Outcome, Severity, WaitKind, PassKind: the closed sets live in ``history``, the bottom
# floor; named here too, where the results speak them.
from libmgsave.history import Action, HostShutdown, Outcome, PassKind, Severity, WaitKind  # noqa: F401
from libmgsave.history import ResumeNeeds
from libmgsave.policy import PolicyChoice, PolicyOrigin

if TYPE_CHECKING:
    from libmgsave.errors import Problem
    from libmgsave.plan.model import GuestPlan


@dataclass
class Wait:
    """A span a guest spent waiting (for a slot, or a guest it is after)."""
    kind: WaitKind
    started: float
    finished: float

    def to_dict(self) -> dict:
        """As the record keeps it."""
        return {"kind": str(self.kind), **_span(self.started, self.finished)}

    def to_json(self) -> dict:
        """As ``--json`` shows it (schemas/mgsave.pass.schema.json)."""
        return {"kind": str(self.kind), **_json_span(self.started, self.finished)}


@dataclass
class StepResult:
    """One step of a guest's chain, as it ran."""
    action: Action
    ok: bool
    started: float
    finished: float
    bytes: int | None = None
    error: str | None = None

    @property
    def seconds(self) -> float:
        return self.finished - self.started

    def to_dict(self) -> dict:
        """As the record keeps it."""
        return dict(dataclasses.asdict(self), action=str(self.action), **_span(self.started, self.finished))

    def to_json(self) -> dict:
        """As ``--json`` shows it (schemas/mgsave.pass.schema.json)."""
        return {"action": str(self.action), "ok": self.ok, **_json_span(self.started, self.finished),
                "written_bytes": self.bytes, "error": self.error}


@dataclass
class GuestResult:
    """One guest's whole pass: its plan, its steps and how it ended."""
    plan: GuestPlan
    outcome: Outcome
    steps: list[StepResult] = field(default_factory=list)
    waits: list[Wait] = field(default_factory=list)  # for the timeline (mgsave report)
    messages: list[str] = field(default_factory=list)
    started: float | None = None
    finished: float | None = None
    peer: str | None = None  # migrated (or left on a peer): the peer's URI
    needs: ResumeNeeds | None = None  # saved: what resuming its image needs, read from libvirt at the save

    @property
    def severity(self) -> Severity:
        """OK only when the guest got its first choice. A guest shut down or powered off because
        its save was dropped up front (deadline, room) or failed is DEGRADED: its memory state
        is gone. A dry run's guest is judged by its plan: what the pass would do."""
        if self.outcome is Outcome.PLANNED:
            return Severity.DEGRADED if self.plan.short_of_first_choice else Severity.OK
        step = self.outcome.step
        if self.outcome.severity is Severity.OK and step is not None and step is not self.plan.first_choice:
            return Severity.DEGRADED
        return self.outcome.severity

    @property
    def ok(self) -> bool:
        """The guest got its first choice."""
        return self.severity is Severity.OK

    @property
    def achieved_by(self) -> str | None:
        """The step that achieved the outcome, or None when no step did."""
        step = self.outcome.step
        return str(step) if step is not None and any(s.action is step and s.ok for s in self.steps) else None

    @property
    def seconds(self) -> float:
        return (self.finished - self.started) if self.started and self.finished else 0.0

    @property
    def bytes(self) -> int:
        return sum(s.bytes or 0 for s in self.steps if s.ok)

    @property
    def action(self) -> str:
        """The step that settled the guest (the last one tried), or the plan's action."""
        return str(self.steps[-1].action) if self.steps else str(self.plan.actions[0])

    def to_dict(self) -> dict:
        guest = self.plan.guest
        return {
            "connection": guest.connection,
            "name": guest.name,
            "uuid": guest.uuid,
            "action": self.action,
            "outcome": str(self.outcome),
            "severity": self.severity.value,
            "ok": self.ok,
            "first_choice": str(self.plan.first_choice),
            "achieved_by": self.achieved_by,
            "duration_seconds": round(self.seconds, 3),
            "written_bytes": self.bytes,
            "steps": [s.to_json() for s in self.steps],
            "waits": [w.to_json() for w in self.waits],
            "messages": self.messages,
            "started": jsonout.timestamp(self.started),
            "finished": jsonout.timestamp(self.finished),
            "peer": self.peer,
        }


@dataclass
class PassResult:
    """A whole pass: every guest's result, for the summary, the record and the report."""
    kind: PassKind
    dry_run: bool
    started: float
    finished: float
    results: list[GuestResult]
    warnings: list[str]
    unreachable: tuple[str, ...] = ()  # connections whose guests were not handled at all
    bookkeeping_failed: bool = False  # the lock or a record could not be had
    interrupted: str | None = None  # the signal that stopped the pass early, e.g. "SIGTERM"
    # The policy file was broken and the pass ran on its last valid copy or the built-in
    # defaults (``policy`` says which): its problems.
    policy_problems: tuple[Problem, ...] = ()
    policy: PolicyChoice | None = None  # the policy the pass ran on
    host_shutdown: HostShutdown | None = None  # shutdown: the kind of shutdown it ran for (which chains)
    deadline: dict | None = None  # a shutdown pass on a UPS: the runtime it planned against, the end's moves

    @property
    def ok(self) -> bool:
        """Every guest got its first choice, and the pass was not stopped early."""
        return all(r.ok for r in self.results) and self.interrupted is None

    @property
    def failed(self) -> list[GuestResult]:
        return [r for r in self.results if r.severity is Severity.FAILED]

    @property
    def degraded(self) -> list[GuestResult]:
        return [r for r in self.results if r.severity is Severity.DEGRADED]

    @property
    def on_builtin_defaults(self) -> bool:
        """The policy file was broken and no valid copy of it could be used."""
        return bool(self.policy_problems) and (self.policy is None or self.policy.origin is PolicyOrigin.BUILTIN)

    @property
    def on_last_valid_copy(self) -> bool:
        return self.policy is not None and self.policy.origin is PolicyOrigin.LAST_VALID

    @property
    def severity(self) -> Severity:
        """FAILED when a guest failed, a connection could not be used or a record not written;
        else DEGRADED when a guest did not get its first choice or the policy was broken (the
        guests got its last valid copy or the built-in defaults, not what the file says); else OK."""
        if self.failed or self.unreachable or self.bookkeeping_failed:
            return Severity.FAILED
        if self.degraded or self.policy_problems:
            return Severity.DEGRADED
        return Severity.OK

    @property
    def complete(self) -> bool:
        """Every guest got its first choice, every connection was used and every record written."""
        return self.severity is Severity.OK and self.interrupted is None

    def exit_code(self) -> int:
        """0 ok, 10 degraded, 1 failed; 128 + the signal's number when a signal stopped it early
        (the shell's convention for a process ended by a signal)."""
        if self.interrupted:
            return 128 + signal.Signals[self.interrupted]
        return {Severity.OK: ExitCode.OK, Severity.DEGRADED: ExitCode.GUEST_DEGRADED,
                Severity.FAILED: ExitCode.GUEST_FAILED}[self.severity]

    def to_dict(self) -> dict:
        """The pass's ``--json`` (schemas/mgsave.pass.schema.json)."""
        return jsonout.document("pass", {
            "pass": str(self.kind),
            "dry_run": self.dry_run,
            "ok": self.ok,
            "severity": self.severity.value,
            "degraded": [r.plan.guest.name for r in self.degraded],
            "failed": [r.plan.guest.name for r in self.failed],
            "unreachable": list(self.unreachable),
            "on_builtin_defaults": self.on_builtin_defaults,
            "policy_problems": [p.to_dict() for p in self.policy_problems],
            "policy_used": self.policy.to_dict() if self.policy else None,
            **_json_span(self.started, self.finished),
            "interrupted": self.interrupted,
            "host_shutdown": self.host_shutdown.to_dict() if self.host_shutdown else None,
            "warnings": self.warnings,
            "guests": [r.to_dict() for r in self.results],
            **({"battery": self.deadline} if self.deadline else {}),
        })


def _span(started: float, finished: float) -> dict:
    return {"started": started, "finished": finished, "seconds": round(finished - started, 3)}


def _json_span(started: float, finished: float) -> dict:
    return {"started": jsonout.timestamp(started), "finished": jsonout.timestamp(finished),
            "duration_seconds": round(finished - started, 3)}
