"""Parallel save channels: what a connection offers, and how many a guest gets.

Pure: the facts come from ``hypervisor.Host.channel_support`` (the connection's driver and
versions, the binding) and the plan (``plan/shutdown.py``, ``plan/boot.py``) asks ``choose``.

Since libvirt 11.2 the QEMU driver saves in a ``sparse`` image format (QEMU's mapped-ram: each
page at its own offset of the file), which several channels (multifd) can write and read at
once. Anything else saves in one stream, as before; no guest goes unsaved for want of channels.
"""

from __future__ import annotations

from dataclasses import dataclass

from libmgsave.inventory import GuestInfo
from libmgsave.policy import Channels

FIRST_LIBVIRT = 11_002_000  # 11.2.0: the sparse format and parallel channels
FIRST_QEMU = 9_000_000  # 9.0.0: mapped-ram
MAX_CHANNELS = 16  # the schema's bound too
# ``auto``: below this a guest saves in one stream (setting up channels costs more than it
# gains on a small guest), and never more than AUTO_MAX channels (they share the host's cores
# with the other saves running at once).
AUTO_MIN_BYTES = 2 * 2**30
AUTO_MAX = 4


def version_text(number: int, *, micro: bool = True) -> str:
    """libvirt's encoded version (major * 1,000,000 + minor * 1,000 + micro) as text."""
    text = f"{number // 1_000_000}.{number // 1000 % 1000}"
    return f"{text}.{number % 1000}" if micro else text


@dataclass(frozen=True)
class ChannelSupport:
    """Whether one connection can save with more than one channel, and why not; and whether it
    can be asked for an image format on each save (``image_format``), and why not."""

    available: bool
    why_not: str | None = None  # "libvirt 9.0.0 has no parallel save (needs 11.2)"
    # None: it can; the per-call format needs the same libvirt and binding, not QEMU's mapped-ram
    formats_why_not: str | None = "the connection was not asked"

    @property
    def formats_available(self) -> bool:
        return self.formats_why_not is None

    def to_dict(self) -> dict:
        return {"available": self.available, "why_not": self.why_not,
                "image_formats_available": self.formats_available, "image_formats_why_not": self.formats_why_not}


UNKNOWN = ChannelSupport(False, "the connection was not asked")


def support(driver: str, libvirt_version: int, qemu_version: int | None, *,
            managed_dir_known: bool = True, binding_problem: str | None = None) -> ChannelSupport:
    """What a connection offers, from its driver ("QEMU", "TEST"...), its daemon's libvirt
    version, its QEMU version (None: not known), whether mgsave knows where it keeps
    managed-save images, and what is wrong with the binding, if anything."""
    formats = _why_not(driver, libvirt_version, None, managed_dir_known, binding_problem, "per-call image format")
    channels = _why_not(driver, libvirt_version, qemu_version, managed_dir_known, binding_problem, "parallel save")
    return ChannelSupport(channels is None, channels, formats)


def daemon_may_offer(driver: str, libvirt_version: int) -> bool:
    """Whether a daemon of this driver and version could offer channels or a per-call format,
    before the rest (QEMU, the binding, the save directory) is asked."""
    return driver == "QEMU" and libvirt_version >= FIRST_LIBVIRT


def _why_not(driver: str, libvirt_version: int, qemu_version: int | None, managed_dir_known: bool,
             binding_problem: str | None, feature: str) -> str | None:
    if driver != "QEMU":
        return f"the {driver.lower()} driver has no {feature} (only qemu's has)"
    if libvirt_version < FIRST_LIBVIRT:
        return f"libvirt {version_text(libvirt_version)} has no {feature} (needs {version_text(FIRST_LIBVIRT, micro=False)})"
    if qemu_version is not None and qemu_version < FIRST_QEMU:
        return f"QEMU {version_text(qemu_version)} has no mapped-ram (needs {version_text(FIRST_QEMU, micro=False)})"
    if binding_problem:
        return binding_problem
    if not managed_dir_known:
        return ("where this connection keeps managed-save images is not known "
                "(a remote connection, or save_dir set in qemu.conf)")
    return None


def choose(setting: int | Channels, guest: GuestInfo, offered: ChannelSupport, *, at_once: int,
           cores: int) -> tuple[int, str | None]:
    """The channels the guest's save (or restore) uses, and a note when it gets fewer than the
    policy asks for. ``at_once``: the saves (or restores) that run at the same time."""
    if setting == 1:
        return 1, None
    if not offered.available:
        if setting is Channels.AUTO:
            return 1, None  # auto asks for nothing in particular: one stream is no news
        return 1, f"save_channels {setting} not available: {offered.why_not}; saved in one stream"
    if setting is Channels.AUTO:
        if guest.memory_bytes < AUTO_MIN_BYTES:
            return 1, None
        return max(1, min(AUTO_MAX, cores // max(1, at_once))), None
    return int(setting), None
