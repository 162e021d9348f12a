"""The format a guest's memory is saved in (``image_format``), and why: pure, like ``channels``.

The plan (``plan/shutdown.py``) asks ``choose`` once it knows the channels a save gets. A format
other than libvirt's own is asked for on each save (virDomainSaveParams' ``image_format``, since
libvirt 11.2); where the connection cannot take it, the guest is saved in libvirt's own format,
never left unsaved. Every format resumes the same way: libvirt reads it from the image's header.
"""

from __future__ import annotations

from dataclasses import dataclass

from libmgsave.channels import ChannelSupport
from libmgsave.matching import BUILTIN_SOURCE
from libmgsave.policy import ImageFormat

OWN = "libvirt's own format (raw, unless save_image_format in qemu.conf says otherwise)"
# The default is the behaviour from before the setting, until measurements justify another
BUILTIN_WHY = "(built-in: the default until measurements justify another)"


@dataclass(frozen=True)
class FormatChoice:
    """What a guest's save asks libvirt for: ``image_format`` (None: no format, libvirt's own),
    the ``channels`` it writes with, why, and a ``note`` when that is less than the policy asks."""

    image_format: ImageFormat | None
    channels: int
    why: str
    note: str | None = None

    @property
    def shown(self) -> str:
        """The format as ``plan`` shows it: the one asked for, or ``libvirt``."""
        return str(self.image_format or ImageFormat.LIBVIRT)


def choose(asked: ImageFormat, channels: int, offered: ChannelSupport, *, source: str) -> FormatChoice:
    """The format of a save with ``channels`` channels (from ``channels.choose``: more than 1 only
    where the connection offers them) when the policy asks for ``asked``, set by ``source`` (the
    rule's label)."""
    if channels > 1:
        if asked in (ImageFormat.LIBVIRT, ImageFormat.SPARSE):
            return FormatChoice(ImageFormat.SPARSE, channels, f"sparse: the only format {channels} channels write")
        note = (f"image_format {asked} ({source}) cannot go with save_channels {channels}: "
                f"saved {asked} in one stream")
        return _one_stream(asked, offered, source, note)
    return _one_stream(asked, offered, source, None)


def _one_stream(asked: ImageFormat, offered: ChannelSupport, source: str, note: str | None) -> FormatChoice:
    if asked is ImageFormat.LIBVIRT:
        origin = BUILTIN_WHY if source == BUILTIN_SOURCE else f"({source})"
        return FormatChoice(None, 1, f"{OWN}: image_format libvirt {origin}", note)
    # sparse in one stream needs QEMU's mapped-ram: what the channels' offer checks
    why_not = offered.why_not if asked is ImageFormat.SPARSE else offered.formats_why_not
    if why_not is None:
        return FormatChoice(asked, 1, f"image_format {asked} ({source})", note)
    refused = f"image_format {asked} not available: {why_not}; saved in {OWN}"
    return FormatChoice(None, 1, refused, f"{note}; {refused}" if note else refused)
