"""``mgsave check``: validate the policy, then warn about what would fight it on this host.

Warnings about a rule (an ``after:`` naming no guest or forming a cycle, a rule matching no
guest, a setting fighting libvirt's own flags) carry the rule's file:line and are grouped per
rule. With ``--strict`` every warning counts as an error (exit 2), for CI and configuration
management; an unreachable hypervisor is such a warning.
"""

from __future__ import annotations

from dataclasses import dataclass

from libmgsave import conflicts, console, imageformat, jsonout, units, untrusted
from libmgsave.actions import held, inputs
from libmgsave.actions.held import HeldImage
from libmgsave.channels import UNKNOWN, choose
from libmgsave.conflicts import Finding
from libmgsave.context import Context
from libmgsave.errors import ExitCode, HypervisorUnavailable, PolicyError, Problem
from libmgsave.history import RecordedPass
from libmgsave.matching import resolve
from libmgsave.plan import after_problems
from libmgsave.plan.model import rule_lines
from libmgsave.policy import Policy
from libmgsave.restorable import Verdict
from libmgsave.state import StateDir


@dataclass(frozen=True)
class LocatedWarning:
    """A warning of ``check``, with the rule it is about and where that rule is, when it has one."""

    message: str
    rule: str | None = None  # a rule's label, or "defaults"
    file: str | None = None
    line: int | None = None

    @property
    def where(self) -> str | None:
        """``file:line: rule``, or None for a warning about no rule."""
        if self.rule is None:
            return None
        place = f"{self.file}:{self.line}" if self.file and self.line else (self.file or "")
        return f"{place}: {self.rule}" if place else self.rule

    def __str__(self) -> str:
        return f"{self.where}: {self.message}" if self.where else self.message

    def to_dict(self) -> dict:
        return {"message": self.message, "rule": self.rule, "file": self.file, "line": self.line}


@dataclass(frozen=True)
class CheckResult:
    """What ``mgsave check`` found in the policy."""
    problems: tuple[Problem, ...]  # empty: the policy is valid
    warnings: tuple[LocatedWarning, ...]
    strict: bool = False  # --strict: the warnings are errors too

    @property
    def failed(self) -> bool:
        return bool(self.problems) or (self.strict and bool(self.warnings))

    def exit_code(self) -> int:
        return ExitCode.BAD_INPUT if self.failed else ExitCode.OK


def run_check(ctx: Context, *, strict: bool = False) -> CheckResult:
    """``strict``: every warning counts as an error."""
    try:
        policy = inputs.strict_policy(ctx)
    except PolicyError as error:
        _report_problems(ctx, error.problems, strict)
        return CheckResult(tuple(error.problems), (), strict)
    power_problems, power_findings = _power_check(policy)
    if power_problems:
        _report_problems(ctx, power_problems, strict, "the policy file itself is valid")
        return CheckResult(tuple(power_problems), (), strict)
    layout = conflicts.daemon_layout()
    images: list[HeldImage] = []
    findings = [Finding(w) for w in conflicts.host_conflicts()] + _guest_findings(policy, ctx.state, images) + power_findings
    if ctx.state.insecure:
        findings.append(Finding(ctx.state.insecure_warning()))
    lines = _finding_lines(policy)
    warnings = tuple(dict.fromkeys(locate(policy.source, lines, f) for f in findings))
    result = CheckResult((), warnings, strict)
    source = policy.source or f"built-in defaults (no file at {ctx.policy_path})"
    text = [f"{source}: the policy is valid", f"libvirt daemons: {layout}", *render_warnings(warnings)]
    text += [untrusted.message(f"saved image: {i.text}") for i in images
             if held.worth_saying(i) and i.verdict.verdict is not Verdict.WILL_NOT_RESUME]
    if result.failed:
        text.append(f"--strict: {_count(warnings)} counted as errors")
    ctx.emit(jsonout.document("check", {
        "ok": not result.failed, "strict": strict, "policy": policy.source, "policy_problems": [],
        "warnings": [w.to_dict() for w in warnings], "daemon_layout": layout.kind,
        "saved_images": [image.to_dict() for image in images]}), "\n".join(text))
    return result


def _guest_findings(policy: Policy, state: StateDir, images: list[HeldImage]) -> list[Finding]:
    """What is wrong between the policy and the guests there are; or why they could not be looked
    at. ``images`` is filled with each held saved image's verdict (``actions.held``)."""
    try:
        connections, unreachable = inputs.connect(policy)
    except HypervisorUnavailable as error:
        return [Finding(f"could not look at the guests: {error.message}")]
    guests = inputs.inventory(connections, policy, unreachable)  # a listing that fails is one more
    recorded = RecordedPass.from_dict(state.last_shutdown(quiet=True) or {"guests": {}}).guests
    images += held.held_images(connections, guests, recorded)
    after = [Finding(p.message, p.source) for p in after_problems(guests, policy)]
    return ([Finding(w) for w in unreachable] + _peer_findings(policy) + _two_way_findings(policy, guests)
            + [Finding(f"saved image: {i.text}") for i in images if i.verdict.verdict is Verdict.WILL_NOT_RESUME]
            + conflicts.unmatched_rules(policy, guests)
            + after + conflicts.guest_conflicts(policy, guests) + _channel_findings(policy, guests, connections)
            + _refused_flag_findings(policy, guests, connections))


