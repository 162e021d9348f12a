"""The parsed policy: frozen dataclasses and enums, nothing else.

The YAML file is read and validated by ``policyfile``; rules are applied to a guest by
``matching``. Enum values are the spellings used in the YAML file.
"""

from __future__ import annotations

import dataclasses
import enum
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from libmgsave import jsonout
from libmgsave.history import ShutdownKind
# A deadline must be longer than the reserve it keeps for the last step (defined with the budget).
from libmgsave.budget import DEADLINE_RESERVE  # noqa: F401

DEFAULT_POLICY_PATH = "/etc/mgsave/policy.yaml"
DEFAULT_CONNECTIONS = ("qemu:///system",)
# The longest duration a policy or the command line may give (7 days). The code sleeps and
# waits on these values: a bound keeps them below what a wait can take (threading's
# TIMEOUT_MAX), and no shutdown, start or save is meant to take longer.
MAX_DURATION = 7 * 24 * 3600.0


class Autostart(enum.StrEnum):
    ALWAYS = "always"  # start at boot; resume the saved state if there is one
    IF_RUNNING = "if-running"  # start at boot only if it was running when the host went down
    NEVER = "never"  # leave it off; its saved state is kept for a manual start


class ShutdownStep(enum.StrEnum):
    MIGRATE = "migrate"  # live-migrate to the first peer of ``migrate.peers`` that can take it
    SAVE = "save"  # managed save (a file in mgsave's state directory for transient guests)
    SHUTDOWN = "shutdown"  # ACPI/agent shutdown request, waiting shutdown_timeout
    POWEROFF = "poweroff"  # hard stop (virDomainDestroy)


class SameChain(enum.StrEnum):
    """``on_reboot``'s value when the guest gets at a reboot what it gets at a power-off."""

    ON_SHUTDOWN = "on_shutdown"


class DiskMode(enum.StrEnum):
    SHARED = "shared"  # the peer sees the same disks (shared storage): only memory moves
    COPY = "copy"  # the disks are copied to the peer too (libvirt's non-shared disk migration)


@dataclass(frozen=True)
class Migrate:
    """Where and how a guest is migrated by a ``migrate`` step, and whether it comes home."""

    peers: tuple[str, ...] = ()  # libvirt URIs, tried in order
    live: bool = True  # False: the guest is paused while its memory moves (shorter, bounded)
    timeout: float = 300.0  # seconds one migration may take before it is aborted
    bandwidth: int | None = None  # MiB/s, None: as fast as the link goes
    disks: DiskMode = DiskMode.SHARED
    come_back: bool = False  # migrated home by the next boot pass
    home: str | None = None  # this host's URI as the peers reach it (needed by come_back)


class OnResumeFailure(enum.StrEnum):
    BOOT_FRESH = "boot-fresh"  # keep the image for inspection, then cold-boot the guest
    LEAVE_OFF = "leave-off"  # keep the image and leave the guest off


class ReadyKind(enum.StrEnum):
    NONE = "none"  # up as soon as libvirt says it runs
    DELAY = "delay"  # up after a fixed number of seconds
    AGENT = "agent"  # up when the QEMU guest agent answers a ping


class Channels(enum.StrEnum):
    AUTO = "auto"  # the plan chooses per guest, from its memory and the saves running at once


class ImageFormat(enum.StrEnum):
    """The format of a saved image (libvirt's ``save_image_format`` values, and mgsave's own
    ``libvirt``: ask for none, as before the setting existed)."""

    LIBVIRT = "libvirt"  # libvirt's own: qemu.conf's save_image_format (raw unless set); sparse with channels
    RAW = "raw"
    SPARSE = "sparse"  # QEMU's mapped-ram: the only one channels can write
    ZSTD = "zstd"
    LZOP = "lzop"
    GZIP = "gzip"
    BZIP2 = "bzip2"
    XZ = "xz"

    @property
    def compressed(self) -> bool:
        """Written through a compression program: in one stream only, never with channels."""
        return self not in (ImageFormat.LIBVIRT, ImageFormat.RAW, ImageFormat.SPARSE)


@dataclass(frozen=True)
class Ready:
    """When a started guest counts as up, for the guests that wait on it."""
    kind: ReadyKind = ReadyKind.NONE
    seconds: float = 0.0  # DELAY: the delay; AGENT: how long to wait before giving up (warning)

    def __str__(self) -> str:
        if self.kind is ReadyKind.NONE:
            return "none"
        if self.kind is ReadyKind.DELAY:
            return f"{self.seconds:g}s"
        return f"agent (timeout {self.seconds:g}s)"


