"""What the peer hosts answer before a pass decides anything: reachable, which hypervisor, how
much free memory (``plan.peers.PeerFacts``); whether a guest a record places there lives there
(``plan.peers.PeerGuest``). Only through the libvirt wrapper, each peer within
``hypervisor.PEER_TIMEOUT``."""

from __future__ import annotations

import logging
import threading
from collections.abc import Collection, Iterable, Mapping

from libmgsave import interrupt
from libmgsave.errors import GuestGone, HypervisorError
from libmgsave.hypervisor import Host, ask_peer
from libmgsave.inventory import GuestInfo
from libmgsave.matching import resolve
from libmgsave.plan.peers import PeerFacts, PeerGuest
from libmgsave.policy import Policy, ShutdownStep

log = logging.getLogger("mgsave")


def peers_of(guests: Iterable[GuestInfo], policy: Policy, *, all_guests: bool = False) -> list[str]:
    """The peer URIs of the running guests whose chain has a ``migrate`` step (``all_guests``: of
    every guest with peers, for ``check``), in first-seen order."""
    uris: list[str] = []
    if not all_guests and not may_migrate(policy):
        return uris  # the usual case, and with thousands of guests not worth resolving each
    for guest in guests:
        settings = resolve(policy, guest).settings
        wanted = all_guests or (guest.state.is_active and any(ShutdownStep.MIGRATE in c for c in settings.chains))
        for uri in settings.migrate.peers if wanted else ():
            if uri not in uris:
                uris.append(uri)
    return uris


def may_migrate(policy: Policy) -> bool:
    """Whether any mapping of the policy puts a ``migrate`` step in a chain."""
    mappings = [policy.defaults, *(rule.settings for rule in policy.rules)]
    return any(ShutdownStep.MIGRATE in chain for mapping in mappings
               for chain in (mapping.get("on_shutdown", ()), mapping.get("on_reboot", ())) if isinstance(chain, tuple))


def probe(uri: str) -> PeerFacts:
    """Connect to one peer (no retry: a peer that does not answer now is skipped) and ask it,
    within ``hypervisor.PEER_TIMEOUT``."""
    def ask(host: Host) -> PeerFacts:
        return PeerFacts(uri, True, hypervisor_type=host.hypervisor_type(), free_bytes=host.free_memory())

    try:
        return ask_peer(uri, ask)
    except HypervisorError as error:
        log.warning("peer %s does not answer: %s", uri, error.message)
        return PeerFacts(uri, False, why=error.message)


def probe_all(uris: Iterable[str]) -> dict[str, PeerFacts]:
    """Every peer asked at once, each within ``hypervisor.PEER_TIMEOUT`` (a peer whose address
    swallows packets would otherwise hold the pass for the whole TCP connect timeout, minutes,
    before the first guest is touched)."""
    return at_once(uris, probe, lambda uri: PeerFacts(uri, False, why="the pass was stopped"))


def guests_on_peers(questions: Mapping[str, Collection[str]]) -> dict[tuple[str, str], PeerGuest]:
    """What each peer says of the guests (UUIDs) a record places there: every peer asked once,
    all at once, each within ``hypervisor.PEER_TIMEOUT``; one that cannot be asked says so for
    each of its guests (``PeerGuest.answered`` False)."""
    def ask_one(uri: str) -> dict[str, PeerGuest]:
        try:
            return ask_peer(uri, lambda host: {uuid: _guest_there(host, uuid) for uuid in questions[uri]})
        except HypervisorError as error:
            log.warning("peer %s cannot be asked where its guests run: %s", uri, error.message)
            return {uuid: PeerGuest(uri, uuid, False, why=error.message) for uuid in questions[uri]}

    def stopped(uri: str) -> dict[str, PeerGuest]:
        return {uuid: PeerGuest(uri, uuid, False, why="the pass was stopped") for uuid in questions[uri]}

    answers = at_once(questions, ask_one, stopped)
    return {(uri, uuid): guest for uri, guests in answers.items() for uuid, guest in guests.items()}


def _guest_there(host: Host, uuid: str) -> PeerGuest:
    """Whether the guest lives on ``host``: active there (running, paused, being migrated in or
    out: its QEMU holds its disks), or saved there (its memory state waits there)."""
    try:
        guest = host.guest(uuid)
    except GuestGone:
        return PeerGuest(host.uri, uuid, True, state="not defined")
    state, _reason = guest.state()
    if state.is_active:
        return PeerGuest(host.uri, uuid, True, lives_there=True, state=str(state))
    if guest.has_saved_state():
        return PeerGuest(host.uri, uuid, True, lives_there=True, state=f"{state}, with a saved state")
    return PeerGuest(host.uri, uuid, True, state=str(state))


def at_once(uris: Iterable[str], ask, stopped) -> dict:
    """``ask(uri)`` for every URI, each in its own thread (every ``ask`` bounds itself), in the
    URIs' order; ``stopped(uri)`` for one cut short by a stop request."""
    uris = list(dict.fromkeys(uris))
    found: dict = {}

    def run(uri: str) -> None:
        try:
            found[uri] = ask(uri)
        except interrupt.Interrupted:
            found[uri] = stopped(uri)

    threads = [threading.Thread(target=run, args=(uri,), daemon=True, name=f"peer-{i}") for i, uri in enumerate(uris)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return {uri: found[uri] for uri in uris}


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
