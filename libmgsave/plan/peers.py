"""Choosing the peer a guest is migrated to, and estimating how long its migration takes (pure).

The shutdown plan asks ``PeerBudget.choose`` for each guest whose chain has a ``migrate`` step,
in plan order: the first peer of the guest's ``migrate.peers`` that answered, runs the same
hypervisor as the guest's own connection and has free memory for it, less what the guests
planned before it are already sending there (a reservation), is chosen; and only when the
migration can end before the deadline, estimated from the guest's memory and the link's rate.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from libmgsave import units
from libmgsave.inventory import GuestInfo
from libmgsave.policy import Migrate

# The link's rate assumed before a migration of this pass has measured it (bytes/s): a bit
# below what a 1 Gbit/s link carries.
DEFAULT_MIGRATION_THROUGHPUT = 100e6
# A live migration sends what the guest dirties meanwhile again: its memory size is not all.
LIVE_OVERHEAD = 1.25
MIB = 1024 * 1024


@dataclass(frozen=True)
class PeerFacts:
    """What one peer said when the pass looked at it (``actions.inputs.peer_facts``)."""

    uri: str
    reachable: bool
    why: str = ""  # why it is not reachable
    hypervisor_type: str | None = None  # libvirt's getType(): "QEMU", "LXC"...
    free_bytes: int | None = None  # free memory of the peer's host; None: it did not say

    def to_dict(self) -> dict:
        return {"uri": self.uri, "reachable": self.reachable, "why": self.why or None,
                "hypervisor_type": self.hypervisor_type, "free_bytes": self.free_bytes}


@dataclass(frozen=True)
class PeerGuest:
    """What a peer said of one guest a record places there (``peers.guests_on_peers``). It lives
    there when it is active there (running, paused, being migrated in or out: a QEMU holds its
    disks) or saved there (its memory state waits there): then it must not start here too."""

    peer: str
    uuid: str
    answered: bool
    lives_there: bool = False
    state: str = ""  # its state there, in words ("running", "not defined"...)
    why: str = ""  # why the peer could not be asked


def migration_seconds(memory_bytes: int, settings: Migrate, rate: float) -> float:
    """How long migrating ``memory_bytes`` takes at ``rate`` bytes/s (capped by the guest's
    ``bandwidth``); a live migration sends part of it twice."""
    if settings.bandwidth:
        rate = min(rate, settings.bandwidth * MIB)
    return memory_bytes * (LIVE_OVERHEAD if settings.live else 1.0) / rate


@dataclass(frozen=True)
class PeerChoice:
    """The peer a guest migrates to, or why none can take it."""
    peer: str | None  # None: no peer can take it (``why`` says why)
    estimate: float | None = None  # seconds from the pass's start to the migration's end
    why: str | None = None


class PeerBudget:
    """The peers' free memory and the deadline, as migrations are planned in plan order.
    Migrations share one link: a guest's migration ends after the bytes planned before it."""

    def __init__(self, peers: Mapping[str, PeerFacts], source_types: Mapping[str, str | None],
                 seconds: float, rate: float = DEFAULT_MIGRATION_THROUGHPUT):
        self.peers = peers
        self.source_types = source_types  # connection URI -> its hypervisor type
        self.seconds = seconds  # the time the deadline leaves for migrations
        self.rate = rate
        self.reserved: dict[str, int] = {}  # peer URI -> memory bytes planned to go there
        self.planned_seconds = 0.0  # the link's time taken by the migrations planned so far

    def choose(self, guest: GuestInfo, settings: Migrate) -> PeerChoice:
        """The peer for the guest (its memory reserved there), or why none."""
        took = migration_seconds(guest.memory_bytes, settings, self.rate)
        end = self.planned_seconds + took
        if end > self.seconds:
            return PeerChoice(None, why=f"migration skipped: it would end about {units.seconds(end)} into the pass, "
                                        f"past the deadline")
        reasons = []
        for uri in settings.peers:
            why = self._refusal(uri, guest)
            if why is None:
                self.reserved[uri] = self.reserved.get(uri, 0) + guest.memory_bytes
                self.planned_seconds = end
                return PeerChoice(uri, end)
            reasons.append(f"{uri}: {why}")
        return PeerChoice(None, why="migration skipped: no peer can take it (" + "; ".join(reasons) + ")")

    def _refusal(self, uri: str, guest: GuestInfo) -> str | None:
        facts = self.peers.get(uri)
        if facts is None or not facts.reachable:
            return f"unreachable ({facts.why})" if facts and facts.why else "unreachable"
        own = self.source_types.get(guest.connection)
        if own and facts.hypervisor_type and own != facts.hypervisor_type:
            return f"runs {facts.hypervisor_type}, the guest {own}"
        if facts.free_bytes is not None:
            free = facts.free_bytes - self.reserved.get(uri, 0)
            if guest.memory_bytes > free:
                return (f"not enough free memory ({units.size(max(0, free))} left, the guest has "
                        f"{units.size(guest.memory_bytes)})")
        return None
