"""mgsave's D-Bus conversations with systemd and logind: the shutdown pass started the moment
logind announces a shutdown, and what the pass asks before it runs at a stop of its unit.

A shutdown requested through logind (``systemctl poweroff``/``reboot``, ``shutdown``, the power
button) first waits for every "delay" inhibitor: logind sends PrepareForShutdown(true) and
holds the poweroff until each holder closes its lock, or ``InhibitDelayMaxSec`` (5 s by default)
has passed. libvirt's QEMU driver (libvirt >= 11) holds such a lock while any guest runs and
lets go only when none does, so on those hosts every shutdown with guests running waited the
full 5 s before systemd even began stopping units, mgsave's shutdown pass among them.

``mgsave-early.service`` runs ``watch``: it takes a delay lock of its own, and when logind
announces a shutdown it asks systemd to stop ``mgsave.service`` (whose ExecStop= is the shutdown
pass, exactly as at any other stop), waits for that stop to end, and lets its lock go. Once the
guests are saved libvirt drops its lock too, and the shutdown goes on at once.

Only logind may start that: any local user can send a signal to the watcher's own bus name,
which reaches it whatever its match rules say. So a PrepareForShutdown counts only when it was
broadcast (no destination) by the connection that owns ``org.freedesktop.login1`` when it
arrives (asked of the bus then, so a restarted logind is still believed). A shutdown that is
cancelled after the pass (PrepareForShutdown(false)) leaves the guests saved on a running host:
that is logged as an error with what to do, the pass is armed again, and the watch goes on with
a fresh lock.

A reboot may run other chains than a power-off (``on_reboot``), so the pass must know which it
is. logind 255 and later says so (``PreparingForShutdownWithMetadata``, asked by the pass among
``host_facts``); an older one does not, and in its delay phase systemd has queued no job yet. On
such a host, when the policy has ``on_reboot`` chains, the watcher lets its lock go at once
instead of starting the pass: systemd then queues the job of the kind (``reboot.target``...),
which the pass reads at the unit's stop, after any other delay lock (libvirt's) is let go or
``InhibitDelayMaxSec`` has passed.

Nothing depends on the watch: without a system bus, logind or jeepney, or when it fails in any
way, it logs why and exits, and the pass runs when systemd stops ``mgsave.service`` during the
shutdown, as it always did. jeepney (pure Python, no C, no event loop to set up) is the D-Bus
client; it is imported only here, never by the passes' other modules.
"""

from __future__ import annotations

import collections
import logging
from collections.abc import Callable
import shutil
import time

from libmgsave.hostdown import ARMING_UNIT, HostFacts, Job

log = logging.getLogger("mgsave")

LOGIN1 = ("/org/freedesktop/login1", "org.freedesktop.login1", "org.freedesktop.login1.Manager")
SYSTEMD1 = ("/org/freedesktop/systemd1", "org.freedesktop.systemd1", "org.freedesktop.systemd1.Manager")
DBUS = ("/org/freedesktop/DBus", "org.freedesktop.DBus", "org.freedesktop.DBus")
PROPERTIES = "org.freedesktop.DBus.Properties"
UNIT = "org.freedesktop.systemd1.Unit"
WHY = "saving the libvirt guests before the host goes down"
REARM_UNIT = "mgsave-rearm.service"
# Stop polling for the pass after this long; by then logind has long gone on without us.
MAX_WAIT = 3600.0
CALL_TIMEOUT = 30.0
FACT_TIMEOUT = 5.0  # for each question the unit's stop asks before the pass
BRING_BACK = "'mgsave boot' (or 'systemctl start mgsave-boot.service') brings them back"


def _address(spec, interface: str | None = None):
    from jeepney import DBusAddress
    path, name, default_interface = spec
    return DBusAddress(path, bus_name=name, interface=interface or default_interface)


def _call(conn, address, method: str, signature: str = "", body: tuple = (), timeout: float = CALL_TIMEOUT):
    from jeepney import new_method_call
    from jeepney.wrappers import unwrap_msg
    message = new_method_call(address, method, signature or None, body)
    return unwrap_msg(conn.send_and_get_reply(message, timeout=timeout))


def _property(conn, spec, interface: str, name: str, timeout: float = FACT_TIMEOUT):
    ((_signature, value),) = _call(conn, _address(spec, PROPERTIES), "Get", "ss", (interface, name), timeout)
    return value


def open_system_bus(enable_fds: bool = False):
    """A connection to the system bus ($DBUS_SYSTEM_BUS_ADDRESS, else the standard socket)."""
    from jeepney.io.blocking import open_dbus_connection
    return open_dbus_connection(bus="SYSTEM", enable_fds=enable_fds)


# -- systemd -----------------------------------------------------------------------------------


def unit_spec(conn, unit: str, timeout: float = CALL_TIMEOUT):
    """``unit``'s object (its path stays the same while it is loaded)."""
    (path,) = _call(conn, _address(SYSTEMD1), "LoadUnit", "s", (unit,), timeout)
    return (path, SYSTEMD1[1], None)


