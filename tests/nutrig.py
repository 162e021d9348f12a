"""A real NUT for the tests: Debian's upsd with its dummy-ups driver, on loopback, in a private
temporary directory (its own ups.conf, upsd.conf, upsd.users; ``NUT_CONFPATH`` and
``NUT_STATEPATH`` point there, so nothing of the machine's /etc/nut is read or touched).

Each UPS is a dummy-ups driver reading ``<name>.dev``. The driver (mode ``dummy-once``, from
the ``.dev`` suffix) reads the file again when the modification time of the file it opened
changes, to the second: ``NutRig.set`` rewrites the file in place (never a new file by rename:
the driver looks at the descriptor it holds), gives it a modification time no earlier write had,
and waits until upsd serves the new values, asked through NUT's own client, ``upsc``.

Root and the packages (nut-server, nut-client) are needed: without them the tests are skipped,
and with ``CI=true`` they fail instead, as the rig's do.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

UPSD = "/lib/nut/upsd"  # the daemon itself: Debian's /sbin/upsd is a wrapper that reads /etc/nut/nut.conf
DRIVER = "/lib/nut/dummy-ups"
USER, PASSWORD = "mgsave", "s3cret words"
WAIT = 30.0  # seconds: generous, on a loaded machine; a value takes about one poll (1 s) to be served


def missing() -> str | None:
    """Why NUT cannot run here, or None."""
    if os.geteuid() != 0:
        return "needs root (upsd and its driver run as root in a private directory)"
    for path in (UPSD, DRIVER, shutil.which("upsc")):
        if not path or not os.access(path, os.X_OK):
            return f"needs Debian's nut-server and nut-client ({path or 'upsc'} missing): scripts/setup installs them"
    return None


def require() -> None:
    why = missing()
    if why:
        if os.environ.get("CI") == "true":
            pytest.fail(why)
        pytest.skip(why)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class NutRig:
    """upsd and one dummy-ups driver per UPS. ``upses``: each UPS's first values (NUT's names)."""

    def __init__(self, workdir: Path, upses: dict[str, dict[str, str]]):
        self.dir = workdir
        self.upses = upses
        self.port = free_port()
        self.processes: list[subprocess.Popen] = []
        self.drivers: dict[str, subprocess.Popen] = {}
        self._mtime = int(time.time()) - 100_000  # each write's own second, never one seen before

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "NUT_CONFPATH": str(self.dir), "NUT_STATEPATH": str(self.dir / "state")}

    def address(self, name: str) -> str:
        return f"{name}@127.0.0.1:{self.port}"

    def start(self) -> NutRig:
        (self.dir / "state").mkdir(mode=0o700, exist_ok=True)
        sections = [f"[{name}]\n  driver = dummy-ups\n  port = {self.dir / name}.dev\n  pollinterval = 1\n"
                    for name in self.upses]
        self._write("ups.conf", "".join(sections))
        self._write("upsd.conf", f"LISTEN 127.0.0.1 {self.port}\n")
        self._write("upsd.users", f'[{USER}]\n  password = "{PASSWORD}"\n  upsmon secondary\n')
        for name, values in self.upses.items():
            self._write_dev(name, values)
            self.drivers[name] = self._spawn([DRIVER, "-F", "-a", name, "-u", "root"])
        self._spawn([UPSD, "-F", "-u", "root"])
        for name, values in self.upses.items():
            self.wait_served(name, values)
        return self

    def stop(self) -> None:
        for process in reversed(self.processes):
            process.terminate()
        for process in self.processes:  # a driver a test ended is waited for again: at once
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self.processes.clear()

    def __enter__(self) -> NutRig:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def set(self, name: str, values: dict[str, str]) -> None:
        """Gives the UPS these values (the others stay as they were) and waits until upsd serves them."""
        self.upses[name] = {**self.upses[name], **values}
        self._write_dev(name, self.upses[name])
        self.wait_served(name, values)

    def wait_served(self, name: str, values: dict[str, str]) -> None:
        deadline = time.monotonic() + WAIT
        while True:
            served = self.served(name)
            if all(served.get(key) == value for key, value in values.items()):
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"upsd did not serve {values} for {name} within {WAIT:g} s: {served}")
            time.sleep(0.1)

    def served(self, name: str) -> dict[str, str]:
        """What upsd serves of the UPS now, as NUT's own client reads it ({} before it serves any)."""
        result = subprocess.run(["upsc", self.address(name)], capture_output=True, text=True, env=self.env,
                                timeout=WAIT)
        return dict(line.split(": ", 1) for line in result.stdout.splitlines() if ": " in line)

    def _write_dev(self, name: str, values: dict[str, str]) -> None:
        path = self.dir / f"{name}.dev"
        with open(path, "w") as dev:  # in place: the driver holds the file open
            dev.write("".join(f"{key}: {value}\n" for key, value in values.items()))
        self._mtime += 1
        os.utime(path, (self._mtime, self._mtime))

    def _write(self, name: str, text: str) -> None:
        path = self.dir / name
        path.write_text(text)
        path.chmod(0o600)

    def stop_driver(self, name: str) -> None:
        """Ends the UPS's driver and waits until upsd says so (``upsc``: "Driver not connected")."""
        driver = self.drivers.pop(name)
        driver.terminate()
        driver.wait(timeout=WAIT)
        deadline = time.monotonic() + WAIT
        while True:
            result = subprocess.run(["upsc", self.address(name), "ups.status"], capture_output=True, text=True,
                                    env=self.env, timeout=WAIT)
            if "Driver not connected" in result.stderr:
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"upsd still serves {name} {WAIT:g} s after its driver ended: {result}")
            time.sleep(0.1)

    def _spawn(self, argv: list[str]) -> subprocess.Popen:
        log = open(self.dir / f"{Path(argv[0]).name}-{len(self.processes)}.log", "w")  # noqa: SIM115
        with log:
            process = subprocess.Popen(argv, env=self.env, stdout=log, stderr=subprocess.STDOUT, cwd=self.dir,
                                       start_new_session=True)
        self.processes.append(process)
        return process
