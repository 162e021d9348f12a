"""One guest (a libvirt domain) seen through intent-named methods: save, start, stop, migrate."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from types import MappingProxyType
from typing import Protocol

import libvirt

from libmgsave import parallelsave, resuming
from libmgsave.domainxml import title_and_metadata
from libmgsave.errors import GuestGone, HypervisorError, HypervisorUnavailable, OperationRefused
from libmgsave.hypervisor.translate import translate_error
from libmgsave.inventory import GuestInfo, GuestState
from libmgsave.saveimages import is_whole_save_image, managed_image_path

log = logging.getLogger("mgsave")

_STATES = {
    libvirt.VIR_DOMAIN_NOSTATE: GuestState.NOSTATE,
    libvirt.VIR_DOMAIN_RUNNING: GuestState.RUNNING,
    libvirt.VIR_DOMAIN_BLOCKED: GuestState.BLOCKED,
    libvirt.VIR_DOMAIN_PAUSED: GuestState.PAUSED,
    libvirt.VIR_DOMAIN_SHUTDOWN: GuestState.SHUTDOWN,
    libvirt.VIR_DOMAIN_SHUTOFF: GuestState.SHUTOFF,
    libvirt.VIR_DOMAIN_CRASHED: GuestState.CRASHED,
    libvirt.VIR_DOMAIN_PMSUSPENDED: GuestState.PMSUSPENDED,
}
# Why a paused guest may be paused only for a moment: a guest migrated here is paused "starting
# up", then "migration", until it has arrived (then it runs, persistent); so is one being started.
_SETTLING = {libvirt.VIR_DOMAIN_PAUSED_MIGRATION, libvirt.VIR_DOMAIN_PAUSED_STARTING_UP}
_ARRIVED = (libvirt.VIR_DOMAIN_RUNNING, libvirt.VIR_DOMAIN_RUNNING_MIGRATED)  # runs since a migration brought it


@dataclass(frozen=True)
class SavedAs:
    """How a save went: the channels it wrote with, the format it asked for (None: libvirt's own)."""

    channels: int
    image_format: str | None


@dataclass(frozen=True)
class Facts:
    """What one bulk query told about a guest (see ``Host._bulk_facts``)."""

    state: int
    reason: int
    persistent: bool
    managed_save: bool
    autostart: bool
    memory_kib: int | None  # None: not reported, ask the guest


@dataclass(frozen=True)
class JobProgress:
    """How far a running save or migration has got."""
    processed: int  # bytes
    total: int  # bytes; 0 when libvirt does not know yet

    @property
    def fraction(self) -> float | None:
        return self.processed / self.total if self.total else None


class HostOfGuest(Protocol):
    """What a guest asks of its ``Host`` (which makes guests: it is not imported here)."""

    uri: str

    def is_alive(self) -> bool: ...


class Guest:
    """One libvirt domain, seen through intent-named methods."""

    def __init__(self, host: HostOfGuest, domain: libvirt.virDomain):
        self.host = host
        self._dom = domain
        self.name = domain.name()
        self.uuid = domain.UUIDString()

    def _call(self, doing: str, fn, *args):
        try:
            return fn(*args)
        except libvirt.libvirtError as error:
            raise translate_error(error, f"{self.name}: {doing}") from None

    def info(self, *, with_details: bool = True, facts: Facts | None = None) -> GuestInfo:
        """A snapshot of the guest. ``facts`` are what ``Host._bulk_facts`` already knows
        about it; what they lack is asked of libvirt."""
        if facts is None:
            state_code, reason = self._call("reading state", self._dom.state)
            persistent = bool(self._call("reading persistence", self._dom.isPersistent))
            managed = bool(persistent and self.has_saved_state())
            autostart = bool(persistent and self._call("reading autostart flag", self._dom.autostart))
            memory_kib = None
        else:
            state_code, reason, persistent = facts.state, facts.reason, facts.persistent
            managed, autostart, memory_kib = facts.managed_save, facts.autostart, facts.memory_kib
        if memory_kib is None:
            info = self._call("reading info", self._dom.info)
            memory_kib = int(info[2]) or int(info[1])
        title, metadata = "", {}
        if with_details:
            title, metadata = title_and_metadata(self._call("reading XML", self._dom.XMLDesc, 0))
        return GuestInfo(
            connection=self.host.uri,
            name=self.name,
            uuid=self.uuid,
            state=_STATES.get(state_code, GuestState.NOSTATE),
            persistent=persistent,
            has_managed_save=managed,
            memory_kib=memory_kib,
            title=title,
            metadata=MappingProxyType(metadata),
            libvirt_autostart=autostart,
            settling=state_code == libvirt.VIR_DOMAIN_PAUSED and reason in _SETTLING,
            arrived_by_migration=(state_code, reason) == _ARRIVED,
        )

    def state(self) -> tuple[GuestState, int]:
        """The guest's state and libvirt's reason code for it."""
        code, reason = self._call("reading state", self._dom.state)
        return _STATES.get(code, GuestState.NOSTATE), reason

    def is_active(self) -> bool:
        return bool(self._call("reading state", self._dom.isActive))

    def was_restored(self) -> bool:
        """True when libvirt says the running guest came back from a saved image."""
        code, reason = self._call("reading state", self._dom.state)
        return code == libvirt.VIR_DOMAIN_RUNNING and reason == libvirt.VIR_DOMAIN_RUNNING_RESTORED

    def being_saved(self) -> bool:
        """True while a save of this guest runs, whoever began it (libvirt pauses it to save it)."""
        code, reason = self._call("reading state", self._dom.state)
        return code == libvirt.VIR_DOMAIN_PAUSED and reason == libvirt.VIR_DOMAIN_PAUSED_SAVE

    def save_memory_state(self, *, bypass_cache: bool = False, resume_running: bool = False,
                          channels: int = 1, image_format: str | None = None) -> SavedAs:
        """Managed save: libvirt writes memory to its own image and stops the guest.

        ``resume_running`` marks the image to come back running even if the guest was paused
        when the save began (a save interrupted by a daemon restart can leave it paused).
        With ``channels`` > 1 the image is written in the sparse format by that many channels,
        and with an ``image_format`` in that format (in one stream unless sparse), to the file
        of the guest's managed save (see ``parallelsave``: libvirt has no managed save with
        parameters); when that is refused, in one stream in libvirt's own format. Returns how
        it was saved.
        """
        flags = _save_flags(bypass_cache, resume_running)
        image = managed_image_path(self.host.uri, self.name)
        if (channels > 1 or image_format) and image and self._saved_with_params(image, channels, flags, image_format):
            return SavedAs(channels, image_format)
        self._call("managed save", self._dom.managedSave, flags)
        return SavedAs(1, None)

    def save_to_file(self, path: str, *, bypass_cache: bool = False, resume_running: bool = False,
                     channels: int = 1, image_format: str | None = None) -> SavedAs:
        """Save to ``path`` and stop the guest (for transient guests, which have no managed slot);
        with ``channels`` > 1 or an ``image_format`` as for ``save_memory_state``."""
        flags = _save_flags(bypass_cache, resume_running)
        if (channels > 1 or image_format) and self._saved_with_params(path, channels, flags, image_format):
            return SavedAs(channels, image_format)
        self._call(f"saving to {path}", self._dom.saveFlags, path, None, flags)
        return SavedAs(1, None)

    def _saved_with_params(self, path: str, channels: int, flags: int, image_format: str | None) -> bool:
        """Save with channels or a format; False when libvirt refused it and the guest still runs
        (a refused save leaves it running), so that one stream can be tried. Any other failure raises."""
        how = f"{channels} channels" if channels > 1 else f"image format {image_format}"
        try:
            parallelsave.save(self._dom, path, channels, flags, image_format or parallelsave.SPARSE)
            return True
        except libvirt.libvirtError as error:
            translated = translate_error(error, f"{self.name}: saving with {how}")
        except parallelsave.ChannelsFailed as error:  # not libvirt's doing: one stream may well work
            translated = OperationRefused(f"{self.name}: saving with {how}: {error}")
        if not isinstance(translated, OperationRefused) or not self.is_active():
            raise translated
        log.warning("%s; saving it in one stream in libvirt's own format", translated.message)
        return False

    def resume_with_channels(self, image: str, channels: int, *, bypass_cache: bool = False) -> bool:
        """Resume the guest from its sparse managed-save ``image`` read with ``channels`` channels
        (virDomainRestoreParams: libvirt's start reads it in one stream). False when that was not
        done and the image is back where it was: the caller starts the guest the usual way.

        The image is moved aside first and removed once restored (``resuming``: libvirt leaves a
        restored file in place, and a later start would resume it). Raises HypervisorError when
        it failed otherwise, saying where the image is."""
        try:
            aside = resuming.take_aside(image)
        except OSError as error:
            log.warning("%s: cannot move its image aside to read it with %d channels (%s); resuming it in "
                        "one stream", self.name, channels, error)
            return False
        flags = libvirt.VIR_DOMAIN_SAVE_BYPASS_CACHE if bypass_cache else 0
        try:
            self.host.restore_params(aside, channels, flags)
        except libvirt.libvirtError as error:
            return self._after_failed_restore(image, aside, translate_error(error, f"{self.name}: resuming "
                                                                             f"with {channels} channels"))
        except parallelsave.ChannelsFailed as error:  # raised before libvirt did it, or after
            if not self.is_active():
                return self._after_failed_restore(image, aside, OperationRefused(
                    f"{self.name}: resuming with {channels} channels: {error}"))
        resuming.remove(aside)
        return True

    def _after_failed_restore(self, image: str, aside: str, error: HypervisorError) -> bool:
        """Put the image back where a start resumes it, unless the guest runs now (then it stays
        aside: back in place it would be resumed over the guest's later state); False (start it
        in one stream) when libvirt refused, else raise."""
        if isinstance(error, HypervisorUnavailable) or self.is_active():
            raise type(error)(f"{error.message}; its image is kept at {aside}")
        try:
            resuming.put_back(aside, image)
        except OSError as put_back_error:
            raise OperationRefused(f"{error.message}; its image is kept at {aside} ({put_back_error})") from None
        if not isinstance(error, OperationRefused):
            raise error
        log.warning("%s; resuming it in one stream", error.message)
        return False

    def has_saved_state(self) -> bool:
        """libvirt's mark, or the file it resumes from (written by a save with channels, which
        libvirt marks only once the daemon starts again)."""
        if self._call("checking for a saved image", self._dom.hasManagedSaveImage, 0):
            return True
        return bool(self._call("checking for persistence", self._dom.isPersistent)) and \
            image_on_disk(self.host.uri, self.name)

    def definition(self) -> str:
        """The guest's domain XML as libvirt holds it now (the live one while it runs)."""
        return str(self._call("reading XML", self._dom.XMLDesc, 0))

    def saved_state_definition(self) -> str:
        """The definition embedded in its managed-save image (an admin may have edited it with
        ``virsh managedsave-define``): what libvirt starts QEMU with when it resumes it."""
        return str(self._call("reading the definition in its saved image", self._dom.managedSaveGetXMLDesc, 0))

    def discard_saved_state(self) -> None:
        self._call("removing the saved image", self._dom.managedSaveRemove, 0)

    def start(self, *, bypass_cache: bool = False, force_boot: bool = False) -> None:
        """Start the guest; libvirt resumes it from its managed-save image when it has one.

        ``force_boot`` discards the image and cold-boots instead.
        """
        flags = 0
        if bypass_cache:
            flags |= libvirt.VIR_DOMAIN_START_BYPASS_CACHE
        if force_boot:
            flags |= libvirt.VIR_DOMAIN_START_FORCE_BOOT
        self._call("starting", self._dom.createWithFlags, flags)

    def request_shutdown(self) -> None:
        """Ask the guest OS to shut down (ACPI power button or agent, as libvirt chooses)."""
        self._call("requesting shutdown", self._dom.shutdown)

    def power_off(self) -> None:
        """Hard stop, like pulling the plug."""
        self._call("powering off", self._dom.destroy)

    def job_progress(self) -> JobProgress | None:
        """Progress of the running save job, or None when libvirt cannot tell."""
        try:
            stats = self._dom.jobStats(0)
        except libvirt.libvirtError as error:
            translated = translate_error(error, f"{self.name}: reading job progress")
            if isinstance(translated, (HypervisorUnavailable, GuestGone)):
                raise translated from None
            return None
        if not stats or stats.get("type", 0) == libvirt.VIR_DOMAIN_JOB_NONE:
            return None
        for processed_key, total_key in (("data_processed", "data_total"), ("memory_processed", "memory_total")):
            if processed_key in stats:
                return JobProgress(int(stats[processed_key]), int(stats.get(total_key, 0)))
        return None

    def migrate_to(self, peer: str, *, live: bool = True, bandwidth_mib: int | None = None,
                   copy_disks: bool = False) -> None:
        """Peer-to-peer migration to ``peer`` (this guest's daemon connects to it, with its own
        credentials): persistent there, undefined here once it runs there, so that it never
        exists twice nor nowhere. Blocks until the migration ends; ``abort_job`` from another
        thread cuts it short (the guest then runs on here)."""
        flags = (libvirt.VIR_MIGRATE_PEER2PEER | libvirt.VIR_MIGRATE_PERSIST_DEST
                 | libvirt.VIR_MIGRATE_UNDEFINE_SOURCE)
        if live:
            flags |= libvirt.VIR_MIGRATE_LIVE
        if copy_disks:
            flags |= libvirt.VIR_MIGRATE_NON_SHARED_DISK
        params = {libvirt.VIR_MIGRATE_PARAM_BANDWIDTH: int(bandwidth_mib)} if bandwidth_mib else {}
        try:
            self._dom.migrateToURI3(peer, params, flags)
        except libvirt.libvirtError as error:
            translated = translate_error(error, f"{self.name}: migrating to {peer}")
            # The peer's daemon not answering reaches us as an RPC error too; only a dead
            # connection to our own daemon is worth a reconnect (and a second attempt).
            if isinstance(translated, HypervisorUnavailable) and self.host.is_alive():
                translated = OperationRefused(translated.message, code=translated.code)
            raise translated from None

    def is_persistent(self) -> bool:
        return bool(self._call("reading persistence", self._dom.isPersistent))

    def abort_job(self) -> None:
        """Abort a running save or migration; the guest keeps running here."""
        self._call("aborting the running job", self._dom.abortJob)

    def agent_responds(self, timeout: int = 5) -> bool:
        """True when the QEMU guest agent answers a ping."""
        import libvirt_qemu  # only needed for ``ready: agent``

        try:
            libvirt_qemu.qemuAgentCommand(self._dom, '{"execute":"guest-ping"}', timeout, 0)
            return True
        except libvirt.libvirtError:
            return False

    def sync_clock(self) -> None:
        """Set the guest clock from the host's, through the guest agent."""
        now = time.time()
        seconds = int(now)
        self._call(
            "setting the guest clock",
            self._dom.setTime,
            {"seconds": seconds, "nseconds": int((now - seconds) * 1e9)},
            0,
        )


def image_on_disk(uri: str, name: str) -> bool:
    """A whole save image where libvirt looks for the guest's managed save when it starts it."""
    return is_whole_save_image(managed_image_path(uri, name))


def _save_flags(bypass_cache: bool, resume_running: bool) -> int:
    flags = libvirt.VIR_DOMAIN_SAVE_BYPASS_CACHE if bypass_cache else 0
    if resume_running:
        flags |= libvirt.VIR_DOMAIN_SAVE_RUNNING
    return flags
