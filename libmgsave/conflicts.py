"""What ``mgsave check`` warns about besides the policy file itself.

Two tools acting on the same guests at shutdown or boot duel: libvirt's own autostart flag
(libvirtd starts the guest by itself), libvirt-guests, and libvirt's daemon-side shutdown
handling in qemu.conf (libvirt 11.2 and later).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from pathlib import Path

from libmgsave.inventory import GuestInfo
from libmgsave.matching import resolve
from libmgsave.policy import Autostart, Policy, ShutdownStep

LIBVIRT_GUESTS_LINKS = (
    "/etc/systemd/system/multi-user.target.wants/libvirt-guests.service",
    "/etc/systemd/system/virt-guest-shutdown.target.wants/libvirt-guests.service",
)
QEMU_CONF = "/etc/libvirt/qemu.conf"
# Settings by which libvirtd itself saves or shuts down guests when it stops.
_DAEMON_SHUTDOWN_KEYS = ("auto_shutdown_try_save", "auto_shutdown_try_shutdown", "auto_shutdown_poweroff")


def guest_conflicts(policy: Policy, guests: Iterable[GuestInfo]) -> list[str]:
    warnings = []
    for guest in guests:
        settings = resolve(policy, guest).settings
        if guest.libvirt_autostart and settings.autostart is not Autostart.ALWAYS:
            warnings.append(
                f"{guest.name}: libvirt's autostart flag is set, so libvirtd starts it at boot by itself, "
                f"but the policy says autostart {settings.autostart} "
                f"(fix: virsh autostart --disable {guest.name})"
            )
        if settings.on_shutdown[-1] is not ShutdownStep.POWEROFF:
            warnings.append(
                f"{guest.name}: on_shutdown does not end with poweroff, so the guest can be left running "
                f"when every step fails"
            )
    return warnings


def host_conflicts(root: str = "/") -> list[str]:
    """Warnings about other shutdown handlers on this host (``root`` lets tests use a fake tree)."""
    warnings = []
    for link in LIBVIRT_GUESTS_LINKS:
        if os.path.lexists(os.path.join(root, link.lstrip("/"))):
            warnings.append(
                "libvirt-guests.service is enabled: it acts on the same guests at shutdown and boot "
                "(fix: systemctl disable libvirt-guests.service; not --now, since stopping it shuts every guest down)"
            )
            break
    qemu_conf = Path(root, QEMU_CONF.lstrip("/"))
    try:
        text = qemu_conf.read_text()
    except OSError:
        text = ""
    for key in _DAEMON_SHUTDOWN_KEYS:
        match = re.search(rf"^\s*{key}\s*=\s*(\S+)", text, re.MULTILINE)
        if match and match.group(1).strip("\"'") not in ("0", "[]", "none", '"none"'):
            warnings.append(
                f"{qemu_conf}: {key} = {match.group(1)}: libvirtd itself acts on guests when it stops, "
                f"racing mgsave (fix: comment it out)"
            )
    return warnings