def unit_state(conn, spec) -> str:
    return _property(conn, spec, UNIT, "ActiveState")


def _system_state(conn) -> str:
    return _property(conn, SYSTEMD1, SYSTEMD1[2], "SystemState")


def _jobs(conn) -> tuple[Job, ...]:
    (jobs,) = _call(conn, _address(SYSTEMD1), "ListJobs", timeout=FACT_TIMEOUT)
    return tuple(Job(unit, kind) for _id, unit, kind, *_rest in jobs)


def _preparing_for_shutdown(conn) -> bool:
    return bool(_property(conn, LOGIN1, LOGIN1[2], "PreparingForShutdown"))


def _unit_file_state(conn) -> str:
    return _property(conn, unit_spec(conn, ARMING_UNIT, FACT_TIMEOUT), UNIT, "UnitFileState")


def _shutdown_type(conn) -> str | None:
    """logind's ``type`` of the shutdown it prepares (systemd >= 255); None when it prepares none
    or is older (no such property: the kind then comes from systemd's jobs)."""
    from jeepney.wrappers import DBusErrorResponse
    try:
        metadata = _property(conn, LOGIN1, LOGIN1[2], "PreparingForShutdownWithMetadata")
    except DBusErrorResponse:
        return None
    signature, value = metadata.get("type", (None, None)) if isinstance(metadata, dict) else (None, None)
    return value if signature == "s" and value else None


# HostFacts' fields, each with the question that answers it.
_QUESTIONS = {"system_state": _system_state, "jobs": _jobs, "preparing_for_shutdown": _preparing_for_shutdown,
              "unit_file_state": _unit_file_state, "shutdown_type": _shutdown_type}


def host_facts() -> HostFacts:
    """What systemd and logind say about the host going down (``hostdown.decide`` judges it);
    whatever could not be asked is None, with the reason in ``problems``. A bus that does not
    answer within ``FACT_TIMEOUT`` is not asked again: at a shutdown the pass must not wait."""
    try:
        conn = open_system_bus()
    except ImportError:
        return HostFacts(problems=("jeepney (python3-jeepney) is not installed, so systemd and logind "
                                   "cannot be asked",))
    except Exception as error:  # noqa: BLE001 - no bus: the pass runs, and says why
        return HostFacts(problems=(f"the system bus cannot be reached ({error})",))
    facts, problems = {}, []
    with conn:
        for field, ask in _QUESTIONS.items():
            try:
                facts[field] = ask(conn)
            except TimeoutError:
                problems.append(f"no answer on the system bus within {FACT_TIMEOUT:g} s")
                break
            except Exception as error:  # noqa: BLE001 - one unanswered question is a fact too
                problems.append(f"{field.replace('_', ' ')}: {error}")
    return HostFacts(**facts, problems=tuple(problems))


def queue_rearm() -> None:
    """Start ``mgsave.service`` again once its stop under way is over: a transient unit ordered
    after it (its start job waits for that stop) runs ``systemctl start mgsave.service``. A start
    asked for now would cancel the stop job, and ``systemctl stop`` would report it failed."""
    systemctl = shutil.which("systemctl") or "/bin/systemctl"
    properties = [
        ("Description", ("s", "Arm mgsave's shutdown pass again after a stop that ran no pass")),
        ("After", ("as", [ARMING_UNIT])),
        ("CollectMode", ("s", "inactive-or-failed")),
        ("ExecStart", ("a(sasb)", [(systemctl, ["systemctl", "start", ARMING_UNIT], False)])),
    ]
    with open_system_bus() as conn:
        _call(conn, _address(SYSTEMD1), "StartTransientUnit", "ssa(sv)a(sa(sv))",
              (REARM_UNIT, "fail", properties, []))


# -- logind and the watch ----------------------------------------------------------------------


def take_delay_lock(conn):
    """logind's Inhibit(shutdown, delay): a file descriptor; the lock lasts until it is closed."""
    (fd,) = _call(conn, _address(LOGIN1), "Inhibit", "ssss", ("shutdown", "mgsave", WHY, "delay"))
    return fd


def refusal(destination: str | None, sender: str | None, owner: str | None) -> str | None:
    """Why a PrepareForShutdown is not logind's announcement, or None when it is: broadcast (no
    destination) by the current owner of logind's name."""
    if destination is not None:
        return f"it was sent to {destination} alone, and logind broadcasts"
    if owner is None:
        return "nobody owns org.freedesktop.login1"
    if sender != owner:
        return f"its sender is not logind ({owner})"
    return None


class _Broadcasts(collections.deque):
    """The PrepareForShutdown signals that came in while the watcher was busy. One addressed to
    this connection alone is dropped on arrival: any local user can send those, as many as they
    like, and none of them is logind's."""

    def append(self, message) -> None:
        from jeepney import HeaderFields
        fields = message.header.fields
        destination = fields.get(HeaderFields.destination)
        if destination is not None:
            log.warning("ignored a PrepareForShutdown signal from %s: %s", fields.get(HeaderFields.sender),
                        refusal(destination, None, None))
            return
        super().append(message)


