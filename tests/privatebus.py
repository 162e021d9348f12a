"""A real, private D-Bus system bus for tests, with stand-ins for logind and systemd on it.

``PrivateSystemBus`` runs ``dbus-daemon`` with Debian's own system-bus configuration
(/usr/share/dbus-1/system.conf and the policies of system.d/, so root alone may own
``org.freedesktop.login1`` and anyone may send a signal), changed only where it listens (a
socket in a temporary directory), and without forking, a pid file or service activation.
mgsave finds it through ``DBUS_SYSTEM_BUS_ADDRESS``, the standard variable.

The stand-ins are the one part that is not real: this machine has no systemd or logind to
talk to (and a test must not stop units of the machine it runs on). ``Logind`` owns
``org.freedesktop.login1`` and answers ``Inhibit`` (a pipe: the lock lasts until the caller
closes its end) and ``PreparingForShutdown``, and broadcasts ``PrepareForShutdown`` when told;
``Systemd`` owns ``org.freedesktop.systemd1`` and answers what mgsave asks (units' states, jobs,
``StopUnit``, ``StartUnit``, ``StartTransientUnit``), recording every call. Each answers in a
thread of its own, on its own connection.
"""

from __future__ import annotations

import os
import re
import select
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import pytest

SYSTEM_CONF = Path("/usr/share/dbus-1/system.conf")
LOGIN1_PATH, LOGIN1 = "/org/freedesktop/login1", "org.freedesktop.login1"
SYSTEMD1_PATH, SYSTEMD1 = "/org/freedesktop/systemd1", "org.freedesktop.systemd1"
PROPERTIES = "org.freedesktop.DBus.Properties"


def _config(socket_path: Path) -> str:
    text = SYSTEM_CONF.read_text()
    for element in ("fork", "standard_system_servicedirs", "syslog"):
        text = text.replace(f"<{element}/>", "")
    text = re.sub(r"<(pidfile|servicehelper)>[^<]*</\1>", "", text)
    text = re.sub(r"<listen>[^<]*</listen>", f"<listen>unix:path={socket_path}</listen>", text)
    text = text.replace("<includedir>system.d</includedir>", f"<includedir>{SYSTEM_CONF.parent}/system.d</includedir>")
    if os.geteuid() != 0:  # only root can become messagebus
        text = re.sub(r"<user>[^<]*</user>", "", text)
    return text


