"""What the peer hosts answer before a pass decides anything: reachable, which hypervisor, how
much free memory (``plan.peers.PeerFacts``). Only through the libvirt wrapper."""

from __future__ import annotations

import logging
from collections.abc import Iterable

from libmgsave.errors import HypervisorError
from libmgsave.hypervisor import Host
from libmgsave.inventory import GuestInfo
from libmgsave.matching import resolve
from libmgsave.plan.peers import PeerFacts
from libmgsave.policy import Policy, ShutdownStep

log = logging.getLogger("mgsave")


def peers_of(guests: Iterable[GuestInfo], policy: Policy, *, all_guests: bool = False) -> list[str]:
    """The peer URIs of the running guests whose chain has a ``migrate`` step (``all_guests``: of
    every guest with peers, for ``check``), in first-seen order."""
    uris: list[str] = []
    if not all_guests and not _may_migrate(policy):
        return uris  # the usual case, and with thousands of guests not worth resolving each
    for guest in guests:
        settings = resolve(policy, guest).settings
        wanted = all_guests or (guest.state.is_active and ShutdownStep.MIGRATE in settings.on_shutdown)
        for uri in settings.migrate.peers if wanted else ():
            if uri not in uris:
                uris.append(uri)
    return uris


def _may_migrate(policy: Policy) -> bool:
    """Whether any mapping of the policy puts a ``migrate`` step in a chain."""
    mappings = [policy.defaults, *(rule.settings for rule in policy.rules)]
    return any(ShutdownStep.MIGRATE in mapping.get("on_shutdown", ()) for mapping in mappings)


def probe(uri: str) -> PeerFacts:
    """Connect to one peer (no retry: a peer that does not answer now is skipped) and ask it."""
    try:
        host = Host.open(uri)
    except HypervisorError as error:
        log.warning("peer %s does not answer: %s", uri, error.message)
        return PeerFacts(uri, False, why=error.message)
    try:
        return PeerFacts(uri, True, hypervisor_type=host.hypervisor_type(), free_bytes=host.free_memory())
    except HypervisorError as error:
        log.warning("peer %s: %s", uri, error.message)
        return PeerFacts(uri, False, why=error.message)
    finally:
        host.close()


def probe_all(uris: Iterable[str]) -> dict[str, PeerFacts]:
    return {uri: probe(uri) for uri in uris}


def source_types(hosts: Iterable[Host]) -> dict[str, str | None]:
    """Each open connection's hypervisor type (None when it cannot tell)."""
    types: dict[str, str | None] = {}
    for host in hosts:
        try:
            types[host.uri] = host.hypervisor_type()
        except HypervisorError:
            types[host.uri] = None
    return types


def unreachable_peers(policy: Policy) -> list[tuple[str, str, str]]:
    """``check``: every peer the policy names that does not answer now, as (peer, why, where:
    the label of the rule that names it, or "defaults"), each peer asked once."""
    from libmgsave.matching import DEFAULTS_SOURCE

    named: list[tuple[str, str]] = []
    sources = [(DEFAULTS_SOURCE, policy.defaults)] + [(rule.label, rule.settings) for rule in policy.rules]
    for label, settings in sources:
        migrate = settings.get("migrate")
        named += [(uri, label) for uri in (migrate.peers if migrate else ())]
    facts = probe_all(dict.fromkeys(uri for uri, _ in named))
    return [(uri, facts[uri].why, label) for uri, label in named if not facts[uri].reachable]
