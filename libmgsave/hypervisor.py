"""The one thin wrapper around libvirt.

Every libvirt call mgsave makes goes through ``Host`` or ``Guest`` here, and every
``libvirt.libvirtError`` is turned into one of mgsave's own errors by ``translate_error``,
the only place that looks at libvirt's error codes. Method names say what they mean for a
guest (``save_memory_state``), not which libvirt call they make (``managedSave``).
"""

from __future__ import annotations

import logging
import os
import threading
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from types import MappingProxyType

import libvirt

from libmgsave import console, interrupt, parallelsave, untrusted
from libmgsave.channels import ChannelSupport, support
from libmgsave.errors import (
    GuestGone,
    HypervisorError,
    HypervisorUnavailable,
    OperationRefused,
    OperationTimeout,
)
from libmgsave.inventory import GuestInfo, GuestState
from libmgsave.saveimages import (is_sparse_image, is_whole_save_image, managed_image_path, managed_save_dir,
                                  save_dir_moved)

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

# Codes that mean "the daemon is not there (any more)": worth reconnecting and retrying.
# A system error is only a lost connection when the RPC layer reports it: the same code also
# carries I/O failures of the operation itself (ENOSPC while saving), which are refusals.
_UNAVAILABLE_CODES = {libvirt.VIR_ERR_NO_CONNECT, libvirt.VIR_ERR_RPC}
_UNAVAILABLE_DOMAINS = {libvirt.VIR_FROM_RPC, libvirt.VIR_FROM_REMOTE}
_GONE_CODES = {libvirt.VIR_ERR_NO_DOMAIN}
_TIMEOUT_CODES = {libvirt.VIR_ERR_OPERATION_ABORTED, libvirt.VIR_ERR_OPERATION_TIMEOUT}
# Why a paused guest may be paused only for a moment: a guest migrated here is paused "starting
# up", then "migration", until it has arrived (then it runs, persistent); so is one being started.
_SETTLING = {libvirt.VIR_DOMAIN_PAUSED_MIGRATION, libvirt.VIR_DOMAIN_PAUSED_STARTING_UP}
_ARRIVED = (libvirt.VIR_DOMAIN_RUNNING, libvirt.VIR_DOMAIN_RUNNING_MIGRATED)  # runs since a migration brought it


def _silence_default_error_printing() -> None:
    # libvirt prints every error to stderr by default; we report them ourselves, once.
    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)


_silence_default_error_printing()


def translate_error(error: libvirt.libvirtError, doing: str) -> HypervisorError:
    """Map a libvirtError to mgsave's error for it; ``doing`` says what we were attempting."""
    code = error.get_error_code()
    # libvirt's text carries a guest's, an agent's or a peer's: escaped and bounded once, here, so
    # that every record, summary and log line holds the same safe text.
    message = untrusted.message(f"{doing}: {error.get_error_message() or error}")
    if code in _GONE_CODES:
        return GuestGone(message, code=code)
    if code in _UNAVAILABLE_CODES or error.get_error_domain() in _UNAVAILABLE_DOMAINS:
        return HypervisorUnavailable(
            message, hint="is the libvirt daemon running? (systemctl status libvirtd)", code=code
        )
    if code in _TIMEOUT_CODES:
        return OperationTimeout(message, code=code)
    return OperationRefused(message, code=code)


@dataclass(frozen=True)
class _Facts:
    """What one bulk query told about a guest (see ``Host._bulk_facts``)."""

    state: int
    reason: int
    persistent: bool
    managed_save: bool
    autostart: bool
    memory_kib: int | None  # None: not reported, ask the guest


@dataclass(frozen=True)
class JobProgress:
    processed: int  # bytes
    total: int  # bytes; 0 when libvirt does not know yet

    @property
    def fraction(self) -> float | None:
        return self.processed / self.total if self.total else None