class PrivateSystemBus:
    def __init__(self):
        if not shutil.which("dbus-daemon") or not SYSTEM_CONF.exists():
            pytest.skip("dbus-daemon and Debian's system bus configuration are needed (scripts/setup installs them)")
        self.dir = Path(tempfile.mkdtemp(prefix="mgsave-bus-"))
        self.dir.chmod(0o755)  # an unprivileged sender must reach the socket
        self.socket = self.dir / "system_bus_socket"
        self.address = f"unix:path={self.socket}"
        config = self.dir / "system.conf"
        config.write_text(_config(self.socket))
        self.process = subprocess.Popen(["dbus-daemon", f"--config-file={config}", "--nofork", "--print-address"],
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        printed = self.process.stdout.readline()  # once it listens
        if not printed.startswith("unix:"):
            raise AssertionError(f"dbus-daemon did not start: {printed!r} {self.process.stderr.read()}")

    def close(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=30)
        shutil.rmtree(self.dir, ignore_errors=True)


def wait_for(predicate, what: str, timeout: float = 60.0):
    """Until ``predicate()`` gives something true (returned); fails after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout} s")
        time.sleep(0.05)


class StandIn:
    """A service on the bus: owns ``name``, answers method calls in a thread of its own."""

    def __init__(self, address: str, name: str):
        from jeepney import DBusAddress
        from jeepney.io.blocking import open_dbus_connection

        self.conn = open_dbus_connection(bus=address, enable_fds=True)
        bus = DBusAddress("/org/freedesktop/DBus", bus_name="org.freedesktop.DBus", interface="org.freedesktop.DBus")
        assert self._call(bus, "RequestName", "su", (name, 4)) == (1,), f"could not own {name}"
        self.unique_name = self.conn.unique_name
        self.calls: list[tuple[str, tuple, str]] = []  # (member, body, caller's unique name)
        self.silent = False  # True: answer nothing (a hung service)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _call(self, address, method, signature, body):
        from jeepney import new_method_call
        from jeepney.wrappers import unwrap_msg
        return unwrap_msg(self.conn.send_and_get_reply(new_method_call(address, method, signature, body), timeout=10))

    def _serve(self) -> None:
        from jeepney import HeaderFields, MessageType, new_error, new_method_return
        while not self._stop.is_set():
            try:
                message = self.conn.receive(timeout=0.1)
            except TimeoutError:
                continue
            except OSError:
                return
            if message.header.message_type is not MessageType.method_call:
                continue
            member = message.header.fields[HeaderFields.member]
            self.calls.append((member, message.body, message.header.fields[HeaderFields.sender]))
            if self.silent:
                continue
            try:
                signature, body = self.answer(member, message.body)
                reply = new_method_return(message, signature, body)
            except KeyError as error:
                reply = new_error(message, "org.freedesktop.DBus.Error.UnknownMethod", "s", (f"{member}: {error}",))
            self.conn.send(reply)
            self.replied()

    def replied(self) -> None:
        """Called once a reply is sent."""

    def answer(self, member: str, body: tuple) -> tuple[str, tuple]:
        if member == "Get":
            interface, name = body
            value = self.properties()[(interface, name)]
            return "v", (value,)
        raise KeyError(member)

    def properties(self) -> dict:
        return {}

    def called(self, member: str) -> list[tuple]:
        """The bodies of the calls of ``member`` so far."""
        return [body for name, body, _caller in list(self.calls) if name == member]

    def callers(self, member: str) -> list[str]:
        return [caller for name, _body, caller in list(self.calls) if name == member]

    def close(self) -> None:
        if self._stop.is_set():
            return
        self._stop.set()
        self._thread.join(timeout=10)
        self.conn.close()


class Logind(StandIn):
    def __init__(self, address: str):
        self.preparing = False
        # PreparingForShutdownWithMetadata's type (systemd >= 255); None: a logind without it (252)
        self.shutdown_type: str | None = None
        self.locks: list[int] = []  # our ends of the inhibitor pipes
        self._to_close: list[int] = []
        super().__init__(address, LOGIN1)
        self.inhibitors: list[str] = []  # who asked (unique names)

    def answer(self, member, body):
        if member == "Inhibit":
            ours, theirs = os.pipe()
            self.locks.append(ours)
            self._to_close.append(theirs)  # the caller gets a copy; ours goes once it is sent
            return "h", (theirs,)
        return super().answer(member, body)

    def replied(self) -> None:
        while self._to_close:
            os.close(self._to_close.pop())

    def properties(self):
        manager = "org.freedesktop.login1.Manager"
        known = {(manager, "PreparingForShutdown"): ("b", self.preparing)}
        if self.shutdown_type is not None:  # what logind 257 answers while it prepares a shutdown
            known[(manager, "PreparingForShutdownWithMetadata")] = ("a{sv}", {"type": ("s", self.shutdown_type)})
        return known

    def announce(self, starting: bool) -> None:
        """PrepareForShutdown(starting), broadcast, as logind sends it."""
        from jeepney import DBusAddress, new_signal
        self.preparing = starting
        emitter = DBusAddress(LOGIN1_PATH, interface="org.freedesktop.login1.Manager")
        self.conn.send(new_signal(emitter, "PrepareForShutdown", "b", (starting,)))

    def lock_released(self, index: int = -1) -> bool:
        """Whether the holder of an inhibitor lock has closed it (its end of the pipe)."""
        readable, _, _ = select.select([self.locks[index]], [], [], 0)
        return bool(readable) and os.read(self.locks[index], 1) == b""

    def close(self) -> None:
        super().close()
        while self.locks:
            os.close(self.locks.pop())


def unit_path(unit: str) -> str:
    return SYSTEMD1_PATH + "/unit/" + "".join(c if c.isalnum() else f"_{ord(c):02x}" for c in unit)


class Systemd(StandIn):
    """systemd as mgsave.service's stop and the watcher see it; its answers are set by the test."""

    def __init__(self, address: str):
        self.system_state = "running"
        self.jobs: list[tuple[str, str]] = [("mgsave.service", "stop")]  # (unit, job type)
        self.units = {"mgsave.service": {"ActiveState": "active", "UnitFileState": "enabled"}}
        super().__init__(address, SYSTEMD1)

    def answer(self, member, body):
        if member == "LoadUnit":
            return "o", (unit_path(body[0]),)
        if member in ("StopUnit", "StartUnit"):
            self.units[body[0]]["ActiveState"] = "inactive" if member == "StopUnit" else "active"
            return "o", (SYSTEMD1_PATH + "/job/1",)
        if member == "StartTransientUnit":
            return "o", (SYSTEMD1_PATH + "/job/2",)
        if member == "ListJobs":
            jobs = [(n, unit, kind, "running", f"{SYSTEMD1_PATH}/job/{n}", unit_path(unit))
                    for n, (unit, kind) in enumerate(self.jobs, start=10)]
            return "a(usssoo)", (jobs,)
        return super().answer(member, body)

    def properties(self):
        values = {("org.freedesktop.systemd1.Manager", "SystemState"): ("s", self.system_state)}
        for unit, props in self.units.items():
            for name, value in props.items():
                values[("org.freedesktop.systemd1.Unit", name)] = ("s", value)  # one unit: no path needed
        return values
