"""The plan as data: what happens to each guest in one pass, and why."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from libmgsave import jsonout
# The closed sets and the save rate are history's (the bottom floor); the plan speaks them.
from libmgsave.history import DEFAULT_SAVE_THROUGHPUT, Action, HostShutdown, PassKind, SaveRate  # noqa: F401
from libmgsave.inventory import ON_PEER, GuestInfo
from libmgsave.matching import DEFAULTS_SOURCE, Effective
# DEADLINE_RESERVE is defined with the policy's limits, which must leave room for it.
from libmgsave.policy import DEADLINE_RESERVE, ImageFormat, Limits, Policy  # noqa: F401
from libmgsave.policyfile.settings import setting_to_json

GuestKey = tuple[str, str]  # (connection URI, UUID)
FILES_ROOM = "<state directory>"  # key of ``room`` for transient guests' save files


@dataclass(frozen=True)
class GuestPlan:
    """What happens to one guest in one pass, and why."""

    guest: GuestInfo
    effective: Effective
    actions: tuple[Action, ...]  # shutdown: the fallback chain; boot: one action; (SKIP,) = nothing
    reason: str
    order: int = 0  # effective order, after ``after`` has pulled a guest behind its dependencies
    wait_for: tuple[GuestKey, ...] = ()  # guests that must finish first
    estimate_seconds: float | None = None  # shutdown: estimated end of this guest's save, from pass start
    image: str | None = None  # save file of a transient guest
    notes: tuple[str, ...] = ()
    # Where libvirt keeps the guest's managed-save image, when that is known (local QEMU): the
    # save writes it, the resume reads it, a failed resume keeps it.
    managed_image: str | None = None
    # shutdown: why its save was dropped from the chain up front (deadline, room), or None
    save_dropped_because: str | None = None
    # boot: why a cold boot it gets is news (it was running at the last shutdown but its memory
    # state was not saved), or None; and what to do when its resume fails (START: boot it fresh,
    # SKIP: leave it off)
    boots_fresh_because: str | None = None
    if_resume_fails: Action = Action.SKIP
    # shutdown: the head of the policy's chain when the plan dropped it (a save it had no time
    # or room for); boot: the start a guest left off at a loss would have had; None: the first
    # of ``actions``
    dropped_first_choice: Action | None = None
    # The channels its save writes with (shutdown) or its save file is read back with (boot:
    # a restore); more than 1 only where the connection offers parallel channels (channels.py)
    save_channels: int = 1
    # shutdown: the format its save asks libvirt for (None: none, libvirt's own), and why
    # (``imageformat.choose``); None also where it is not saved
    image_format: ImageFormat | None = None
    image_format_why: str | None = None
    # shutdown: the peer its migrate step goes to (chosen up front); boot: the peer it comes back
    # from, or the record places it on; None: no migration
    peer: str | None = None
    # boot: it lives on ``peer`` and is not defined here (shown "on peer", not "shut off")
    on_peer: bool = False
    # boot: why a guest that would have started is left off at a loss (the record places it on a
    # peer that could not be asked whether it runs there), or None; its first choice is dropped
    left_off_because: str | None = None
    # boot: ``reason`` without its last words on what the guest gets ("; resumes"), which the
    # ACTION column of a table says already; None: the whole reason
    cause: str | None = None
    # shutdown: the setting its chain is (``on_shutdown``, or ``on_reboot`` at a reboot); None: boot
    chain_from: str | None = None
    # boot: its held image will not resume on this hypervisor (``restorable``), why and what to
    # do; it is not tried: booted fresh (its image kept first) or left off, as the plan says
    will_not_resume: str | None = None
    # boot: QEMU or libvirt changed since its image was saved (expected to resume): a failed
    # resume names the change
    changed_since_save: str | None = None

    @property
    def key(self) -> GuestKey:
        return self.guest.key

    @property
    def state(self) -> str:
        """The guest's state as shown: libvirt's, or "on peer" for one that lives on its peer."""
        return ON_PEER if self.on_peer else str(self.guest.state)

    @property
    def first_choice(self) -> Action:
        """What the policy wants for the guest first; any other outcome is second best."""
        return self.dropped_first_choice or self.actions[0]

    @property
    def short_of_first_choice(self) -> bool:
        """The plan already knows the guest will not get its first choice."""
        return self.dropped_first_choice is not None or self.boots_fresh_because is not None

    @property
    def skipped(self) -> bool:
        return self.actions == (Action.SKIP,)

    def to_dict(self, rule_lines: Mapping[str, int | None] | None = None) -> dict:
        """``rule_lines``: where each rule (by label) is in the policy file (its plan's ``rule_lines``)."""
        return {
            "connection": self.guest.connection,
            "name": self.guest.name,
            "uuid": self.guest.uuid,
            "state": jsonout.word(self.state),
            "persistent": self.guest.persistent,
            "has_saved_image": self.guest.has_managed_save,
            "memory_bytes": self.guest.memory_bytes,
            "actions": [str(a) for a in self.actions],
            "first_choice": str(self.first_choice),
            "reason": self.reason,
            "order": self.order,
            "wait_for": [{"connection": c, "uuid": u} for c, u in self.wait_for],
            # Seconds from the start of the pass, not a duration of the save alone.
            "estimated_save_end_seconds": self.estimate_seconds,
            "save_dropped_because": self.save_dropped_because,
            "save_file_path": self.image,
            "managed_image_path": self.managed_image,
            "notes": list(self.notes),
            "save_channels": self.save_channels,
            "image_format": (str(self.image_format or ImageFormat.LIBVIRT) if self.image_format_why else None),
            "image_format_why": self.image_format_why,
            "settings": _settings_dict(self.effective, rule_lines or {}),
            "peer": self.peer,
            "chain_from": self.chain_from,
            "will_not_resume": self.will_not_resume,
            "changed_since_save": self.changed_since_save,
        }


@dataclass(frozen=True)
class Plan:
    """One pass's decisions: every guest's plan, in the order they run."""
    kind: PassKind
    entries: tuple[GuestPlan, ...]  # in execution order
    limits: Limits
    policy_source: str | None
    warnings: tuple[str, ...] = ()
    rates: Mapping[str, SaveRate] | None = None  # shutdown: the save rate assumed on each connection
    peers: Mapping[str, object] | None = None  # shutdown: the peers looked at (``plan.peers.PeerFacts``)
    # shutdown: the seconds the plan was made for, from its start (--deadline, what is left of
    # the pass's deadline, or limits.shutdown_deadline)
    deadline: float | None = None
    # where each rule (by label) and ``defaults:`` are in the policy file: the line of each
    # setting's origin (``rule_lines``); empty: the built-in defaults
    rule_lines: Mapping[str, int | None] = field(default_factory=dict)
    # shutdown: the kind of shutdown planned for (which chain each guest gets), and what said so
    host_shutdown: HostShutdown | None = None

    @property
    def active(self) -> tuple[GuestPlan, ...]:
        return tuple(e for e in self.entries if not e.skipped)

    def to_dict(self) -> dict:
        return {
            "pass": str(self.kind),
            "policy": self.policy_source,  # None: the built-in defaults (as status and check say)
            "limits": {
                "max_parallel_saves": self.limits.max_parallel_saves,
                "max_parallel_starts": self.limits.max_parallel_starts,
                "max_parallel_migrations": self.limits.max_parallel_migrations,
                "shutdown_deadline_seconds": self.limits.shutdown_deadline,
                "start_delay_seconds": self.limits.start_delay,
            },
            "deadline_seconds": self.deadline,
            "save_rates": {uri: rate.to_dict() for uri, rate in (self.rates or {}).items()},
            "warnings": list(self.warnings),
            "guests": [e.to_dict(self.rule_lines) for e in self.entries],
            "peers": {uri: facts.to_dict() for uri, facts in (self.peers or {}).items()},
            "host_shutdown": self.host_shutdown.to_dict() if self.host_shutdown else None,
        }


def rule_lines(policy: Policy) -> Mapping[str, int | None]:
    """Where each rule (by its label) and ``defaults:`` are in the policy file."""
    lines = {rule.label: rule.line for rule in policy.rules}
    lines[DEFAULTS_SOURCE] = policy.defaults_line
    return MappingProxyType(lines)


def _settings_dict(effective: Effective, rule_lines: Mapping[str, int | None]) -> dict:
    """Each setting's value, who set it, and on which line of the policy (None: built in)."""
    return {name: {"value": setting_to_json(getattr(effective.settings, name)), "from": source,
                   "line": rule_lines.get(source)}
            for name, source in effective.sources.items()}
