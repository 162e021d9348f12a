"""The apt hook: before apt changes QEMU or libvirt, name the guests whose saved state that may cost.

A saved memory state is loaded by the QEMU that resumes it. One that has dropped the guest's
machine type or changed a device's state format cannot load it, and libvirt then boots the
guest fresh: its memory state is lost. apt runs ``hooks/mgsave-apt-hook`` (installed as a
``DPkg::Pre-Install-Pkgs`` command, protocol version 3) before it unpacks or removes anything,
with the list of package changes on standard input; this module reads that list and the last
shutdown record, and says which saved guests are concerned and what to do. With the policy's
``upgrades.on_saved_images: refuse`` it exits ``REFUSE_EXIT`` and apt stops.

It must never stop apt for any other reason: every problem (a broken policy, a state directory
others can write to, an unreadable record, input it does not understand) is one line on
standard error and exit 0. It opens no libvirt connection: the records and a ``stat`` of each
image are all it reads, so it is fast even when libvirtd is down or being upgraded.

The watched packages are those whose version decides whether a saved state loads:
``qemu-system-*`` (the emulators, their ROMs and common files), ``qemu-kvm`` (the emulator under
an older name) and libvirt's daemon and library (``libvirt-daemon*``, ``libvirt0``: they write
and read the image's header and the guest's XML in it). ``qemu-utils``, ``libvirt-clients`` and
firmware packages are not watched: a saved state carries the firmware it ran.
"""

from __future__ import annotations

import enum
import os
import sys
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from libmgsave.outcomes import Outcome
from libmgsave.policy import OnSavedImages
from libmgsave.saveimages import managed_save_dir
from libmgsave.untrusted import message, safe

if TYPE_CHECKING:
    from libmgsave.state import StateDir

REFUSE_EXIT = 75  # EX_TEMPFAIL: resume the guests, then try again. hooks/mgsave-apt-hook passes it on.
MAX_INPUT_BYTES = 16 * 1024 * 1024  # apt's configuration dump and the package list; more is not apt
PREFIX = "mgsave: "


class Change(enum.StrEnum):
    """What apt is about to do to an installed package (a fresh install changes nothing saved)."""

    UPGRADE = "upgrade"
    DOWNGRADE = "downgrade"
    REINSTALL = "reinstall"
    REMOVE = "remove"


@dataclass(frozen=True)
class PackageChange:
    """One package apt is about to upgrade, downgrade, reinstall or remove."""
    name: str  # without ":arch"
    old_version: str
    new_version: str | None  # None: removed
    change: Change

    def describe(self) -> str:
        if self.change is Change.REMOVE:
            return f"{self.name} {self.old_version}: removed"
        if self.change is Change.REINSTALL:
            return f"{self.name} {self.old_version}: reinstalled"
        return f"{self.name} {self.old_version} -> {self.new_version}: {self.change}"


class HookInputError(Exception):
    """Standard input is not apt's hook protocol version 2 or 3."""


def parse_hook_input(text: str) -> list[PackageChange]:
    """The changes to installed packages in apt's ``Pre-Install-Pkgs`` input (protocol 2 or 3):
    a ``VERSION n`` line, apt's configuration (``key=value`` lines) up to an empty line, then
    one line a package. Version 2: ``name old op new action``; version 3 adds the architecture
    and Multi-Arch of each version: ``name old arch ma op new arch ma action``. A version is
    ``-`` when there is none; ``op`` compares the old with the new (``<``: an upgrade); the
    action is the .deb to unpack, ``**CONFIGURE**`` or ``**REMOVE**``.

    Raises HookInputError for another protocol version or a line of the wrong shape."""
    lines = text.splitlines()
    if not lines or lines[0].strip() not in ("VERSION 2", "VERSION 3"):
        first = lines[0] if lines else ""
        raise HookInputError(f"apt sent {safe(first)!r}, not protocol version 2 or 3")
    fields_per_line = 5 if lines[0].strip() == "VERSION 2" else 9
    try:
        packages = lines[lines.index("", 1) + 1:]
    except ValueError:
        raise HookInputError("apt's configuration has no end (no empty line)") from None
    changes = []
    for number, line in enumerate(packages, start=1):
        if not line.strip():
            continue
        fields = line.split()
        if len(fields) != fields_per_line:
            raise HookInputError(f"package line {number} has {len(fields)} fields, not {fields_per_line}: "
                                 f"{safe(line)!r}")
        change = _change(fields if fields_per_line == 5 else [fields[0], fields[1], fields[4], fields[5], fields[8]])
        if change is not None:
            changes.append(change)
    return changes