class Host:
    """One libvirt connection."""

    def __init__(self, uri: str, conn: libvirt.virConnect):
        self.uri = uri
        self._conn = conn

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
                    translated = _unavailable(translate_error(error, f"connecting to {uri}"))
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

    def _bulk_facts(self) -> dict[str, _Facts]:
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
            facts[uuid] = _Facts(
                state=int(record["state.state"]),
                reason=int(record.get("state.reason", 0)),
                persistent=persistent,
                managed_save=persistent and (uuid in managed or _image_on_disk(self.uri, domain.name())),
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
            return ChannelSupport(False, f"could not ask {self.uri}: {error.get_error_message() or error}")
        known = managed_save_dir(self.uri) is not None and not save_dir_moved(self.uri)
        return support(driver, lib_version, qemu_version, managed_dir_known=known,
                       binding_problem=parallelsave.binding_problem())

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
            uuid = ET.fromstring(self._conn.saveImageGetXMLDesc(path, 0)).findtext("uuid") or ""
            return bool(self._conn.lookupByUUIDString(uuid.strip()).isActive())
        except (libvirt.libvirtError, ET.ParseError):
            return False

    def saved_image_guest(self, path: str) -> GuestInfo:
        """The (transient, stopped) guest a save file written by ``Guest.save_to_file`` holds,
        read from the definition libvirt stored in it; raises HypervisorError when this
        connection cannot read it (not a save file of its kind, damaged, unreadable)."""
        try:
            xml = self._conn.saveImageGetXMLDesc(path, 0)
        except libvirt.libvirtError as error:
            raise translate_error(error, f"reading the guest definition in {path}") from None
        try:
            root = ET.fromstring(xml)
        except ET.ParseError as error:
            raise OperationRefused(f"{path}: the guest definition in it is not XML ({error})") from None
        name, uuid = (root.findtext("name") or "").strip(), (root.findtext("uuid") or "").strip()
        if not name or not uuid:
            raise OperationRefused(f"{path}: the guest definition in it has no name or UUID")
        memory = root.find("currentMemory")
        if memory is None:
            memory = root.find("memory")
        title, metadata = _title_and_metadata(xml)
        return GuestInfo(
            connection=self.uri, name=name, uuid=uuid.lower(), state=GuestState.SHUTOFF, persistent=False,
            memory_kib=_kib(memory), title=title, metadata=MappingProxyType(metadata),
        )


# How long a peer host has to answer: a connection, or a connection and a few questions.
# libvirt's connect has no timeout of its own: to an address that swallows packets it lasts as
# long as the kernel's TCP connect (about 130 s with Linux's 6 SYN retries), and a question on
# a connection whose packets start being dropped waits for TCP's retransmissions (minutes).
PEER_TIMEOUT = 15.0


def open_peer(uri: str, *, timeout: float | None = None) -> Host:
    """Connect to a peer host, giving up after ``timeout`` seconds (by default ``PEER_TIMEOUT``)
    or at a stop request. Every connection to a peer goes through here or ``ask_peer``. Raises
    HypervisorUnavailable when the peer did not answer in time or refused, interrupt.Interrupted
    when the pass was asked to stop meanwhile."""
    return _within(timeout, f"connecting to {uri}", lambda: Host.open(uri), Host.close, stoppable=True)


def ask_peer(uri: str, question, *, timeout: float | None = None, stoppable: bool = True):
    """``question(host)`` on a new connection to the peer, closed afterwards: the connect and the
    question within ``timeout`` seconds together. Raises as ``open_peer`` (Interrupted only when
    ``stoppable``: an answer the pass must have before it goes on waits out its bound), and
    whatever ``question`` raises."""
    def connect_and_ask():
        host = Host.open(uri)
        try:
            return question(host)
        finally:
            host.close()
    return _within(timeout, f"asking {uri}", connect_and_ask, stoppable=stoppable)


def _within(timeout: float | None, doing: str, work, discard=None, *, stoppable: bool):
    """``work()`` in a worker thread, waited for at most ``timeout`` seconds. Past that the worker
    is left to end on its own (a daemon thread: it never holds up the exit), and what it returns
    then is given to ``discard``: a connection that comes too late is closed, not leaked."""
    timeout = PEER_TIMEOUT if timeout is None else timeout
    box: dict = {}
    done = threading.Event()
    lock = threading.Lock()

    def run() -> None:
        try:
            value = work()
        except BaseException as error:  # handed to the waiting thread, raised there
            value, box["error"] = None, error
        with lock:
            late = box.setdefault("late", False)
            box["value"] = value
        done.set()
        if late and discard is not None and value is not None:
            discard(value)

    threading.Thread(target=run, name=f"peer: {doing}", daemon=True).start()
    give_up_at = time.monotonic() + timeout
    while not done.wait(interrupt.wait_bound(min(0.2, give_up_at - time.monotonic()))):
        if (stoppable and interrupt.requested()) or time.monotonic() >= give_up_at:
            break
    with lock:
        finished = "value" in box
        box.setdefault("late", True)
    if not finished:
        if stoppable:
            interrupt.check()
        raise HypervisorUnavailable(f"{doing}: no answer within {timeout:g} s",
                                    hint="is the peer up, and its address reachable from here?")
    if "error" in box:
        raise box["error"]
    return box["value"]


def guest_names(uri: str, *, timeout: float) -> list[str]:
    """The names of the guests on ``uri``, over a read-only connection (which any user may open
    to the local daemons), within ``timeout`` seconds: for the shell's completion. Raises
    HypervisorError when it cannot be asked."""
    def names() -> list[str]:
        try:
            conn = libvirt.openReadOnly(uri)
        except libvirt.libvirtError as error:
            raise translate_error(error, f"connecting to {uri}") from None
        try:
            return sorted(domain.name() for domain in conn.listAllDomains())
        except libvirt.libvirtError as error:
            raise translate_error(error, f"listing the guests on {uri}") from None
        finally:
            conn.close()
    return _within(timeout, f"listing the guests on {uri}", names, stoppable=False)


class Connections:
    """The open hosts of a pass. A call that finds its daemon gone goes through
    ``call_with_reconnect``: one thread at a time reconnects (until ``give_up_at``), the others
    find the connection alive again, and the call is made once more. No other code handles a
    lost connection."""

    def __init__(self, hosts: dict[str, Host], give_up_at: float):
        self._hosts = hosts
        self._give_up_at = give_up_at  # time.monotonic()
        self._lock = threading.Lock()

    @classmethod
    def open(cls, uris, *, retry_for: float, give_up_at: float) -> tuple[Connections, dict[str, str]]:
        """Open every URI; returns the connections that answered and, by URI, why each other one
        did not. Raises HypervisorUnavailable when none answered."""
        hosts, unreachable = {}, {}
        for uri in uris:
            try:
                hosts[uri] = Host.open(uri, retry_for=retry_for)
            except HypervisorUnavailable as error:
                log.error("cannot reach %s: %s", uri, error.message)
                unreachable[uri] = error.message
        if not hosts:
            raise HypervisorUnavailable(
                "no libvirt connection could be opened: " + ", ".join(uris),
                hint="is the libvirt daemon running? (systemctl status libvirtd)",
            )
        return cls(hosts, give_up_at), unreachable

    def uris(self) -> list[str]:
        return list(self._hosts)

    def drop(self, uri: str) -> None:
        """Give up on ``uri`` for the rest of the pass (its guests could not be listed)."""
        host = self._hosts.pop(uri, None)
        if host is not None:
            host.close()

    def host(self, uri: str) -> Host:
        return self._hosts[uri]

    def hosts(self) -> list[Host]:
        return list(self._hosts.values())

    def guest(self, uri: str, uuid: str) -> Guest:
        """The guest's handle, reconnecting first when the daemon went away."""
        return self.call_with_reconnect(uri, lambda: self._hosts[uri].guest(uuid))

    def call_with_reconnect(self, uri: str, call, *, after_reconnect=None):
        """``call()``; when it fails because the connection to ``uri`` is lost, reconnect, then
        ``after_reconnect(error)`` (when given: it may find that the call had gone through before
        the connection dropped, and return what to return instead of calling again, else None)
        and ``call()`` once more. Raises HypervisorUnavailable when reconnecting fails or the
        connection is lost again."""
        try:
            return call()
        except HypervisorUnavailable as error:
            self._reconnect(uri)
            if after_reconnect is not None:
                instead = after_reconnect(error)
                if instead is not None:
                    return instead
            return call()

    def _reconnect(self, uri: str) -> None:
        host = self._hosts[uri]
        with self._lock:
            if host.is_alive():
                return  # another thread did it
            remaining = max(0.0, self._give_up_at - time.monotonic())
            log.warning("lost the connection to %s; reconnecting", uri)
            host.reconnect(retry_for=remaining)
            log.info("reconnected to %s", uri)


def _unavailable(error: HypervisorError) -> HypervisorUnavailable:
    """libvirt.open reports a missing daemon socket as a generic failure: any failure to connect
    counts as "unavailable", so that the caller may retry."""
    if isinstance(error, HypervisorUnavailable):
        return error
    return HypervisorUnavailable(error.message, hint="is the libvirt daemon running?", code=error.code)


def save_room(uri: str) -> int | None:
    """Free bytes where ``uri`` keeps managed-save images; None when unknown."""
    return free_bytes(managed_save_dir(uri))


def free_bytes(path: str | None) -> int | None:
    """Free bytes on the file system that holds ``path`` (or its nearest existing parent)."""
    while path and not os.path.isdir(path):
        path = os.path.dirname(path) if path != "/" else None
    if not path:
        return None
    try:
        st = os.statvfs(path)
    except OSError:
        return None
    return st.f_bavail * st.f_frsize


class Guest:
    """One libvirt domain, seen through intent-named methods."""

    def __init__(self, host: Host, domain: libvirt.virDomain):
        self.host = host
        self._dom = domain
        self.name = domain.name()
        self.uuid = domain.UUIDString()

    def _call(self, doing: str, fn, *args):
        try:
            return fn(*args)
        except libvirt.libvirtError as error:
            raise translate_error(error, f"{self.name}: {doing}") from None

    def info(self, *, with_details: bool = True, facts: _Facts | None = None) -> GuestInfo:
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
            title, metadata = _title_and_metadata(self._call("reading XML", self._dom.XMLDesc, 0))
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
                          channels: int = 1) -> int:
        """Managed save: libvirt writes memory to its own image and stops the guest.

        ``resume_running`` marks the image to come back running even if the guest was paused
        when the save began (a save interrupted by a daemon restart can leave it paused).
        With ``channels`` > 1 the image is written in the sparse format by that many channels,
        to the file of the guest's managed save (see ``parallelsave``: libvirt has no managed
        save with channels); when that is refused, in one stream. Returns the channels used.
        """
        flags = _save_flags(bypass_cache, resume_running)
        image = managed_image_path(self.host.uri, self.name)
        if channels > 1 and image and self._saved_with_channels(image, channels, flags):
            return channels
        self._call("managed save", self._dom.managedSave, flags)
        return 1

    def save_to_file(self, path: str, *, bypass_cache: bool = False, resume_running: bool = False,
                     channels: int = 1) -> int:
        """Save to ``path`` and stop the guest (for transient guests, which have no managed slot);
        with ``channels`` > 1 as for ``save_memory_state``. Returns the channels used."""
        flags = _save_flags(bypass_cache, resume_running)
        if channels > 1 and self._saved_with_channels(path, channels, flags):
            return channels
        self._call(f"saving to {path}", self._dom.saveFlags, path, None, flags)
        return 1

    def _saved_with_channels(self, path: str, channels: int, flags: int) -> bool:
        """Save with channels; False when libvirt refused it and the guest still runs (a refused
        save leaves it running), so that one stream can be tried. Any other failure raises."""
        try:
            parallelsave.save(self._dom, path, channels, flags)
            return True
        except libvirt.libvirtError as error:
            translated = translate_error(error, f"{self.name}: saving with {channels} channels")
        except parallelsave.ChannelsFailed as error:  # not libvirt's doing: one stream may well work
            translated = OperationRefused(f"{self.name}: saving with {channels} channels: {error}")
        if not isinstance(translated, OperationRefused) or not self.is_active():
            raise translated
        log.warning("%s; saving it in one stream", translated.message)
        return False

    def has_saved_state(self) -> bool:
        """libvirt's mark, or the file it resumes from (written by a save with channels, which
        libvirt marks only once the daemon starts again)."""
        if self._call("checking for a saved image", self._dom.hasManagedSaveImage, 0):
            return True
        return bool(self._call("checking for persistence", self._dom.isPersistent)) and \
            _image_on_disk(self.host.uri, self.name)

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


