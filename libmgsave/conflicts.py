"""What ``mgsave check`` warns about besides the policy file itself.

Two tools acting on the same guests at shutdown or boot duel: libvirt's own autostart flag
(libvirtd starts the guest by itself), libvirt-guests, and libvirt's daemon-side shutdown
handling in qemu.conf (libvirt 11.2 and later).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from libmgsave.inventory import GuestInfo
from libmgsave.matching import resolve, rule_matches
from libmgsave.policy import Autostart, Policy, ShutdownStep
from libmgsave.saveimages import QEMU_CONF, read_qemu_conf

LIBVIRT_GUESTS_LINKS = (
    "/etc/systemd/system/multi-user.target.wants/libvirt-guests.service",
    "/etc/systemd/system/virt-guest-shutdown.target.wants/libvirt-guests.service",
)
# Settings by which the QEMU driver (in libvirtd or virtqemud) itself saves, shuts down or
# powers off guests when the daemon stops, and restores them when it starts (libvirt 11.2).
_DAEMON_SHUTDOWN_KEYS = ("auto_shutdown_try_save", "auto_shutdown_try_shutdown", "auto_shutdown_poweroff",
                         "auto_shutdown_restore")
# Where an enabled socket unit is linked, and the sockets a running daemon listens on.
_SOCKET_WANTS = "/etc/systemd/system/sockets.target.wants"
_LAYOUTS = (
    ("monolithic", "libvirtd", "libvirtd.socket", "/run/libvirt/libvirt-sock"),
    ("modular", "virtqemud", "virtqemud.socket", "/run/libvirt/virtqemud-sock"),
)


@dataclass(frozen=True)
class DaemonLayout:
    """Which libvirt daemon serves QEMU on this host: 'monolithic' (libvirtd), 'modular'
    (virtqemud), 'both' (a conflict) or 'unknown' (neither enabled nor running)."""

    kind: str
    evidence: str

    def __str__(self) -> str:
        return f"{self.kind} ({self.evidence})"


def daemon_layout(root: str = "/") -> DaemonLayout:
    """Look at the enabled socket units, then at the sockets of running daemons."""
    found = []
    for kind, daemon, socket_unit, socket_path in _LAYOUTS:
        if os.path.lexists(os.path.join(root, _SOCKET_WANTS.lstrip("/"), socket_unit)):
            found.append((kind, f"{socket_unit} enabled"))
        elif os.path.exists(os.path.join(root, socket_path.lstrip("/"))):
            found.append((kind, f"{daemon} listening on {socket_path}"))
    if not found:
        return DaemonLayout("unknown", "no libvirtd or virtqemud socket enabled or listening")
    if len(found) > 1:
        return DaemonLayout("both", "; ".join(evidence for _kind, evidence in found))
    return DaemonLayout(*found[0])


@dataclass(frozen=True)
class Finding:
    """One warning of ``check``; ``source`` is the rule it is about (its label, or "defaults"),
    when it is about one."""

    message: str
    source: str | None = None

    def __str__(self) -> str:
        return self.message


def guest_conflicts(policy: Policy, guests: Iterable[GuestInfo]) -> list[Finding]:
    """Guests whose settings fight libvirt's own flags, each filed under the rule that set it."""
    findings = []
    for guest in guests:
        effective = resolve(policy, guest)
        settings = effective.settings
        if guest.libvirt_autostart and settings.autostart is not Autostart.ALWAYS:
            findings.append(Finding(
                f"{guest.name}: libvirt's autostart flag is set, so libvirtd starts it at boot by itself, "
                f"but the policy says autostart {settings.autostart} "
                f"(fix: virsh autostart --disable {guest.name})", effective.sources["autostart"]))
        for key, chain in (("on_shutdown", settings.on_shutdown), ("on_reboot", settings.on_reboot)):
            if isinstance(chain, tuple) and chain[-1] is not ShutdownStep.POWEROFF:
                findings.append(Finding(
                    f"{guest.name}: {key} does not end with poweroff, so the guest can be left running "
                    f"when every step fails", effective.sources[key]))
    return findings


def unmatched_rules(policy: Policy, guests: Iterable[GuestInfo]) -> list[Finding]:
    """Rules whose ``match:`` selects none of the guests: a typo in a name, or a stale rule."""
    guests = list(guests)
    return [Finding("matches no guest", rule.label) for rule in policy.rules
            if not any(rule_matches(rule.match, guest) for guest in guests)]


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
    layout = daemon_layout(root)
    if layout.kind == "both":
        warnings.append(
            f"both the monolithic and the modular libvirt daemons are enabled ({layout.evidence}): they "
            f"conflict, and guests may be split between them (fix: disable one layout's sockets)"
        )
    qemu_conf = Path(root, QEMU_CONF.lstrip("/"))
    text = read_qemu_conf(qemu_conf)
    for key in _DAEMON_SHUTDOWN_KEYS:
        match = re.search(rf"^\s*{key}\s*=\s*(\S+)", text, re.MULTILINE)
        if match and match.group(1).strip("\"'") not in ("0", "[]", "none", '"none"'):
            warnings.append(
                f"{qemu_conf}: {key} = {match.group(1)}: the libvirt daemon itself acts on guests when it "
                f"{'starts' if key == 'auto_shutdown_restore' else 'stops'}, racing mgsave (fix: comment it out)"
            )
    return warnings
