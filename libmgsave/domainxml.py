"""Reading libvirt's domain XML: a guest's name, UUID, memory, title, metadata, and what resuming it needs.

Pure text in, values out: nothing here talks to libvirt (``hypervisor`` asks it for the XML).
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from types import MappingProxyType

from libmgsave.history import ResumeNeeds
from libmgsave.inventory import GuestInfo, GuestState

_UNIT_BYTES = {"b": 1, "bytes": 1, "kb": 1000, "k": 1024, "kib": 1024, "mb": 1000**2, "m": 1024**2,
               "mib": 1024**2, "gb": 1000**3, "g": 1024**3, "gib": 1024**3, "tb": 1000**4, "t": 1024**4,
               "tib": 1024**4}


class DefinitionError(ValueError):
    """Domain XML that does not define a guest (not XML, or no name or UUID)."""


def memory_kib(element) -> int:
    """A libvirt memory element (``<memory unit='MiB'>256</memory>``) in KiB; 0 when unknown."""
    if element is None:
        return 0
    try:
        value = int((element.text or "0").strip())
    except ValueError:
        return 0
    return value * _UNIT_BYTES.get((element.get("unit") or "KiB").lower(), 1024) // 1024


def title_and_metadata(xml: str) -> tuple[str, dict[str, str]]:
    """Read <title> and the <metadata> children (namespace URI -> their text) from domain XML."""
    root = ET.fromstring(xml)
    title = (root.findtext("title") or "").strip()
    metadata: dict[str, str] = {}
    meta = root.find("metadata")
    if meta is not None:
        for child in meta:
            if child.tag.startswith("{"):
                namespace = child.tag[1:].split("}", 1)[0]
                metadata[namespace] = " ".join("".join(child.itertext()).split())
    return title, metadata


def uuid_of(xml: str) -> str | None:
    """The guest's UUID as the XML writes it; None when it is not XML or names none."""
    try:
        return (ET.fromstring(xml).findtext("uuid") or "").strip() or None
    except ET.ParseError:
        return None


def stopped_transient_guest(xml: str, connection: str) -> GuestInfo:
    """The (transient, stopped) guest the definition in a save file describes. Raises
    DefinitionError when it is not XML or has no name or UUID."""
    try:
        root = ET.fromstring(xml)
    except ET.ParseError as error:
        raise DefinitionError(f"the guest definition in it is not XML ({error})") from None
    name, uuid = (root.findtext("name") or "").strip(), (root.findtext("uuid") or "").strip()
    if not name or not uuid:
        raise DefinitionError("the guest definition in it has no name or UUID")
    memory = root.find("currentMemory")
    if memory is None:
        memory = root.find("memory")
    title, metadata = title_and_metadata(xml)
    return GuestInfo(
        connection=connection, name=name, uuid=uuid.lower(), state=GuestState.SHUTOFF, persistent=False,
        memory_kib=memory_kib(memory), title=title, metadata=MappingProxyType(metadata),
    )


# The devices whose model a saved state names: QEMU loads a device's state only into the same
# model, and a model a later QEMU dropped (or libvirt no longer offers) makes the load fail
# ("Unknown savevm section", or the guest's QEMU refuses to start). These are the device kinds
# whose models QEMU has deprecated and removed over the years (cirrus and other video models,
# sound cards, USB controllers, watchdogs, NIC models); disks and consoles carry no model to
# lose. Kept small: a record entry lists them for every saved guest.
_MODELLED_DEVICES = (
    ("video", "video/model", "type"),
    ("sound", "sound", "model"),
    ("usb", "controller[@type='usb']", "model"),
    ("watchdog", "watchdog", "model"),
    ("interface", "interface/model", "type"),
)


def resume_needs(xml: str, qemu_version: int | None, libvirt_version: int | None) -> ResumeNeeds:
    """What resuming a guest saved from this domain XML needs (see ``history.ResumeNeeds``);
    raises DefinitionError when the XML is not XML."""
    try:
        root = ET.fromstring(xml)
    except ET.ParseError as error:
        raise DefinitionError(f"the guest definition is not XML ({error})") from None
    cpu = root.find("cpu")
    model = cpu.find("model") if cpu is not None else None
    devices = root.find("devices")
    found: list[str] = []
    for kind, path, attribute in _MODELLED_DEVICES if devices is not None else ():
        for element in devices.findall(path):
            value = (element.get(attribute) or "").strip()
            if value and f"{kind}:{value}" not in found:
                found.append(f"{kind}:{value}")
    return ResumeNeeds(qemu_version, libvirt_version, machine_type(xml), cpu.get("mode") if cpu is not None else None,
                       (model.text or "").strip() or None if model is not None else None, tuple(found))


def machine_type(xml: str) -> str | None:
    """The guest's machine type (``os/type@machine``); None when the XML names none or is not XML."""
    try:
        element = ET.fromstring(xml).find("os/type")
    except ET.ParseError:
        return None
    return (element.get("machine") or "").strip() or None if element is not None else None
