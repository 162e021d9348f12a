"""``mgsave shutdown --if-host-going-down`` (mgsave.service's ExecStop=) on the test driver.

systemd and logind answer from a real private system bus (tests/privatebus.py) as stand-ins,
saying what the real ones said in the systemd container at each kind of stop; the real thing is
tests/test_systemd_unit_stop.py. ``mgsave shutdown`` finds the bus through
``DBUS_SYSTEM_BUS_ADDRESS``.
"""

from __future__ import annotations

import pytest

from libmgsave import cli
from libmgsave.errors import ExitCode
from tests.privatebus import Logind, PrivateSystemBus, Systemd
from tests.testdriver import URI, define, has_image, hv, running  # noqa: F401


@pytest.fixture
def stand_ins(monkeypatch):
    bus = PrivateSystemBus()
    logind, systemd = Logind(bus.address), Systemd(bus.address)
    monkeypatch.setenv("DBUS_SYSTEM_BUS_ADDRESS", bus.address)
    yield logind, systemd
    logind.close()
    systemd.close()
    bus.close()


@pytest.fixture
def stop(tmp_path, capsys):
    """Run what the unit's stop runs; (exit code, stderr)."""
    def run(*extra: str) -> tuple[int, str]:
        capsys.readouterr()
        code = cli.main(["shutdown", "--connect", URI, "--state-dir", str(tmp_path / "state"), *extra])
        return code, " ".join(capsys.readouterr().err.split())
    return run


def test_a_stop_on_a_host_that_stays_up_saves_nothing_and_arms_the_pass_again(hv, stand_ins, stop):
    logind, systemd = stand_ins
    define(hv, "db", "web")
    code, err = stop("--if-host-going-down")
    assert code == ExitCode.OK
    assert running(hv) == ["db", "web"] and not has_image(hv, "db") and not has_image(hv, "web")
    assert ("warning: mgsave.service is being stopped, but the host is not shutting down (systemd is running, no "
            "shutdown is queued and logind announced none): no guest was saved. To save the guests now, run "
            "'mgsave shutdown'.") in err
    assert "The shutdown pass is armed again" in err
    [(name, mode, properties, _aux)] = systemd.called("StartTransientUnit")
    assert (name, mode) == ("mgsave-rearm.service", "fail")
    properties = dict(properties)
    assert properties["After"] == ("as", ["mgsave.service"])
    [(_path, argv, _ignore)] = properties["ExecStart"][1]
    assert argv == ["systemctl", "start", "mgsave.service"]


def test_a_restart_saves_nothing_and_queues_nothing(hv, stand_ins, stop):
    _logind, systemd = stand_ins
    systemd.jobs = [("mgsave.service", "restart")]
    define(hv, "db")
    code, err = stop("--if-host-going-down")
    assert code == ExitCode.OK and running(hv) == ["db"]
    assert "It is being restarted, so the shutdown pass stays armed." in err
    assert systemd.called("StartTransientUnit") == []


def test_a_disabled_unit_is_not_armed_again(hv, stand_ins, stop):
    _logind, systemd = stand_ins
    systemd.units["mgsave.service"]["UnitFileState"] = "disabled"
    define(hv, "db")
    code, err = stop("--if-host-going-down")
    assert code == ExitCode.OK and running(hv) == ["db"]
    assert "is disabled or masked, so it is not started again" in err
    assert systemd.called("StartTransientUnit") == []


@pytest.mark.parametrize("going_down", ["poweroff", "logind", "isolate"])
def test_a_host_going_down_runs_the_pass(hv, stand_ins, stop, going_down):
    logind, systemd = stand_ins
    if going_down == "poweroff":
        systemd.system_state = "stopping"
        systemd.jobs = [("poweroff.target", "start"), ("shutdown.target", "start"), ("mgsave.service", "stop")]
    elif going_down == "logind":  # mgsave watch stopped the unit in logind's delay
        logind.preparing = True
    else:
        systemd.system_state = "maintenance"
        systemd.jobs = [("mgsave.service", "stop"), ("virt-guest-shutdown.target", "stop")]
    define(hv, "db")
    code, err = stop("--if-host-going-down")
    assert code == ExitCode.OK and running(hv) == [] and has_image(hv, "db")
    assert "running the shutdown pass:" in err
    assert systemd.called("StartTransientUnit") == []


def test_when_the_bus_cannot_be_reached_the_pass_runs(hv, stop, tmp_path, monkeypatch):
    monkeypatch.setenv("DBUS_SYSTEM_BUS_ADDRESS", f"unix:path={tmp_path}/no-bus")
    define(hv, "db")
    code, err = stop("--if-host-going-down")
    assert code == ExitCode.OK and has_image(hv, "db")
    assert "warning: cannot tell whether the host is going down (the system bus cannot be reached" in err


def test_when_systemd_does_not_answer_the_pass_runs_without_waiting_long(hv, stand_ins, stop):
    _logind, systemd = stand_ins
    systemd.silent = True  # hung: the first question goes unanswered
    define(hv, "db")
    code, err = stop("--if-host-going-down")
    assert code == ExitCode.OK and has_image(hv, "db")
    assert "cannot tell whether the host is going down (no answer on the system bus within 5 s)" in err
    assert [member for member, _body, _caller in systemd.calls] == ["Get"]  # not asked again


def test_by_hand_mgsave_shutdown_saves_without_asking(hv, stand_ins, stop):
    logind, systemd = stand_ins
    define(hv, "db")
    code, _err = stop()
    assert code == ExitCode.OK and has_image(hv, "db")
    assert systemd.calls == [] and logind.calls == []
