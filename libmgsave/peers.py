"""What the peer hosts answer before a pass decides anything: reachable, which hypervisor, how
much free memory (``plan.peers.PeerFacts``). Only through the libvirt wrapper."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable

from libmgsave.errors import HypervisorError
from libmgsave.hypervisor import Host
from libmgsave.inventory import GuestInfo
from libmgsave.matching import resolve
from libmgsave.plan.peers import PeerFacts
from libmgsave.policy import Policy, ShutdownStep

log = logging.getLogger("mgsave")

PROBE_TIMEOUT = 15.0  # seconds a peer has to answer before a plan counts it unreachable


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


def probe_all(uris: Iterable[str], timeout: float = PROBE_TIMEOUT) -> dict[str, PeerFacts]:
    """Every peer asked at once; one that has not answered within ``timeout`` counts as
    unreachable. A peer whose address swallows packets would otherwise hold the pass for the
    whole TCP connect timeout (minutes) before the first guest is touched; its thread is left
    to end on its own (a daemon thread: it never holds up the exit)."""
    uris = list(dict.fromkeys(uris))
    found: dict[str, PeerFacts] = {}
    threads = [threading.Thread(target=lambda u=uri: found.__setitem__(u, probe(u)), daemon=True,
                                name=f"peer-{i}") for i, uri in enumerate(uris)]
    for thread in threads:
        thread.start()
    give_up_at = time.monotonic() + timeout
    for thread in threads:
        thread.join(max(0.0, give_up_at - time.monotonic()))
    late = f"did not answer within {timeout:g} s"
    return {uri: found.get(uri) or PeerFacts(uri, False, why=late) for uri in uris}


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