def _change(fields: Sequence[str]) -> PackageChange | None:
    name, old, op, new, action = fields
    name = name.split(":", 1)[0]
    if old == "-" or action == "**CONFIGURE**":  # a fresh install; or configuring what was unpacked
        return None
    if action == "**REMOVE**" or new == "-":
        return PackageChange(name, old, None, Change.REMOVE)
    kind = {"<": Change.UPGRADE, ">": Change.DOWNGRADE, "=": Change.REINSTALL}.get(op)
    if kind is None:
        raise HookInputError(f"{safe(name)}: the comparison {safe(op)!r} is none of <, >, =")
    return PackageChange(name, old, new, kind)


def watched(name: str) -> bool:
    """Whether a change of package ``name`` changes what resumes a saved state (see the module)."""
    return name.startswith(("qemu-system-", "libvirt-daemon")) or name in ("qemu-kvm", "libvirt0")


@dataclass(frozen=True)
class HeldImage:
    """A guest saved by the last shutdown pass whose image is still there: not resumed since."""

    name: str
    connection: str
    image: str | None  # a transient guest's save file; None: libvirt's managed-save image
    saved: float


def held_images(shutdown: dict | None, used: Collection[str] = (),
                exists: Callable[[str], bool] = os.path.exists) -> list[HeldImage]:
    """The guests of the shutdown record saved on this host's QEMU whose image is still there
    (``exists``; libvirt removes a managed-save image when it resumes the guest, a boot pass
    the save file it restored), less those ``used`` names (keys whose save file a boot pass
    restored)."""
    held = []
    for key, entry in sorted((shutdown or {}).get("guests", {}).items()):
        outcome = entry.get("outcome")
        connection = entry.get("connection", "")
        if outcome not in (Outcome.SAVED, Outcome.SAVED_TO_FILE) or key in used or not _local_qemu(connection):
            continue
        image = entry.get("image") if outcome == Outcome.SAVED_TO_FILE else _managed_image(connection, entry)
        if image is None or exists(image):
            held.append(HeldImage(entry.get("name", "?"), connection,
                                  image if outcome == Outcome.SAVED_TO_FILE else None,
                                  entry.get("recorded", shutdown.get("started", 0))))
    return held


def _local_qemu(uri: str) -> bool:
    parts = urlsplit(uri)
    return parts.scheme in ("qemu", "qemu+unix") and parts.hostname in (None, "", "localhost")


def _managed_image(connection: str, entry: dict) -> str | None:
    """Where libvirt keeps the guest's managed-save image; None when that is not known here (a
    name no file can have, a connection whose directory libvirt does not say): held, then."""
    directory = managed_save_dir(connection)
    name = entry.get("name", "")
    if directory is None or not name or "/" in name or name in (".", ".."):
        return None
    return os.path.join(directory, f"{name}.save")


@dataclass(frozen=True)
class Verdict:
    """What the hook says to apt's user, and whether it stops the upgrade."""
    lines: tuple[str, ...]  # what to say, each without the "mgsave: " prefix; empty: nothing
    refuse: bool


def decide(changes: Sequence[PackageChange], held: Sequence[HeldImage], on_saved_images: OnSavedImages,
           policy_source: str | None) -> Verdict:
    """What to say and whether to stop apt, given its changes and the saved guests (pure)."""
    concerned = [c for c in changes if watched(c.name)]
    if not concerned or not held:
        return Verdict((), False)
    refuse = on_saved_images is OnSavedImages.REFUSE
    where = f"in {policy_source}" if policy_source else "(the built-in default)"
    lines = [f"apt is about to change what resumes saved guests: {', '.join(c.describe() for c in concerned)}",
             f"{len(held)} guest{'s are' if len(held) != 1 else ' is'} saved and not resumed yet; "
             f"after this change {'their' if len(held) != 1 else 'its'} saved state may not load:"]
    lines += [f"  {_describe(image)}" for image in held]
    holds = " ".join(sorted({c.name for c in concerned}))
    lines.append("resume them first (mgsave boot, or virsh start NAME), then run apt again; "
                 f"or keep the old versions: apt-mark hold {holds}")
    lines.append(f"refusing: apt stops before it unpacks anything (upgrades.on_saved_images: refuse {where})"
                 if refuse else f"apt goes on (upgrades.on_saved_images: warn {where}; refuse stops it)")
    return Verdict(tuple(lines), refuse)