def _refused_flag_findings(policy: Policy, guests, connections) -> list[Finding]:
    """Guests whose policy asks for a flag their connection's driver refuses: the pass would fail."""
    return [Finding(f"{guest.name}: bypass_cache would fail its resume at boot: {why}", rule)
            for guest, why, rule in inputs.refused_flags(guests, policy, connections)]


def _channel_findings(policy: Policy, guests, connections) -> list[Finding]:
    """Guests whose policy asks for a number of save channels, or an image format, their
    connection cannot give (the plan's own decision: ``imageformat.choose``)."""
    offers = inputs.channel_support(connections)
    findings = []
    for guest in guests:
        effective = resolve(policy, guest)
        offered = offers.get(guest.connection, UNKNOWN)
        channels, refused = choose(effective.settings.save_channels, guest, offered, at_once=1, cores=1)
        if refused:
            findings.append(Finding(f"{guest.name}: {refused}", effective.sources["save_channels"]))
        made = imageformat.choose(effective.settings.image_format, channels, offered,
                                  source=effective.sources["image_format"])
        if made.note:
            findings.append(Finding(f"{guest.name}: {made.note}", effective.sources["image_format"]))
    return findings


def _power_check(policy: Policy) -> tuple[list[Problem], list[Finding]]:
    """The credentials file of ``power:`` (a problem when unusable), and what upsd says (warnings)."""
    if policy.power is None:
        return [], []
    from libmgsave.power.ups import check_power  # only with a UPS: nothing of NUT's loaded otherwise

    return check_power(policy.power, policy.source or "")


def _peer_findings(policy: Policy) -> list[Finding]:
    from libmgsave.peers import unreachable_peers

    return [Finding(f"could not reach the peer {uri}: guests would not be migrated there ({why})", label)
            for uri, why, label in unreachable_peers(policy)]


def _two_way_findings(policy: Policy, guests) -> list[Finding]:
    """Hosts that are each other's peers, shut down at once, lose a guest one sends the other
    after the other's pass has ended. A peer's policy cannot be read from here: what this host
    can see is that it migrates guests away at shutdown and has guests that came by migration."""
    from libmgsave.peers import may_migrate

    # one arriving now is paused and transient until it has arrived (a persistent one is starting up)
    came = [g.name for g in guests if g.arrived_by_migration or (g.settling and not g.persistent)]
    if not came or not may_migrate(policy):
        return []
    named = ", ".join(came[:5]) + (f" and {len(came) - 5} more" if len(came) > 5 else "")
    return [Finding(f"this host migrates guests to peers at shutdown and has guests that came here by migration "
                    f"({named}): if a host that sends guests here is also one of its peers, do not shut both down "
                    f"at once (a guest migrated here after this host's shutdown pass has ended is lost with the "
                    f"host); shut them down one after the other, or name peers that do not name this host")]


def _finding_lines(policy: Policy) -> dict[str, int | None]:
    """Where each rule, ``defaults:`` and the keys of ``power:`` are: what check's findings are filed under."""
    lines = dict(rule_lines(policy))
    if policy.power is not None:  # the keys of power: check's warnings are filed under
        lines["power.ups"] = policy.power.ups_line
        lines["power.credentials"] = policy.power.credentials_line or policy.power.ups_line
    return lines


def locate(source: str | None, lines: dict[str, int | None], finding: Finding) -> LocatedWarning:
    """The finding with its rule's file and line (a built-in value has neither: no rule to fix)."""
    if finding.source not in lines:
        return LocatedWarning(finding.message)
    return LocatedWarning(finding.message, finding.source, source, lines[finding.source])


def render_warnings(warnings: tuple[LocatedWarning, ...]) -> list[str]:
    """Warnings about no rule first, then one block per rule, the rules in file order."""
    lines = [untrusted.message(f"warning: {w.message}") for w in warnings if w.where is None]
    by_rule: dict[str, list[str]] = {}
    for w in sorted((w for w in warnings if w.where), key=lambda w: w.line or 0):
        by_rule.setdefault(w.where, []).append(w.message)
    for where, messages in by_rule.items():
        lines.append(f"{where}:")
        lines += [untrusted.message(f"  warning: {message}") for message in messages]
    return lines


def _count(warnings) -> str:
    return units.plural(len(warnings), "warning")


def _report_problems(ctx: Context, problems: list[Problem], strict: bool,
                     verdict: str = "no change was made") -> None:
    if ctx.json:
        ctx.emit(jsonout.document("check", {
            "ok": False, "strict": strict, "policy": ctx.policy_path,
            "policy_problems": inputs.problems_dict(problems), "warnings": [], "daemon_layout": None}), "")
        return
    for problem in problems:
        console.err(untrusted.message(problem))
    console.err(f"{ctx.policy_path}: {units.plural(len(problems), 'problem')}; {verdict}")