@dataclass(frozen=True)
class GuestSettings:
    """Everything the policy decides for one guest. The defaults here are the built-in ones."""

    autostart: Autostart = Autostart.IF_RUNNING
    on_shutdown: tuple[ShutdownStep, ...] = (ShutdownStep.SAVE, ShutdownStep.SHUTDOWN, ShutdownStep.POWEROFF)
    # At a reboot, kexec or soft-reboot: its own chain, or (the default) the on_shutdown chain.
    on_reboot: tuple[ShutdownStep, ...] | SameChain = SameChain.ON_SHUTDOWN
    order: int = 0
    priority: int = 0  # within one order group, higher priority is saved first under a deadline
    after: tuple[str, ...] = ()  # guest names that must be up before this one starts
    ready: Ready = Ready()
    save_timeout: float = 600.0
    shutdown_timeout: float = 120.0
    bypass_cache: bool = False
    sync_time: bool = False
    on_resume_failure: OnResumeFailure = OnResumeFailure.BOOT_FRESH
    # Parallel streams of a save (libvirt's sparse format), where the connection offers them:
    # a number from 1 (the usual single-stream save) to 16, or AUTO. See channels.py. Not AUTO
    # by default: on libvirt 11.3 such a save of a persistent guest is not marked as a managed
    # save until the daemon restarts (see parallelsave.py), and its gain is not measured yet.
    save_channels: int | Channels = 1
    # The saved image's format; LIBVIRT (asking for none) keeps the behaviour from before the
    # setting until measurements justify another default (docs/PERFORMANCE.md). See imageformat.py.
    image_format: ImageFormat = ImageFormat.LIBVIRT
    migrate: Migrate = Migrate()

    def chain_setting(self, kind: ShutdownKind) -> str:
        """The setting whose chain a shutdown of this kind runs: ``on_reboot`` when the host comes
        straight back and the guest has one of its own, else ``on_shutdown`` (an unknown kind too)."""
        return "on_reboot" if kind.comes_back and not isinstance(self.on_reboot, SameChain) else "on_shutdown"

    def chain_for(self, kind: ShutdownKind) -> tuple[ShutdownStep, ...]:
        return getattr(self, self.chain_setting(kind))

    @property
    def chains(self) -> tuple[tuple[ShutdownStep, ...], ...]:
        """Every chain a shutdown may run, whatever its kind (for the peers to ask, ``check``)."""
        return (self.on_shutdown,) if isinstance(self.on_reboot, SameChain) else (self.on_shutdown, self.on_reboot)


SETTING_NAMES: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(GuestSettings))
BUILTIN_SETTINGS = GuestSettings()


@dataclass(frozen=True)
class MetadataMatch:
    """Matches a guest carrying a libvirt <metadata> element in ``namespace``.

    ``text`` (a glob) must then match the element's text content, when given.
    """

    namespace: str
    text: str | None = None


@dataclass(frozen=True)
class Match:
    """A rule's selector. Each given field must match (AND); a list matches any of its items (OR).

    An empty Match (no field given) matches every guest.
    """

    name: tuple[str, ...] = ()  # fnmatch globs, case-sensitive
    uuid: tuple[str, ...] = ()  # exact, case-insensitive
    title: tuple[str, ...] = ()  # globs on the libvirt <title>
    connection: tuple[str, ...] = ()  # globs on the connection URI
    metadata: tuple[MetadataMatch, ...] = ()


def _frozen_mapping(value: Mapping[str, object] | None = None) -> Mapping[str, object]:
    return MappingProxyType(dict(value or {}))


@dataclass(frozen=True)
class Rule:
    """One entry of ``guests:``. ``settings`` holds only the keys the admin wrote."""

    index: int  # position in ``guests:``, 0-based
    match: Match
    settings: Mapping[str, object] = field(default_factory=_frozen_mapping)
    line: int | None = None
    comment: str | None = None  # the rule's optional ``name:`` for humans

    @property
    def label(self) -> str:
        base = f"guests[{self.index}]"
        return f"{base} ({self.comment})" if self.comment else base


def default_parallelism() -> int:
    """Concurrent saves/starts when the policy says ``auto``.

    Saving is CPU-bound (QEMU serialising memory plus libvirt's I/O helper), so more
    streams than about two per core only add contention; see docs/PERFORMANCE.md.
    """
    return max(2, 2 * (os.cpu_count() or 1))


@dataclass(frozen=True)
class Limits:
    """The policy's ``limits:``: parallelism and the passes' time budgets."""
    max_parallel_saves: int = dataclasses.field(default_factory=default_parallelism)
    max_parallel_starts: int = dataclasses.field(default_factory=default_parallelism)
    shutdown_deadline: float = 900.0  # seconds for the whole shutdown pass
    start_delay: float = 0.0  # seconds between two starts at boot
    kept_images_warn_share: float = 10.0  # percent of the state file system kept images may take
    # A migration is bound by the link, not the CPU: a few at once fill it.
    max_parallel_migrations: int = 2


@dataclass(frozen=True)
class Metrics:
    """The policy's ``metrics:``."""
    textfile: str | None = None  # the Prometheus text file written after each pass; None: none


NUT_PORT = 3493  # NUT's port (IANA)


class OnUnreadable(enum.StrEnum):
    """What the shutdown pass goes by when the UPS cannot be read (or says something absurd)."""

    FIXED_DEADLINE = "fixed-deadline"  # ``limits.shutdown_deadline``, as without a UPS