def _describe(image: HeldImage) -> str:
    when = time.strftime("%Y-%m-%d %H:%M", time.localtime(image.saved)) if image.saved else "?"
    what = f"its save file {safe(image.image)}" if image.image else "its managed-save image"
    return f"{safe(image.name)} on {safe(image.connection)}: saved {when}, {what}"


def run(data: bytes, environ: Mapping[str, str]) -> Verdict:
    """The verdict on apt's input ``data``; every problem on the way is a line of its own, and
    apt goes on."""
    if len(data) > MAX_INPUT_BYTES:
        return Verdict((f"apt hook: more than {MAX_INPUT_BYTES} bytes on standard input, not apt's list; "
                        f"apt goes on",), False)
    try:
        changes = parse_hook_input(data.decode("utf-8", "replace"))
    except HookInputError as error:
        return Verdict((f"apt hook: cannot read apt's package list ({error}); apt goes on",), False)
    if not any(watched(c.name) for c in changes):
        return Verdict((), False)
    from libmgsave.state import StateDir, state_dir_from

    state = StateDir(state_dir_from(None, environ))
    held, problem = _held_now(state)
    if problem:
        return Verdict((f"apt hook: cannot tell which guests are saved ({problem}); apt goes on",), False)
    if not held:
        return Verdict((), False)
    setting, source, problem = _setting(environ, state)
    verdict = decide(changes, held, setting, source)
    return Verdict(verdict.lines + ((problem,) if problem else ()), verdict.refuse)


def _held_now(state: StateDir) -> tuple[list[HeldImage], str | None]:
    """The held images, by the last shutdown record and boot record, read the way every command
    reads them (a state directory others can write to is not read)."""
    from libmgsave.state.records import used_images

    warnings: list[str] = []
    shutdown = state.last_shutdown(quiet=True, warnings=warnings)
    boot = state.last_boot(quiet=True, warnings=warnings) if shutdown else None
    if warnings and shutdown is None:
        return [], warnings[0]
    return held_images(shutdown, used_images(shutdown, boot)), None


def _setting(environ: Mapping[str, str], state: StateDir) -> tuple[OnSavedImages, str | None, str | None]:
    """``upgrades.on_saved_images``, the file it came from, and why it is ``warn`` when the
    policy cannot be read (a broken policy never stops apt). A policy the passes validated
    before is taken from their cache (in a state directory only root can write), as they do."""
    from libmgsave.policyfile import policy_path_from, read_policy_for_pass

    path, explicit = policy_path_from(None, environ)
    read = read_policy_for_pass(path, explicit=explicit, cache_dir=None if state.insecure else state.path)
    if read.policy is None:
        first = read.problems[0] if read.problems else "unknown problem"
        return (OnSavedImages.WARN, None,
                f"the policy cannot be read ({first}); so only warning (fix it: mgsave check)")
    return read.policy.upgrades.on_saved_images, read.policy.source, None


def _say(line: str) -> None:
    try:
        print(PREFIX + message(line), file=sys.stderr, flush=True)
    except (OSError, ValueError):
        pass  # apt's terminal gone: nothing to say it on


def main() -> int:
    """Read apt's input, say what there is to say; ``REFUSE_EXIT`` only when refusing."""
    try:
        data = sys.stdin.buffer.read(MAX_INPUT_BYTES + 1)
        verdict = run(data, dict(os.environ))
    except Exception as error:  # noqa: BLE001 - a bug here must never stop apt
        _say(f"apt hook: internal error ({error!r}); apt goes on")
        return 0
    for line in verdict.lines:
        _say(line)
    return REFUSE_EXIT if verdict.refuse else 0


if __name__ == "__main__":
    sys.exit(main())
