"""``mgsave power watch`` against a real NUT (tests/nutrig.py: upsd and dummy-ups on loopback),
its values driven by rewriting the .dev file. The guests whose shutdown plan gives the need are
libvirt's test driver's, from a file (``test:///<file>``): one running guest of 2 GiB, so the
plan needs about 31 s (its save, 11 s at the built-in rate of 200 MB/s, and the 20 s the pass
keeps back: the deadline's reserve, the final flush, its start), and with the 60 s margin the
watch starts the shutdown at a runtime of about 91 s or less. The shutdown command appends a line to a
marker file: the tests wait on that file (or on the watch's log saying what it saw) with a
bound, never a fixed sleep. Each watch is a process of its own, ended by SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests import nutrig

WAIT = 60.0  # seconds: generous, on a loaded machine
ROOT = Path(__file__).resolve().parent.parent
NODE = """<node>
  <domain type='test'><name>big</name><memory unit='GiB'>2</memory><os><type>hvm</type></os></domain>
</node>
"""


@pytest.fixture(scope="module")
def nut(tmp_path_factory):
    nutrig.require()
    workdir = tmp_path_factory.mktemp("nut")
    workdir.chmod(0o700)
    upses = {"ups1": {"ups.status": "OL", "battery.runtime": "1200", "battery.charge": "100", "ups.load": "20"}}
    with nutrig.NutRig(workdir, upses) as rig:
        yield rig


class Watch:
    """One ``mgsave power watch`` process, its log in a file."""

    def __init__(self, tmp_path: Path, port: int, command: str | None = None):
        self.marker = tmp_path / "shutdown-started"
        self.log = tmp_path / "watch.log"
        credentials = tmp_path / "nut.credentials"
        credentials.write_text(f"username = {nutrig.USER}\npassword = {nutrig.PASSWORD}\n")
        credentials.chmod(0o600)
        node = tmp_path / "node.xml"
        node.write_text(NODE)
        policy = tmp_path / "policy.yaml"
        policy.write_text(f"version: 1\npower:\n  ups: ups1@127.0.0.1:{port}\n  credentials: {credentials}\n"
                          f"  margin: 60\n  poll: 1\n"
                          f"  shutdown_command: [/bin/sh, -c, '{command or f'echo started >> {self.marker}'}']\n")
        policy.chmod(0o600)
        with open(self.log, "w") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "libmgsave", "--debug", "--policy", str(policy), "--state-dir",
                 str(tmp_path / "state"), "--connect", f"test://{node}", "power", "watch"],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT,
                env={**os.environ, "PYTHONPATH": str(ROOT)})

    def text(self) -> str:
        return self.log.read_text()

    def wait_for_log(self, words: str, count: int = 1) -> None:
        deadline = time.monotonic() + WAIT
        while self.text().count(words) < count:
            assert self.process.poll() is None, f"the watch ended ({self.process.returncode}):\n{self.text()}"
            assert time.monotonic() < deadline, f"no {words!r} (x{count}) in {WAIT:g} s:\n{self.text()}"
            time.sleep(0.1)

    def readings(self) -> int:
        return self.text().count(" polled: ")

    def wait_for_readings(self, more: int) -> None:
        """Until the watch has read the UPS ``more`` times again."""
        self.wait_for_log(" polled: ", self.readings() + more)

    def wait_for_exit(self) -> int:
        try:
            return self.process.wait(timeout=WAIT)
        except subprocess.TimeoutExpired:
            self.process.kill()
            raise AssertionError(f"the watch did not end in {WAIT:g} s:\n{self.text()}") from None

    def stop(self) -> int:
        """SIGTERM: the watch ends at once."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.wait_for_exit()

    def started(self) -> list[str]:
        return self.marker.read_text().splitlines() if self.marker.exists() else []


@pytest.fixture
def watch(nut, tmp_path):
    watches = []

    def start(port=None, command=None):
        watches.append(Watch(tmp_path, port or nut.port, command))
        return watches[-1]

    yield start
    for each in watches:
        if each.process.poll() is None:
            each.process.kill()
            each.process.wait()


def on_battery(nut, runtime, status="OB DISCHRG"):
    nut.set("ups1", {"ups.status": status, "battery.runtime": str(runtime)})


def test_a_long_runtime_starts_nothing_and_back_on_line_it_stands_down(nut, watch):
    on_battery(nut, 1200)
    w = watch()
    w.wait_for_log("on battery, runtime 20 min 00 s left: more than the 31 s the shutdown plan needs")
    w.wait_for_readings(3)
    nut.set("ups1", {"ups.status": "OL CHRG"})
    w.wait_for_log("on line: standing down")
    assert w.started() == []
    started = time.monotonic()
    assert w.stop() == 0
    assert time.monotonic() - started < 10, "SIGTERM must end the watch at once"
    assert w.started() == []
    assert "the UPS watch stops (SIGTERM)" in w.text()


