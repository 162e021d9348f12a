"""Start the shutdown pass the moment logind announces a shutdown, not seconds later.

A shutdown requested through logind (``systemctl poweroff``/``reboot``, ``shutdown``, the power
button) first waits for every "delay" inhibitor: logind sends PrepareForShutdown(true) and
holds the poweroff until each holder closes its lock, or ``InhibitDelayMaxSec`` (5 s by default)
has passed. libvirt's QEMU driver (libvirt >= 11) holds such a lock while any guest runs and
lets go only when none does, so on those hosts every shutdown with guests running waited the
full 5 s before systemd even began stopping units, mgsave's shutdown pass among them.

``mgsave-early.service`` runs this: it takes a delay lock of its own, and when
PrepareForShutdown(true) arrives it asks systemd to stop ``mgsave.service`` (whose ExecStop= is
the shutdown pass, exactly as at any other stop), waits for that stop to end, and lets its lock
go. Once the guests are saved libvirt drops its lock too, and the shutdown goes on at once.

Nothing depends on this: without a system bus, logind or jeepney, or when it fails in any way,
it logs why and exits, and the pass runs when systemd stops ``mgsave.service`` during the
shutdown, as it always did. jeepney (pure Python, no C, no event loop to set up) is the D-Bus
client; it is imported only here, never by the passes.
"""

from __future__ import annotations

import logging
import time

log = logging.getLogger("mgsave")

ARMING_UNIT = "mgsave.service"
LOGIN1 = ("/org/freedesktop/login1", "org.freedesktop.login1", "org.freedesktop.login1.Manager")
SYSTEMD1 = ("/org/freedesktop/systemd1", "org.freedesktop.systemd1", "org.freedesktop.systemd1.Manager")
WHY = "saving the libvirt guests before the host goes down"
# Stop polling for the pass after this long; by then logind has long gone on without us.
MAX_WAIT = 3600.0


def _address(spec, interface: str | None = None):
    from jeepney import DBusAddress
    path, name, default_interface = spec
    return DBusAddress(path, bus_name=name, interface=interface or default_interface)


def _call(conn, address, method: str, signature: str = "", body: tuple = ()):
    from jeepney import new_method_call
    from jeepney.wrappers import unwrap_msg
    return unwrap_msg(conn.send_and_get_reply(new_method_call(address, method, signature, body), timeout=30))


def take_delay_lock(conn):
    """logind's Inhibit(shutdown, delay): a file descriptor; the lock lasts until it is closed."""
    (fd,) = _call(conn, _address(LOGIN1), "Inhibit", "ssss", ("shutdown", "mgsave", WHY, "delay"))
    return fd


def unit_properties(conn, unit: str):
    """The D-Bus address of ``unit``'s properties (its object path stays the same while loaded)."""
    (path,) = _call(conn, _address(SYSTEMD1), "LoadUnit", "s", (unit,))
    return _address((path, SYSTEMD1[1], None), "org.freedesktop.DBus.Properties")


def unit_state(conn, props) -> str:
    ((_signature, value),) = _call(conn, props, "Get", "ss", ("org.freedesktop.systemd1.Unit", "ActiveState"))
    return value


def wait_for_prepare(conn) -> None:
    """Block until logind sends PrepareForShutdown(true)."""
    from jeepney import MatchRule, message_bus
    from jeepney.io.blocking import Proxy
    fields = dict(type="signal", path=LOGIN1[0], interface=LOGIN1[2], member="PrepareForShutdown")
    # The bus matches the sender against the owner of logind's name; a received message names
    # its sender by the owner's unique name, so the local filter leaves the sender out.
    Proxy(message_bus, conn).AddMatch(MatchRule(sender=LOGIN1[1], **fields))
    with conn.filter(MatchRule(**fields)) as queue:
        while True:
            message = conn.recv_until_filtered(queue)
            if message.body and message.body[0] is True:
                return


def run_pass_now(conn) -> str:
    """Stop the arming unit (its ExecStop= is the shutdown pass) and wait until it has stopped;
    returns its state then."""
    props = unit_properties(conn, ARMING_UNIT)
    state = unit_state(conn, props)
    if state != "active":
        log.info("%s is %s: no shutdown pass to start early", ARMING_UNIT, state)
        return state
    _call(conn, _address(SYSTEMD1), "StopUnit", "ss", (ARMING_UNIT, "replace"))
    log.info("the host is shutting down: shutdown pass started (stopping %s)", ARMING_UNIT)
    started = time.monotonic()
    while time.monotonic() - started < MAX_WAIT:
        state = unit_state(conn, props)
        if state not in ("active", "deactivating"):
            return state
        time.sleep(0.1)
    return state


def watch() -> None:
    """The whole of ``mgsave watch``; every failure is logged and ends it quietly (exit 0)."""
    try:
        from jeepney.io.blocking import open_dbus_connection
    except ImportError:
        log.warning("jeepney (python3-jeepney) is not installed: the shutdown pass starts when "
                    "systemd stops %s, after logind's inhibitor delay", ARMING_UNIT)
        return
    try:
        conn = open_dbus_connection(bus="SYSTEM", enable_fds=True)
        lock = take_delay_lock(conn)
    except Exception as error:  # noqa: BLE001 - any failure here only costs the early start
        log.warning("cannot take a shutdown delay lock from logind (%s): the shutdown pass "
                    "starts when systemd stops %s", error, ARMING_UNIT)
        return
    try:
        wait_for_prepare(conn)
        state = run_pass_now(conn)
        log.info("shutdown pass over (%s %s): releasing the delay lock", ARMING_UNIT, state)
    except Exception as error:  # noqa: BLE001
        log.warning("early shutdown pass not started (%s): it runs when systemd stops %s",
                    error, ARMING_UNIT)
    finally:
        lock.close()
