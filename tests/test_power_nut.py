"""The UPS through a real NUT: Debian's upsd and dummy-ups driver on loopback (tests/nutrig.py),
read by ``mgsave status`` and checked by ``mgsave check`` (on libvirt's test driver: no guest
matters here). One upsd for the module; each test sets the values it needs and waits until upsd
serves them (each takes about a second: the driver's poll)."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time

import pytest

from libmgsave import cli
from libmgsave.errors import ExitCode
from libmgsave.policy import Power, UpsAddress
from libmgsave.power.reading import PowerState
from libmgsave.power.ups import CREDENTIALS_KEY, UPS_KEY, read_ups
from tests import nutrig

FULL = {"ups.status": "OL", "battery.runtime": "1200", "battery.charge": "100", "ups.load": "20"}


@pytest.fixture(scope="module")
def nut(tmp_path_factory):
    nutrig.require()
    workdir = tmp_path_factory.mktemp("nut")
    workdir.chmod(0o700)
    # "bare" reports a status and nothing else: dummy-ups never forgets a value once given;
    # "gone" loses its driver in a test
    upses = {"ups1": dict(FULL), "bare": {"ups.status": "OB"}, "gone": {"ups.status": "OL"}}
    with nutrig.NutRig(workdir, upses) as rig:
        yield rig


def credentials(tmp_path, password=nutrig.PASSWORD, mode=0o600):
    path = tmp_path / "nut.credentials"
    path.write_text(f"# upsd's user\nusername = {nutrig.USER}\npassword = {password}\n")
    path.chmod(mode)
    return str(path)


def power(nut, tmp_path, name="ups1", **kwargs) -> Power:
    return Power(UpsAddress(name, "127.0.0.1", nut.port), credentials=credentials(tmp_path, **kwargs))


def test_the_values_are_read_as_upsd_serves_them(nut, tmp_path):
    nut.set("ups1", {"ups.status": "OL CHRG", "battery.runtime": "1234", "battery.charge": "87.5",
                      "ups.load": "31"})
    reading, failure = read_ups(power(nut, tmp_path))
    assert failure is None
    assert reading.state is PowerState.ONLINE
    assert (reading.runtime.value, reading.charge.value, reading.load.value) == (1234, 87.5, 31)
    assert reading.describe() == (f"UPS ups1@127.0.0.1:{nut.port}: on line, runtime 20 min 34 s, charge 87.5%, "
                                  f"load 31%")


@pytest.mark.parametrize(("status", "state"), [("OB", PowerState.ON_BATTERY), ("OB LB", PowerState.LOW_BATTERY),
                                               ("FSD OB", PowerState.FORCED_SHUTDOWN)])
def test_on_battery_low_battery_and_forced_shutdown(nut, tmp_path, status, state):
    nut.set("ups1", {"ups.status": status, "battery.runtime": "300"})
    reading, _ = read_ups(power(nut, tmp_path))
    assert reading.state is state
    assert reading.runtime.value == 300
    assert state.words in reading.describe()


@pytest.mark.parametrize(("runtime", "why"), [("-5", "its runtime is negative: -5"),
                                              ("99999999999", "its runtime is absurd: 99999999999"),
                                              ("65535.5e3", "its runtime is not a number: '65535.5e3'")])
def test_a_runtime_that_cannot_be_right_is_unknown_with_the_reason(nut, tmp_path, runtime, why):
    nut.set("ups1", {"ups.status": "OB", "battery.runtime": runtime})
    reading, failure = read_ups(power(nut, tmp_path))
    assert failure is None and reading.state is PowerState.ON_BATTERY
    assert reading.runtime.value is None
    assert reading.runtime.unknown.startswith(why)
    assert f"runtime unknown ({why}" in reading.describe()


def test_a_runtime_the_ups_does_not_report_is_unknown(nut, tmp_path):
    reading, failure = read_ups(power(nut, tmp_path, name="bare"))
    assert failure is None and reading.state is PowerState.ON_BATTERY
    assert reading.runtime.unknown == "the UPS does not report its runtime"
    assert reading.charge.value is None and reading.load.value is None


def test_a_wrong_password_is_a_clear_error(nut, tmp_path):
    reading, failure = read_ups(power(nut, tmp_path, password="wrong"))
    assert (failure.code, failure.key) == ("ACCESS-DENIED", CREDENTIALS_KEY)
    assert reading.state is PowerState.UNKNOWN
    assert "upsd refused the credentials (ACCESS-DENIED): a wrong user name or password" in reading.describe()


def test_an_unknown_ups_name_is_named(nut, tmp_path):
    reading, failure = read_ups(power(nut, tmp_path, name="nosuch"))
    assert (failure.code, failure.key) == ("UNKNOWN-UPS", UPS_KEY)
    assert f"upsd on 127.0.0.1:{nut.port} knows no UPS named nosuch" in reading.error


def test_a_ups_whose_driver_is_gone_is_said_so(nut, tmp_path):
    nut.stop_driver("gone")
    reading, failure = read_ups(power(nut, tmp_path, name="gone"))
    assert (failure.code, failure.key) == ("DRIVER-NOT-CONNECTED", UPS_KEY)
    assert reading.error == "upsd's driver for gone is not running (DRIVER-NOT-CONNECTED)"


def test_no_daemon_listening_fails_at_once(tmp_path):
    port = nutrig.free_port()
    started = time.monotonic()
    reading, failure = read_ups(Power(UpsAddress("ups1", "127.0.0.1", port)))
    assert time.monotonic() - started < 2
    assert failure.code is None and "Connection refused" in reading.error


@pytest.mark.parametrize("sends", [b"", b"A" * 100_000])
def test_a_daemon_that_never_answers_or_answers_without_end_fails_in_bounded_time(tmp_path, sends):
    """Not upsd: a real socket that accepts and says nothing, or a line without end."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        def serve():
            peer, _ = server.accept()
            with peer, contextlib.suppress(OSError):  # the client closes on what it has not read
                peer.sendall(sends)
                while peer.recv(4096):  # reads what the client asks, answers nothing, until it gives up
                    pass
        threading.Thread(target=serve, daemon=True).start()
        started = time.monotonic()
        reading, _ = read_ups(Power(UpsAddress("ups1", "127.0.0.1", server.getsockname()[1])), timeout=1.0)
    assert time.monotonic() - started < 3
    assert reading.error == ("no answer in time" if not sends else
                             "an answer longer than 1024 bytes: not upsd, or a broken one")


