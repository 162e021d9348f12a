"""A real systemd: mgsave-power.service starts the host's shutdown when the battery runs short.

One boot of the container host (tests.rig.container, as tests/test_systemd_unit_stop.py), mgsave
installed with ``make install`` and mgsave-power.service enabled, with the hardening of the
unit as shipped. NUT's upsd and dummy-ups (tests/nutrig.py) run as this test's children in the
container's network namespace, so the watch inside reads them on the container's loopback. No
guest: the plan needs nothing, so the margin alone decides.

1. On battery with a long runtime: the watch logs that it waits; the host stays up.
2. The runtime falls below the margin: the watch runs ``systemctl poweroff`` (its default
   command) once; the host goes down, mgsave.service's stop runs the shutdown pass, and the
   journal holds the watch's decision with its fields.
"""

from __future__ import annotations

import os
import subprocess
import time

import pytest

from tests import nutrig
from tests.rig.container import prepared_host, unavailable
from tests.test_systemd_boot import SRC, _copy_tree, _unavailable_reason, unit_state

pytestmark = [pytest.mark.systemd, pytest.mark.rig]

WAIT = 120.0  # seconds: generous, on a loaded machine


class NutInContainer(nutrig.NutRig):
    """The NUT rig with its daemons and ``upsc`` in the container's network namespace, held
    open by this process: NUT still answers once the container is gone (powered off or cut)."""

    def __init__(self, workdir, upses, pid1: int):
        super().__init__(workdir, upses)
        self.netns_fd = os.open(f"/proc/{pid1}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        self.netns = ["nsenter", f"--net=/proc/{os.getpid()}/fd/{self.netns_fd}"]

    def stop(self):
        super().stop()
        if self.netns_fd is not None:
            os.close(self.netns_fd)
            self.netns_fd = None

    def _spawn(self, argv):
        return super()._spawn([*self.netns, *argv])

    def served(self, name):
        result = subprocess.run([*self.netns, "upsc", self.address(name)], capture_output=True, text=True,
                                env=self.env, timeout=nutrig.WAIT)
        return dict(line.split(": ", 1) for line in result.stdout.splitlines() if ": " in line)


@pytest.fixture
def container():
    reason = _unavailable_reason() or nutrig.missing()
    if reason:
        unavailable(reason)
    with prepared_host("mgsave-power-") as c:
        yield c


def wait_journal(c, since: float, wanted, timeout: float = WAIT, unit: str = "mgsave-power.service") -> dict:
    deadline = time.monotonic() + timeout
    while True:
        for entry in c.journal(f"_SYSTEMD_UNIT={unit}", since=since):
            if wanted(" ".join(str(entry.get("MESSAGE", "")).split())):
                return entry
        if time.monotonic() > deadline:
            raise AssertionError(f"not in {unit}'s journal within {timeout:g} s")
        time.sleep(0.5)


def test_the_watch_powers_the_host_off_when_the_runtime_runs_short(container, tmp_path):
    c = container
    _copy_tree(c.root / SRC.lstrip("/"))
    c.boot()
    workdir = tmp_path / "nut"
    workdir.mkdir(mode=0o700)
    upses = {"ups1": {"ups.status": "OL", "battery.runtime": "1200", "battery.charge": "100", "ups.load": "20"}}
    with NutInContainer(workdir, upses, c.pid1) as nut:
        c.write("/etc/mgsave/nut.credentials", f"username = {nutrig.USER}\npassword = {nutrig.PASSWORD}\n",
                mode=0o600)
        c.write("/etc/mgsave/policy.yaml", f"version: 1\nconnections: ['qemu:///system']\npower:\n"
                                           f"  ups: ups1@127.0.0.1:{nut.port}\n"
                                           f"  credentials: /etc/mgsave/nut.credentials\n  margin: 60\n  poll: 1\n")
        c.run("make", "-C", SRC, "install", "START=yes")
        assert unit_state(c, "mgsave-power.service")["ActiveState"] == "inactive"  # off by default
        since = time.time()
        c.run("systemctl", "enable", "--now", "mgsave-power.service")
        nut.set("ups1", {"ups.status": "OB DISCHRG", "battery.runtime": "1200"})
        wait_journal(c, since, lambda m: "on battery, runtime 20 min 00 s left: more than" in m
                     and m.endswith(": waiting"))
        assert c.nspawn.poll() is None  # still up
        nut.set("ups1", {"ups.status": "OB DISCHRG", "battery.runtime": "30"})
        try:
            c.nspawn.wait(timeout=WAIT)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"the host did not go down in {WAIT:g} s:\n{c.console_tail()}") from None
        c.nspawn = c.pid1 = None
    started = c.journal("_SYSTEMD_UNIT=mgsave-power.service", "MGSAVE_DECISION=shut-down-now", since=since)
    assert len(started) == 1, started
    assert started[0]["MGSAVE_RUNTIME_SECONDS"] == "30" and started[0]["MGSAVE_NEEDED_SECONDS"] == "0"
    assert "starting the host's shutdown" in started[0]["MESSAGE"]
    passes = c.journal("_SYSTEMD_UNIT=mgsave.service", since=since)
    assert any(str(e.get("MESSAGE", "")).startswith("running the shutdown pass:") for e in passes), passes
