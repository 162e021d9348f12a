"""What mgsave knows about one guest at one moment: a frozen snapshot read from libvirt.

Planning and matching work only on these snapshots, so they can be built by hand in tests
and never talk to the hypervisor.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType


class GuestState(enum.StrEnum):
    RUNNING = "running"
    PAUSED = "paused"
    SHUTOFF = "shut off"
    SHUTDOWN = "shutting down"
    CRASHED = "crashed"
    PMSUSPENDED = "pmsuspended"
    BLOCKED = "blocked"
    NOSTATE = "no state"

    @property
    def is_active(self) -> bool:
        """True when the guest has a QEMU process (libvirt's "active")."""
        return self not in (GuestState.SHUTOFF, GuestState.CRASHED, GuestState.NOSTATE)


# How a guest that lives on a peer host (not defined here) is shown where a state would be.
ON_PEER = "on peer"


@dataclass(frozen=True)
class GuestInfo:
    """One guest as libvirt reports it at the start of a pass."""
    connection: str
    name: str
    uuid: str
    state: GuestState
    persistent: bool = True
    has_managed_save: bool = False
    memory_kib: int = 0  # current memory: what a save has to write, at most
    title: str = ""
    metadata: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))  # namespace -> text
    libvirt_autostart: bool = False
    # paused while it starts up or a migration moves it (here: a guest a peer is sending): it
    # cannot be saved or migrated yet, and runs here (or not) once that is over
    settling: bool = False
    arrived_by_migration: bool = False  # runs here since a migration brought it (libvirt's reason)

    @property
    def key(self) -> tuple[str, str]:
        """Identity across passes: a name can be reused, a UUID on one connection cannot."""
        return (self.connection, self.uuid)

    @property
    def memory_bytes(self) -> int:
        return self.memory_kib * 1024
