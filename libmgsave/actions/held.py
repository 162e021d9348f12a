"""Whether each held saved image resumes on the hypervisor installed now: what ``status``,
``plan boot``, ``check`` and the boot pass ask before anything is tried.

The libvirt side (through ``hypervisor``, each connection's capabilities and versions read once
per command) and the record's side meet in ``restorable.judge``, which is pure.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from libmgsave.domainxml import machine_type
from libmgsave.errors import HypervisorError
from libmgsave.history import GuestEntry, Outcome, guest_record_key
from libmgsave.hypervisor import Connections
from libmgsave.inventory import GuestInfo
from libmgsave.restorable import Offer, Restorability, Verdict, judge, offer_from_xml

log = logging.getLogger("mgsave")

GuestKey = tuple[str, str]


@dataclass(frozen=True)
class HeldImage:
    """One guest's held image and its verdict, for ``status`` and ``check``."""

    connection: str
    name: str
    uuid: str
    verdict: Restorability

    def to_dict(self) -> dict:
        return {"connection": self.connection, "name": self.name, "uuid": self.uuid, **self.verdict.to_dict()}

    @property
    def text(self) -> str:
        return f"{self.name}: {self.verdict.text}"


def resume_verdicts(connections: Connections, guests: Iterable[GuestInfo],
                    recorded: Mapping[str, GuestEntry], files: Iterable[GuestEntry] = ()
                    ) -> dict[GuestKey, Restorability]:
    """The verdict for every guest with a managed-save image among ``guests``, and for every
    transient guest's save file among ``files`` (entries saved to a file), by guest key.
    ``recorded``: the last shutdown record's entries, whose ``needs`` say what each image needs;
    the image's own embedded definition gives its machine type when libvirt can read it."""
    offers = _Offers(connections)
    verdicts: dict[GuestKey, Restorability] = {}
    for guest in guests:
        if guest.has_managed_save and guest.connection in connections.uris():
            offer = offers.of(guest.connection)
            xml = _read(lambda g=guest: connections.guest(g.connection, g.uuid).saved_state_definition(),
                        guest.name) if _knows_machines(offer) else None
            entry = recorded.get(guest_record_key(*guest.key))
            verdicts[guest.key] = judge(entry.needs if entry else None, machine_type(xml) if xml else None, offer)
    for entry in files:
        key = (entry.connection, entry.uuid)
        if (entry.outcome is Outcome.SAVED_TO_FILE and entry.image and key not in verdicts
                and entry.connection in connections.uris() and os.path.isfile(entry.image)):
            offer = offers.of(entry.connection)
            xml = _read(lambda e=entry: connections.host(e.connection).saved_file_definition(e.image),
                        entry.name) if _knows_machines(offer) else None
            verdicts[key] = judge(entry.needs, machine_type(xml) if xml else None, offer)
    return verdicts


def _knows_machines(offer: Offer | None) -> bool:
    """Whether the image's own machine type could be compared with anything: a driver that
    lists no machine types (the test driver) is not asked for the image's definition, a round
    trip per held image for nothing."""
    return offer is not None and offer.machines is not None


def held_images(connections: Connections, guests: list[GuestInfo], recorded: Mapping[str, GuestEntry]
                ) -> list[HeldImage]:
    """Every held image's verdict, by guest name (the transient guests' from the record)."""
    names = {g.key: g for g in guests}
    names.update({(e.connection, e.uuid): e for e in recorded.values() if (e.connection, e.uuid) not in names})
    verdicts = resume_verdicts(connections, guests, recorded, recorded.values())
    return sorted((HeldImage(key[0], names[key].name, key[1], verdict) for key, verdict in verdicts.items()),
                  key=lambda held: (held.name, held.connection))


def worth_saying(held: HeldImage) -> bool:
    """Whether the admin should read about this image: anything but a plain "resumes"."""
    return held.verdict.verdict is not Verdict.RESUMES


class _Offers:
    """What each connection offers, read once per command (a connection it cannot ask: None)."""

    def __init__(self, connections: Connections):
        self.connections = connections
        self.known: dict[str, Offer | None] = {}

    def of(self, uri: str) -> Offer | None:
        if uri not in self.known:
            try:
                host = self.connections.host(uri)
                self.known[uri] = offer_from_xml(*host.capabilities(), *host.versions())
            except (HypervisorError, KeyError) as error:
                log.debug("%s: what it offers is not known (%s)", uri, error)
                self.known[uri] = None
        return self.known[uri]


def _read(call, name: str) -> str | None:  # noqa: ANN001
    """The definition ``call`` reads, or None (logged) when libvirt cannot give it."""
    try:
        return call()
    except HypervisorError as error:
        log.debug("%s: the definition in its saved image could not be read (%s)", name, error.message)
        return None