def _owner_of_logind(conn) -> str | None:
    from jeepney.wrappers import DBusErrorResponse
    try:
        (owner,) = _call(conn, _address(DBUS), "GetNameOwner", "s", (LOGIN1[1],))
    except DBusErrorResponse:  # NameHasNoOwner: logind is not running
        return None
    return owner


def wait_for_announcement(conn, queue, starting: bool) -> None:
    """Block until logind announces a shutdown (``starting``) or that it was cancelled."""
    from jeepney import HeaderFields
    while True:
        message = conn.recv_until_filtered(queue)
        fields = message.header.fields
        reason = refusal(fields.get(HeaderFields.destination), fields.get(HeaderFields.sender),
                         _owner_of_logind(conn))
        if reason:
            log.warning("ignored a PrepareForShutdown signal from %s: %s", fields.get(HeaderFields.sender), reason)
        elif message.body and message.body[0] is starting:
            return


def run_pass_now(conn) -> tuple[bool, str]:
    """Stop the arming unit (its ExecStop= is the shutdown pass) and wait until it has stopped:
    whether it was active (so the pass ran), and its state now."""
    spec = unit_spec(conn, ARMING_UNIT)
    state = unit_state(conn, spec)
    if state != "active":
        log.info("%s is %s: no shutdown pass to start early", ARMING_UNIT, state)
        return False, state
    _call(conn, _address(SYSTEMD1), "StopUnit", "ss", (ARMING_UNIT, "replace"))
    log.info("the host is shutting down: shutdown pass started (stopping %s)", ARMING_UNIT)
    started = time.monotonic()
    while time.monotonic() - started < MAX_WAIT:
        state = unit_state(conn, spec)
        if state not in ("active", "deactivating"):
            break
        time.sleep(0.1)
    return True, state


def _cancelled(conn, ran: bool) -> None:
    """The shutdown was cancelled: say so, loudly if the pass had run, and arm it again."""
    if not ran:
        log.info("the shutdown was cancelled")
        return
    log.error("the shutdown was cancelled after the shutdown pass had run: the guests it saved stay saved "
              "(shut off) while the host keeps running; %s. The shutdown pass is armed again.", BRING_BACK)
    _call(conn, _address(SYSTEMD1), "StartUnit", "ss", (ARMING_UNIT, "replace"))


def _early_start(conn, kind_matters: Callable[[], bool]) -> bool:
    """Stop the arming unit now, or leave the pass to its stop by systemd: when logind does not
    say which kind of shutdown it announces (systemd before 255) and the policy has on_reboot
    chains, no job says it yet either; once the lock is let go systemd queues the job that does."""
    if _shutdown_type(conn) is not None or not kind_matters():
        ran, state = run_pass_now(conn)
        log.info("shutdown pass over (%s %s): releasing the delay lock", ARMING_UNIT, state)
        return ran
    log.info("logind does not say which kind of shutdown this is (systemd before 255), and the policy has "
             "on_reboot chains: releasing the delay lock; the pass runs when systemd stops %s, whose job says "
             "which", ARMING_UNIT)
    return False


def _watch(conn, kind_matters: Callable[[], bool]) -> None:
    from jeepney import MatchRule, message_bus
    from jeepney.io.blocking import Proxy
    fields = dict(type="signal", path=LOGIN1[0], interface=LOGIN1[2], member="PrepareForShutdown")
    # The bus delivers a broadcast only from the owner of logind's name (this match rule); a
    # signal addressed to this connection comes whatever the rule says (see _Broadcasts).
    Proxy(message_bus, conn).AddMatch(MatchRule(sender=LOGIN1[1], **fields))
    with conn.filter(MatchRule(**fields), queue=_Broadcasts()) as queue:
        while True:
            lock = take_delay_lock(conn)
            try:
                wait_for_announcement(conn, queue, True)
                ran = _early_start(conn, kind_matters)
            finally:
                lock.close()
            # At a real shutdown systemd stops this process while it waits here.
            wait_for_announcement(conn, queue, False)
            _cancelled(conn, ran)


def watch(kind_matters: Callable[[], bool] = lambda: False) -> None:
    """The whole of ``mgsave watch``; every failure is logged and ends it quietly (exit 0).
    ``kind_matters``: whether the policy has on_reboot chains (asked at each announcement)."""
    try:
        conn = open_system_bus(enable_fds=True)
    except ImportError:
        log.warning("jeepney (python3-jeepney) is not installed: the shutdown pass starts when "
                    "systemd stops %s, after logind's inhibitor delay", ARMING_UNIT)
        return
    except Exception as error:  # noqa: BLE001 - any failure here only costs the early start
        log.warning("cannot reach the system bus (%s): the shutdown pass starts when systemd stops %s",
                    error, ARMING_UNIT)
        return
    with conn:
        try:
            _watch(conn, kind_matters)
        except Exception as error:  # noqa: BLE001
            log.warning("the early start of the shutdown pass stopped (%s): the pass runs when systemd "
                        "stops %s", error, ARMING_UNIT)