def test_a_runtime_below_the_need_and_the_margin_starts_the_shutdown_once(nut, watch):
    on_battery(nut, 1200)
    w = watch()
    w.wait_for_log("more than the 31 s the shutdown plan needs")
    on_battery(nut, 70)
    # the command succeeded: the watch goes on, and does not start it again while it is under way
    w.wait_for_log("is under way: not starting it again")
    w.wait_for_readings(3)
    assert w.started() == ["started"]
    assert ("on battery, runtime 1 min 10 s left: no more than the 31 s the shutdown plan needs plus the "
            "1 min 00 s margin: starting the host's shutdown") in w.text()
    assert w.stop() == 0


def test_the_low_battery_flag_starts_the_shutdown_at_once_whatever_the_runtime(nut, watch):
    on_battery(nut, 1200)
    w = watch()
    w.wait_for_log("more than the 31 s the shutdown plan needs")
    on_battery(nut, 1200, "OB LB")
    w.wait_for_log("is under way: not starting it again")
    assert w.started() == ["started"]
    assert "says its battery is low (LB): starting the host's shutdown" in w.text()
    assert w.stop() == 0


def test_a_shutdown_cancelled_is_watched_again_and_started_again_when_still_needed(nut, watch):
    """The command 'succeeds' but the host stays up (as after 'shutdown -c'): the watch, not
    stopped with the host, takes the shutdown as cancelled once it outlived its readings under
    way (12 at its 1 s poll), says so, and starts it again while the runtime is still short."""
    on_battery(nut, 1200)
    w = watch()
    w.wait_for_log("more than the 31 s the shutdown plan needs")
    on_battery(nut, 70)
    w.wait_for_log("is under way: not starting it again")
    assert w.started() == ["started"]
    w.wait_for_log("has not happened (cancelled, or it failed) and the watch still runs: watching again")
    w.wait_for_log("starting the host's shutdown", count=2)
    deadline = time.monotonic() + WAIT
    while len(w.started()) < 2:
        assert time.monotonic() < deadline, w.text()
        time.sleep(0.1)
    assert w.started() == ["started", "started"]
    nut.set("ups1", {"ups.status": "OL CHRG"})  # back on line: it stands down, nothing more is started
    w.wait_for_log("on line: standing down")
    w.wait_for_readings(3)
    assert w.started() == ["started", "started"]
    assert w.stop() == 0


def test_a_failed_shutdown_command_is_tried_again_at_the_next_reading(nut, watch, tmp_path):
    on_battery(nut, 1200)
    w = watch(command="exit 1")
    w.wait_for_log("more than the 31 s the shutdown plan needs")
    on_battery(nut, 70)
    w.wait_for_log("exited 1; trying again at the next reading", count=2)
    assert "is under way" not in w.text()
    assert w.stop() == 0


def test_on_line_before_the_runtime_runs_short_nothing_happens(nut, watch):
    nut.set("ups1", {"ups.status": "OL", "battery.runtime": "40"})  # a short runtime, but on line
    w = watch()
    w.wait_for_log("the UPS is on line")
    w.wait_for_readings(3)
    assert w.started() == []
    assert w.stop() == 0


def test_an_unreachable_ups_starts_nothing_and_is_logged_once(nut, watch):
    w = watch(port=nutrig.free_port())  # nothing listens there
    w.wait_for_log("cannot be read")
    w.wait_for_readings(4)
    assert w.started() == []
    assert w.text().count("warning:") == 1, w.text()  # one warning, not one a reading
    assert "no shutdown is started on that alone" in w.text()
    assert w.stop() == 0


# -- mgsave plan shutdown: whether the plan fits the runtime now ------------------------------------

def plan_shutdown(nut, tmp_path, capsys, *args):
    from libmgsave import cli

    policy = tmp_path / "policy.yaml"
    node = tmp_path / "node.xml"
    node.write_text(NODE)
    credentials = tmp_path / "nut.credentials"
    credentials.write_text(f"username = {nutrig.USER}\npassword = {nutrig.PASSWORD}\n")
    credentials.chmod(0o600)
    policy.write_text(f"version: 1\npower:\n  ups: ups1@127.0.0.1:{nut.port}\n  credentials: {credentials}\n"
                      f"  margin: 60\n")
    policy.chmod(0o600)
    capsys.readouterr()
    code = cli.main(["--policy", str(policy), "--state-dir", str(tmp_path / "state"), "--connect", f"test://{node}",
                     "plan", "shutdown", *args])
    return code, capsys.readouterr().out


def test_plan_shutdown_says_whether_the_plan_fits_the_runtime_now(nut, tmp_path, capsys):
    import json

    on_battery(nut, 1200)
    code, out = plan_shutdown(nut, tmp_path, capsys)
    assert code == 0
    assert (f"UPS ups1@127.0.0.1:{nut.port} (on battery): runtime 20 min 00 s, the plan needs 31 s plus the "
            f"1 min 00 s margin: it fits") in " ".join(out.split())  # wrapped at 80 columns
    on_battery(nut, 65)
    code, out = plan_shutdown(nut, tmp_path, capsys, "--json")
    fit = json.loads(out)["ups_fit"]
    assert (fit["state"], fit["runtime_seconds"], fit["fits"], fit["margin_seconds"]) == ("on-battery", 65, False, 60)
    assert 30 < fit["needed_seconds"] < 31  # 2 GiB at the built-in 200 MB/s, and the 20 s kept back