def test_a_credentials_file_others_can_read_is_refused(nut, tmp_path):
    reading, failure = read_ups(power(nut, tmp_path, mode=0o644))
    assert failure.key == CREDENTIALS_KEY
    assert reading.error.endswith("can be read or written by group or others (-rw-r--r--)")


def test_a_credentials_file_not_root_s_or_through_a_link_is_refused(nut, tmp_path):
    path = credentials(tmp_path)
    link = tmp_path / "link"
    link.symlink_to(path)
    setting = Power(UpsAddress("ups1", "127.0.0.1", nut.port), credentials=str(link))
    assert read_ups(setting)[0].error.endswith("it is a symbolic link; it is never read through one")
    os.chown(path, 65534, 65534)
    setting = Power(UpsAddress("ups1", "127.0.0.1", nut.port), credentials=path)
    assert read_ups(setting)[0].error.endswith("is owned by uid 65534, not root")


# -- mgsave status and mgsave check --------------------------------------------------------------

def _policy(tmp_path, power_lines: str, limits: str = "") -> str:
    path = tmp_path / "policy.yaml"
    path.write_text(f"version: 1\n{limits}power:\n{power_lines}")
    path.chmod(0o600)
    return str(path)


def _mgsave(tmp_path, capsys, policy, *args):
    capsys.readouterr()
    code = cli.main(["--connect", "test:///default", "--state-dir", str(tmp_path / "state"), "--policy", policy,
                     *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_status_shows_the_ups(nut, tmp_path, capsys):
    nut.set("ups1", {"ups.status": "OB DISCHRG", "battery.runtime": "600", "battery.charge": "55",
                      "ups.load": "20"})
    policy = _policy(tmp_path, f"  ups: ups1@127.0.0.1:{nut.port}\n  credentials: {credentials(tmp_path)}\n")
    code, out, _ = _mgsave(tmp_path, capsys, policy, "status")
    assert code == ExitCode.OK
    assert f"UPS ups1@127.0.0.1:{nut.port}: on battery, runtime 10 min 00 s, charge 55%, load 20%" in out
    code, out, _ = _mgsave(tmp_path, capsys, policy, "status", "--json")
    ups = json.loads(out)["ups"]
    assert (ups["state"], ups["flags"], ups["error"]) == ("on-battery", ["OB", "DISCHRG"], None)
    assert ups["runtime_seconds"] == {"value": 600, "unknown": None}


def test_status_says_why_the_ups_cannot_be_read(tmp_path, capsys):
    port = nutrig.free_port()
    policy = _policy(tmp_path, f"  ups: ups1@127.0.0.1:{port}\n")
    code, out, _ = _mgsave(tmp_path, capsys, policy, "status", "--json")
    ups = json.loads(out)["ups"]
    assert ups["state"] == "unknown" and "Connection refused" in ups["error"]


def test_check_refuses_an_unsafe_credentials_file_at_its_line(nut, tmp_path, capsys):
    path = credentials(tmp_path, mode=0o640)
    policy = _policy(tmp_path, f"  ups: ups1@127.0.0.1:{nut.port}\n  credentials: {path}\n")
    code, _, err = _mgsave(tmp_path, capsys, policy, "check")
    assert code == ExitCode.BAD_INPUT
    assert (f"{policy}:4:16: at 'power.credentials': the credentials file {path} can be read or written by group "
            f"or others (-rw-r-----) (hint: chmod 600 it)") in err.splitlines()


def test_check_refuses_a_margin_longer_than_the_deadline_at_its_line(nut, tmp_path, capsys):
    policy = _policy(tmp_path, f"  ups: ups1@127.0.0.1:{nut.port}\n  margin: 5min\n",
                     limits="limits: {shutdown_deadline: 2min}\n")
    code, _, err = _mgsave(tmp_path, capsys, policy, "check")
    assert code == ExitCode.BAD_INPUT
    assert f"{policy}:5:11: at 'power.margin': must be shorter than limits.shutdown_deadline (120 s)" in err


def test_check_warns_of_an_unknown_ups_name_at_its_line(nut, tmp_path, capsys):
    policy = _policy(tmp_path, f"  ups: nosuch@127.0.0.1:{nut.port}\n  credentials: {credentials(tmp_path)}\n")
    code, out, _ = _mgsave(tmp_path, capsys, policy, "check")
    assert code == ExitCode.OK, out
    lines = out.splitlines()
    where = lines.index(f"{policy}:3: power.ups:")
    assert lines[where + 1].startswith(f"  warning: the UPS cannot be read: upsd on 127.0.0.1:{nut.port} knows no "
                                       f"UPS named nosuch")
    assert _mgsave(tmp_path, capsys, policy, "check", "--strict")[0] == ExitCode.BAD_INPUT


def test_check_warns_of_refused_credentials_at_their_line(nut, tmp_path, capsys):
    policy = _policy(tmp_path, f"  ups: ups1@127.0.0.1:{nut.port}\n"
                               f"  credentials: {credentials(tmp_path, password='wrong')}\n")
    code, out, _ = _mgsave(tmp_path, capsys, policy, "check")
    assert code == ExitCode.OK
    lines = out.splitlines()
    assert lines[lines.index(f"{policy}:4: power.credentials:") + 1].startswith(
        "  warning: the UPS cannot be read: upsd refused the credentials (ACCESS-DENIED)")


def test_check_warns_of_a_daemon_that_is_not_there_without_failing(tmp_path, capsys):
    port = nutrig.free_port()
    policy = _policy(tmp_path, f"  ups: ups1@127.0.0.1:{port}\n")
    code, out, _ = _mgsave(tmp_path, capsys, policy, "check", "--json")
    assert code == ExitCode.OK
    [warning] = [w for w in json.loads(out)["warnings"] if w["rule"] == "power.ups"]
    assert (warning["file"], warning["line"]) == (policy, 3)
    assert "cannot connect to 127.0.0.1 port" in warning["message"]


def test_check_warns_of_a_ups_without_a_runtime(nut, tmp_path, capsys):
    policy = _policy(tmp_path, f"  ups: bare@127.0.0.1:{nut.port}\n")
    code, out, _ = _mgsave(tmp_path, capsys, policy, "check")
    assert code == ExitCode.OK
    assert "  warning: the UPS's runtime is unknown: the UPS does not report its runtime" in out.splitlines()