@dataclass(frozen=True)
class UpsAddress:
    """A UPS as NUT names it: ``name@host[:port]``."""

    name: str
    host: str
    port: int = NUT_PORT

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.name}@{host}" + (f":{self.port}" if self.port != NUT_PORT else "")


@dataclass(frozen=True)
class Power:
    """The policy's ``power:``: the UPS the host runs on, read through NUT's upsd."""

    ups: UpsAddress
    credentials: str | None = None  # a root-only file with the upsd user's name and password
    margin: float = 60.0  # seconds of battery kept in hand
    poll: float = 5.0  # seconds between two reads while on battery
    on_unreadable: OnUnreadable = OnUnreadable.FIXED_DEADLINE
    shutdown_command: tuple[str, ...] = ("systemctl", "poweroff")
    # where ``power.ups`` and ``power.credentials`` are in the file, for check's messages
    ups_line: int | None = None
    credentials_line: int | None = None
    credentials_column: int | None = None


class OnSavedImages(enum.StrEnum):
    """What the apt hook does when QEMU or libvirt is about to change under saved guests."""

    WARN = "warn"  # say which guests and what to do; apt goes on
    REFUSE = "refuse"  # the same, and apt stops before it unpacks anything


@dataclass(frozen=True)
class Upgrades:
    """The policy's ``upgrades:``: read by the apt hook only (``libmgsave.apthook``)."""

    on_saved_images: OnSavedImages = OnSavedImages.WARN


@dataclass(frozen=True)
class Policy:
    """A whole policy, checked and built: what every pass and command reads."""
    version: int = 1
    source: str | None = None  # the file it came from; None for the built-in defaults
    connections: tuple[str, ...] = DEFAULT_CONNECTIONS
    # The file (or --connect) names them: $LIBVIRT_DEFAULT_URI replaces only the built-in ones.
    connections_named: bool = False
    defaults: Mapping[str, object] = field(default_factory=_frozen_mapping)  # only keys written
    defaults_line: int | None = None  # where ``defaults:`` is in the file, for check's warnings
    rules: tuple[Rule, ...] = ()
    limits: Limits = field(default_factory=Limits)
    metrics: Metrics = Metrics()
    power: Power | None = None  # None: no UPS configured
    upgrades: Upgrades = Upgrades()

    @property
    def is_builtin(self) -> bool:
        return self.source is None

    def with_connections(self, connections: tuple[str, ...]) -> Policy:
        return dataclasses.replace(self, connections=tuple(connections), connections_named=True)

    @property
    def reboots_differently(self) -> bool:
        """Whether any guest may get an ``on_reboot`` chain of its own: then the kind of
        shutdown matters (``mgsave watch`` waits for it on a logind that does not say it)."""
        mappings = (self.defaults, *(rule.settings for rule in self.rules))
        return any(isinstance(mapping.get("on_reboot"), tuple) for mapping in mappings)


BUILTIN_POLICY = Policy()


class PolicyOrigin(enum.StrEnum):
    """Which policy a pass (or ``plan``, ``status``) runs on."""

    FILE = "file"  # the policy file as it is now
    LAST_VALID = "last-valid-copy"  # the file is broken: the copy kept when check or a pass last accepted it
    BUILTIN = "built-in"  # no file (the default one missing), or a broken one and no usable copy


@dataclass(frozen=True)
class PolicyChoice:
    """The policy a pass ran on, and where it came from: said in the summary, the journal and
    ``--json``, since on a broken file the guests get what an earlier version of it said (or the
    built-in defaults), not what the file says now."""

    origin: PolicyOrigin
    path: str  # the policy file
    copy_saved: float | None = None  # LAST_VALID: when the copy was kept (epoch)
    copy_digest: str | None = None  # LAST_VALID: "sha256:<hex>" of the file's bytes then
    copy_refused: str | None = None  # BUILTIN on a broken file: why its last valid copy was not used

    def describe(self) -> str:
        if self.origin is PolicyOrigin.FILE:
            return f"the policy file {self.path}"
        if self.origin is PolicyOrigin.LAST_VALID:
            return f"the last valid copy of {self.path} ({copy_stamp(self.copy_saved, self.copy_digest)})"
        why = f": its last valid copy cannot be used ({self.copy_refused})" if self.copy_refused else ""
        return f"the built-in defaults{why}"

    def to_dict(self) -> dict:
        return {"origin": str(self.origin), "path": self.path, "copy_saved": jsonout.timestamp(self.copy_saved),
                "copy_digest": self.copy_digest, "copy_refused": self.copy_refused}


def copy_stamp(saved: float | None, digest: str | None) -> str:
    """When a copy of the policy was kept and its digest, short:
    ``kept 2026-12-06 16:00:05 UTC, sha256:0123abcd4567``."""
    when = time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(saved)) if saved is not None else "at an unknown time"
    return f"kept {when}, {(digest or 'sha256:?')[:19]}"
