"""One libvirt connection: open (waiting for the daemon), list its guests, restore saved ones."""

from __future__ import annotations

import logging
import time

import libvirt

from libmgsave import console, interrupt, parallelsave
from libmgsave.channels import ChannelSupport, daemon_may_offer, support
from libmgsave.domainxml import DefinitionError, stopped_transient_guest, uuid_of
from libmgsave.errors import GuestGone, HypervisorUnavailable, OperationRefused
from libmgsave.hypervisor.guest import Facts, Guest, image_on_disk
from libmgsave.hypervisor.translate import translate_error, unavailable
from libmgsave.inventory import GuestInfo
from libmgsave.saveimages import is_sparse_image, managed_save_dir, save_dir_moved

log = logging.getLogger("mgsave")


class Host:
    """One libvirt connection."""

    def __init__(self, uri: str, conn: libvirt.virConnect):
        self.uri = uri
        self._conn = conn
        self._versions: tuple[int | None, int | None] | None = None

    @classmethod
    def open(cls, uri: str, *, retry_for: float = 0.0, retry_every: float = 1.0) -> Host:
        """Connect to ``uri``, retrying for ``retry_for`` seconds while the daemon is unavailable.
        While it retries, one log line says what it waits for and until when (again only if the
        reason changes), a terminal shows the time left on the live line, and one line the result.

        Raises HypervisorUnavailable when it never answers, HypervisorError for other refusals.
        """
        started = time.monotonic()
        give_up_at = started + retry_for
        until = time.strftime("%H:%M:%S", time.localtime(time.time() + retry_for))
        said = None  # the reason last logged
        try:
            while True:
                try:
                    host = cls(uri, libvirt.open(uri))
                except libvirt.libvirtError as error:
                    translated = unavailable(translate_error(error, f"connecting to {uri}"))
                    if time.monotonic() + retry_every > give_up_at:
                        if said is not None:
                            translated.message += f" (no answer for {time.monotonic() - started:.0f} s)"
                        raise translated from None
                    if translated.message != said:
                        said = translated.message
                        log.warning("%s; trying again every %g s until %s", said, retry_every, until)
                    console.live(f"waiting for {uri} to answer, until {until}: "
                                 f"{give_up_at - time.monotonic():.0f} s left")
                    interrupt.sleep(retry_every)  # a pass stopped meanwhile gives up at once
                    continue
                if said is not None:
                    log.warning("%s answers, after %.1f s", uri, time.monotonic() - started)
                return host
        finally:
            if said is not None:
                console.clear_live()

    def reconnect(self, *, retry_for: float = 0.0) -> None:
        """Replace a dead connection by a new one to the same URI."""
        fresh = Host.open(self.uri, retry_for=retry_for)
        try:
            self._conn.close()
        except libvirt.libvirtError:
            pass
        self._conn = fresh._conn

    def close(self) -> None:
        try:
            self._conn.close()
        except libvirt.libvirtError:
            pass

    def is_alive(self) -> bool:
        try:
            return bool(self._conn.isAlive())
        except libvirt.libvirtError:
            return False

    def hypervisor_type(self) -> str:
        """libvirt's name of the driver behind this connection ("QEMU", "LXC"...)."""
        try:
            return str(self._conn.getType())
        except libvirt.libvirtError as error:
            raise translate_error(error, f"reading the hypervisor type of {self.uri}") from None

    def versions(self) -> tuple[int | None, int | None]:
        """The hypervisor's (QEMU's) and libvirt's version numbers, None for one it does not say;
        asked once per connection and kept (neither changes while a command runs)."""
        if self._versions is None:
            versions = []
            for call in (self._conn.getVersion, self._conn.getLibVersion):
                try:
                    versions.append(int(call()))
                except libvirt.libvirtError as error:
                    log.debug("%s: no version (%s)", self.uri, error)
                    versions.append(None)
            self._versions = (versions[0], versions[1])
        return self._versions

    def capabilities(self) -> tuple[str | None, str | None]:
        """libvirt's capabilities XML (every emulator's machine types) and its domain
        capabilities XML for the default emulator (CPU and device models); None for one the
        driver does not give (the test driver has no domain capabilities)."""
        answers: list[str | None] = []
        for doing, call in (("capabilities", self._conn.getCapabilities),
                            ("domain capabilities", lambda: self._conn.getDomainCapabilities(None, None, None, None, 0))):
            try:
                answers.append(str(call()))
            except libvirt.libvirtError as error:
                log.debug("%s: no %s (%s)", self.uri, doing, error)
                answers.append(None)
        return answers[0], answers[1]

    def saved_file_definition(self, path: str) -> str:
        """The definition embedded in a save file; raises HypervisorError when it cannot be read."""
        try:
            return str(self._conn.saveImageGetXMLDesc(path, 0))
        except libvirt.libvirtError as error:
            raise translate_error(error, f"reading the guest definition in {path}") from None

    def free_memory(self) -> int | None:
        """The host's free memory in bytes, as the daemon sees it; None when it cannot tell."""
        try:
            return int(self._conn.getFreeMemory())
        except libvirt.libvirtError as error:
            translated = translate_error(error, f"reading the free memory of {self.uri}")
            if isinstance(translated, HypervisorUnavailable):
                raise translated from None
            return None

    def guests(self, *, with_details: bool = True) -> list[GuestInfo]:
        """Snapshot every guest on this connection, sorted by name.

        ``with_details`` reads title and metadata from each guest's XML (only needed when a
        rule matches on them). A guest that vanishes while we look is left out.
        """
        try:
            domains = self._conn.listAllDomains(0)
        except libvirt.libvirtError as error:
            raise translate_error(error, f"listing guests on {self.uri}") from None
        known = self._bulk_facts()
        snapshots = []
        for domain in domains:
            try:
                guest = Guest(self, domain)
                snapshots.append(guest.info(with_details=with_details, facts=known.get(guest.uuid)))
            except GuestGone:
                continue
        snapshots.sort(key=lambda g: g.name)
        return snapshots

    def _bulk_facts(self) -> dict[str, Facts]:
        """State, persistence, saved image, autostart flag and memory of every guest, by UUID,
        in four calls for all guests instead of five per guest (each a round trip to the
        daemon: 50,000 of them for 10,000 guests). A guest missing here (defined meanwhile,
        or a daemon that cannot answer these calls: then this is empty) is asked on its own.
        """
        try:
            stats = self._conn.getAllDomainStats(
                libvirt.VIR_DOMAIN_STATS_STATE | libvirt.VIR_DOMAIN_STATS_BALLOON,
                libvirt.VIR_CONNECT_GET_ALL_DOMAINS_STATS_NOWAIT,
            )

            def uuids(flag: int) -> set[str]:
                return {d.UUIDString() for d in self._conn.listAllDomains(flag)}

            transient = uuids(libvirt.VIR_CONNECT_LIST_DOMAINS_TRANSIENT)
            managed = uuids(libvirt.VIR_CONNECT_LIST_DOMAINS_MANAGEDSAVE)
            autostart = uuids(libvirt.VIR_CONNECT_LIST_DOMAINS_AUTOSTART)
        except libvirt.libvirtError as error:
            log.debug("listing every guest's facts at once failed (%s); asking each guest", error)
            return {}
        facts = {}
        for domain, record in stats:
            uuid = domain.UUIDString()
            if "state.state" not in record:
                continue
            persistent = uuid not in transient
            facts[uuid] = Facts(
                state=int(record["state.state"]),
                reason=int(record.get("state.reason", 0)),
                persistent=persistent,
                managed_save=persistent and (uuid in managed or image_on_disk(self.uri, domain.name())),
                autostart=persistent and uuid in autostart,
                memory_kib=int(record.get("balloon.current") or record.get("balloon.maximum") or 0) or None,
            )
        return facts

    def guest(self, uuid: str) -> Guest:
        """The guest with this UUID; raises GuestGone when it is not defined (any more)."""
        try:
            return Guest(self, self._conn.lookupByUUIDString(uuid))
        except libvirt.libvirtError as error:
            raise translate_error(error, f"looking up guest {uuid} on {self.uri}") from None

    def channel_support(self) -> ChannelSupport:
        """Whether this connection can save with parallel channels (``channels.support``)."""
        try:
            driver = self._conn.getType()
            lib_version = self._conn.getLibVersion()
            qemu_version = self._conn.getVersion() if driver == "QEMU" else None
        except libvirt.libvirtError as error:
            why = f"could not ask {self.uri}: {error.get_error_message() or error}"
            return ChannelSupport(False, why, why)
        known = managed_save_dir(self.uri) is not None and not save_dir_moved(self.uri)
        # The binding is asked only when the daemon could take channels: asking may load the C
        # library through ctypes (importing ctypes.util alone takes 8-10 ms here), for nothing
        # on an older libvirt.
        problem = parallelsave.binding_problem() if daemon_may_offer(driver, lib_version) else None
        return support(driver, lib_version, qemu_version, managed_dir_known=known, binding_problem=problem)

    def restore_params(self, path: str, channels: int, flags: int) -> None:
        """virDomainRestoreParams of ``path`` with ``channels`` channels; raises as
        ``parallelsave.restore`` does (for ``Guest.resume_with_channels``)."""
        parallelsave.restore(self._conn, path, channels, flags)

    def restore_from_file(self, path: str, *, bypass_cache: bool = False, channels: int = 1) -> None:
        """Recreate a (transient) guest from a file written by ``Guest.save_to_file``, reading
        a sparse one with ``channels`` channels (one stream when that is refused)."""
        flags = libvirt.VIR_DOMAIN_SAVE_BYPASS_CACHE if bypass_cache else 0
        if channels > 1 and is_sparse_image(path):
            try:
                parallelsave.restore(self._conn, path, channels, flags)
                return
            except libvirt.libvirtError as error:
                translated = translate_error(error, f"restoring {path} with {channels} channels")
            except parallelsave.ChannelsFailed as error:  # not libvirt's doing: one stream may well work
                if self._restored(path):  # raised after libvirt had done it
                    log.warning("restoring %s with %d channels: %s; it went through", path, channels, error)
                    return
                translated = OperationRefused(f"restoring {path} with {channels} channels: {error}")
            if not isinstance(translated, OperationRefused) or self._restored(path):
                raise translated from None
            log.warning("%s; restoring it in one stream", translated.message)
        try:
            self._conn.restoreFlags(path, None, flags)
        except libvirt.libvirtError as error:
            raise translate_error(error, f"restoring {path}") from None

    def _restored(self, path: str) -> bool:
        """True when the guest saved in ``path`` runs (a failed restore leaves none)."""
        try:
            uuid = uuid_of(self._conn.saveImageGetXMLDesc(path, 0))
            return uuid is not None and bool(self._conn.lookupByUUIDString(uuid).isActive())
        except libvirt.libvirtError:
            return False

    def saved_image_guest(self, path: str) -> GuestInfo:
        """The (transient, stopped) guest a save file written by ``Guest.save_to_file`` holds,
        read from the definition libvirt stored in it; raises HypervisorError when this
        connection cannot read it (not a save file of its kind, damaged, unreadable)."""
        xml = self.saved_file_definition(path)
        try:
            return stopped_transient_guest(xml, self.uri)
        except DefinitionError as error:
            raise OperationRefused(f"{path}: {error}") from None
