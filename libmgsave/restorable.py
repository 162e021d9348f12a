"""Whether a held saved image will resume on the hypervisor installed now, before a pass tries.

Pure: what the image needs (``history.ResumeNeeds``, recorded at the save; the machine type of
the image's own embedded definition, which an admin may have edited with ``virsh
managedsave-define``) and what this hypervisor offers now (``Offer``: the machine types and CPU
models of its capabilities, its versions) in, a ``Restorability`` per guest out. The actions
read the XML through ``hypervisor`` once per command; ``plan.boot`` plans a guest that will not
resume as such (its image kept, its ``on_resume_failure`` applied), never tried and failed.
"""

from __future__ import annotations

import enum
import xml.etree.ElementTree as ET
from dataclasses import dataclass

from libmgsave.history import ResumeNeeds


class Verdict(enum.StrEnum):
    """Whether a held image is expected to resume; the values are what ``--json`` says."""

    RESUMES = "resumes"  # the hypervisor that wrote it is the one installed now
    CHANGED = "changed"  # QEMU or libvirt changed since the save, but it offers what the image needs
    WILL_NOT_RESUME = "will-not-resume"  # it lacks what the image needs: trying would fail
    UNKNOWN = "unknown"  # no record of the image's needs and no definition to read, or no capabilities


@dataclass(frozen=True)
class Offer:
    """What one connection's hypervisor offers now. None for what it could not say (the test
    driver has no domain capabilities): nothing is judged on it."""

    qemu_version: int | None
    libvirt_version: int | None
    machines: frozenset[str] | None
    cpu_models: frozenset[str] | None = None
    video_models: frozenset[str] | None = None


@dataclass(frozen=True)
class Restorability:
    """One guest's verdict, the words for it, and what the admin can do (empty: nothing)."""

    verdict: Verdict
    why: str
    advice: str = ""

    @property
    def text(self) -> str:
        return f"{self.why}; {self.advice}" if self.advice else self.why

    def to_dict(self) -> dict:
        return {"verdict": str(self.verdict), "why": self.why, "advice": self.advice or None}


def version_text(number: int | None) -> str:
    """libvirt's version number (major * 1,000,000 + minor * 1,000 + release) as 8.0.0."""
    if number is None:
        return "unknown"
    return f"{number // 1_000_000}.{number // 1000 % 1000}.{number % 1000}"


def judge(needs: ResumeNeeds | None, image_machine: str | None, offer: Offer | None) -> Restorability:
    """The verdict for an image that needs ``needs`` (its record's, None for an image saved
    before mgsave recorded them) whose embedded definition names ``image_machine`` (None when
    it could not be read: the record's machine type is used), on a hypervisor offering ``offer``."""
    machine = image_machine or (needs.machine if needs else None)
    missing = _missing(needs, machine, offer) if offer is not None else None
    if missing:
        return Restorability(Verdict.WILL_NOT_RESUME, f"will not resume: {missing}", _advice(needs))
    if needs is None or offer is None or needs.qemu_version is None:
        if offer is None or machine is None or offer.machines is None:
            return Restorability(Verdict.UNKNOWN, "not known whether it resumes (its save recorded no needs"
                                 + (", and this hypervisor's capabilities could not be read)" if offer is None else ")"))
        return Restorability(Verdict.RESUMES, f"resumes (machine type {machine} is offered)")
    changes = [f"{name} changed since the save ({version_text(then)} -> {version_text(now)})"
               for name, then, now in (("QEMU", needs.qemu_version, offer.qemu_version),
                                       ("libvirt", needs.libvirt_version, offer.libvirt_version))
               if then is not None and now is not None and then != now]
    if changes:
        return Restorability(Verdict.CHANGED, "; ".join(changes) + ": expected to resume")
    return Restorability(Verdict.RESUMES, "resumes")


def _missing(needs: ResumeNeeds | None, machine: str | None, offer: Offer) -> str | None:
    """What the image needs that ``offer`` lacks, in words, or None."""
    if machine and offer.machines is not None and machine not in offer.machines:
        return f"machine type {machine} is not offered by this QEMU{_qemu_now(offer)}"
    if needs is None:
        return None
    if (needs.cpu_mode in (None, "custom") and needs.cpu_model and offer.cpu_models is not None
            and needs.cpu_model not in offer.cpu_models):
        return f"CPU model {needs.cpu_model} is not offered by this QEMU{_qemu_now(offer)}"
    for device in needs.devices:
        kind, _, model = device.partition(":")
        if kind == "video" and offer.video_models is not None and model not in offer.video_models:
            return f"video device model {model} is not offered by this QEMU{_qemu_now(offer)}"
    return None


def _advice(needs: ResumeNeeds | None) -> str:
    saved_by = f" ({version_text(needs.qemu_version)})" if needs and needs.qemu_version is not None else ""
    return (f"to keep its memory state, boot with the QEMU that saved it{saved_by} (keep or reinstall that "
            f"version); otherwise the boot pass keeps the image and applies its on_resume_failure")


def _qemu_now(offer: Offer) -> str:
    return f" ({version_text(offer.qemu_version)})" if offer.qemu_version is not None else ""


def offer_from_xml(capabilities: str | None, domain_capabilities: str | None, qemu_version: int | None,
                   libvirt_version: int | None) -> Offer:
    """The ``Offer`` that libvirt's capabilities XML (every machine type of every emulator,
    with the canonical names their aliases stand for) and domain capabilities XML (the CPU
    models and video models) say; None for a part whose XML is missing or not XML."""
    machines = cpus = videos = None
    root = _parsed(capabilities)
    if root is not None:
        machines = frozenset(name for element in root.iter("machine")
                             for name in ((element.text or "").strip(), element.get("canonical") or "") if name)
    domain = _parsed(domain_capabilities)
    if domain is not None:
        cpus = frozenset((m.text or "").strip() for m in domain.findall("cpu/mode[@name='custom']/model"))
        video = domain.find("devices/video/enum[@name='modelType']")
        videos = frozenset((v.text or "").strip() for v in video.findall("value")) if video is not None else None
        # the machine type libvirt picked for the domain capabilities is offered too
        if machines is not None and domain.findtext("machine"):
            machines |= {domain.findtext("machine").strip()}
    # a driver that lists no machine types (the test driver) says nothing of them, rather than
    # offering none
    return Offer(qemu_version, libvirt_version, machines or None, cpus or None, videos or None)


def _parsed(xml: str | None):  # noqa: ANN202 - an Element or None
    if not xml:
        return None
    try:
        return ET.fromstring(xml)
    except ET.ParseError:
        return None