def _image_on_disk(uri: str, name: str) -> bool:
    """A whole save image where libvirt looks for the guest's managed save when it starts it."""
    return is_whole_save_image(managed_image_path(uri, name))


def _save_flags(bypass_cache: bool, resume_running: bool) -> int:
    flags = libvirt.VIR_DOMAIN_SAVE_BYPASS_CACHE if bypass_cache else 0
    if resume_running:
        flags |= libvirt.VIR_DOMAIN_SAVE_RUNNING
    return flags


_UNIT_BYTES = {"b": 1, "bytes": 1, "kb": 1000, "k": 1024, "kib": 1024, "mb": 1000**2, "m": 1024**2,
               "mib": 1024**2, "gb": 1000**3, "g": 1024**3, "gib": 1024**3, "tb": 1000**4, "t": 1024**4,
               "tib": 1024**4}


def _kib(element) -> int:
    """A libvirt memory element (``<memory unit='MiB'>256</memory>``) in KiB; 0 when unknown."""
    if element is None:
        return 0
    try:
        value = int((element.text or "0").strip())
    except ValueError:
        return 0
    return value * _UNIT_BYTES.get((element.get("unit") or "KiB").lower(), 1024) // 1024


def _title_and_metadata(xml: str) -> tuple[str, dict[str, str]]:
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
