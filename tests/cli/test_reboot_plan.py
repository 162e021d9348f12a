"""A reboot is not a power-off, on libvirt's test driver: ``plan shutdown --reboot`` and
``--poweroff`` show each guest's chain for that kind, and a pass told the kind runs it and says
so in its summary (text and ``--json``) and its record."""

import json

import pytest

from libmgsave import state
from libmgsave.errors import ExitCode
from libmgsave.history import RecordedPass
from tests.cli.test_admin_commands import run
from tests.cli.test_unit_stop import stand_ins  # noqa: F401
from tests.testdriver import define, hv  # noqa: F401

POLICY = """\
version: 1
defaults:
  on_shutdown: [save, shutdown, poweroff]
guests:
  - match: {name: "web*"}
    on_reboot: [shutdown, poweroff]
"""


def rows(out: str) -> dict[str, str]:
    """The plan table's line of each guest, by name."""
    return {line.split()[0]: line for line in out.splitlines() if line.startswith("  ") and "running" in line}


def test_plan_shutdown_shows_the_on_reboot_chain_for_a_reboot_and_on_shutdown_for_a_poweroff(hv, tmp_path, capsys):
    define(hv, "web1", "db")
    code, out, _err = run(tmp_path, capsys, "plan", "shutdown", "--reboot", policy=POLICY)
    assert code == ExitCode.OK
    assert out.startswith("Shutdown plan for a reboot (on_reboot chains; policy:")
    assert "shutdown,poweroff" in rows(out)["web1"] and "save" not in rows(out)["web1"]
    assert "save,shutdown,poweroff" in rows(out)["db"]
    code, out, _err = run(tmp_path, capsys, "plan", "shutdown", "--poweroff", policy=POLICY)
    assert code == ExitCode.OK and out.startswith("Shutdown plan for a poweroff (on_shutdown chains; policy:")
    assert "save,shutdown,poweroff" in rows(out)["web1"]
    code, out, _err = run(tmp_path, capsys, "--json", "plan", "shutdown", "--reboot", policy=POLICY)
    (plan,) = json.loads(out)["plans"]
    assert plan["host_shutdown"] == {"kind": "reboot", "why": "--reboot was given"}
    guests = {g["name"]: g for g in plan["guests"]}
    assert guests["web1"]["actions"] == ["shutdown", "poweroff"] and guests["web1"]["chain_from"] == "on_reboot"
    assert guests["web1"]["settings"]["on_reboot"]["value"] == ["shutdown", "poweroff"]
    assert guests["db"]["chain_from"] == "on_shutdown" and guests["db"]["settings"]["on_reboot"]["value"] == "on_shutdown"


def test_without_a_kind_the_plan_runs_on_shutdown_and_says_which_guests_it_concerns(hv, tmp_path, capsys):
    define(hv, "web1", "db")
    code, out, _err = run(tmp_path, capsys, "plan", "shutdown", policy=POLICY)
    assert code == ExitCode.OK and out.startswith("Shutdown plan (policy:")
    assert "save,shutdown,poweroff" in rows(out)["web1"]
    assert ("warning: the kind of shutdown is not known (no kind of shutdown was given): web1 gets its "
            "on_shutdown chain, not its on_reboot chain") in " ".join(out.split())
    with pytest.raises(SystemExit) as exited:
        run(tmp_path, capsys, "plan", "--reboot", "--poweroff", policy=POLICY)
    assert exited.value.code == ExitCode.BAD_INPUT
    assert "not allowed with argument --reboot" in capsys.readouterr().err


def test_a_pass_for_a_reboot_runs_on_reboot_and_its_summary_and_record_say_so(hv, tmp_path, capsys):
    define(hv, "web1", "db")
    code, out, _err = run(tmp_path, capsys, "--json", "shutdown", "--reboot", policy=POLICY)
    summary = json.loads(out)
    assert summary["host_shutdown"] == {"kind": "reboot", "why": "--reboot was given"}
    outcomes = {g["name"]: g["outcome"] for g in summary["guests"]}
    assert outcomes == {"web1": "shut-down", "db": "saved"} and code == ExitCode.OK, summary
    record = state.read_record(tmp_path / "state" / state.SHUTDOWN_RECORD, "shutdown")
    assert RecordedPass.from_dict(record).host_shutdown.to_dict() == summary["host_shutdown"]
    define(hv, "web2")
    code, out, _err = run(tmp_path, capsys, "shutdown", "--poweroff", policy=POLICY)
    assert "Summary of the shutdown pass for a poweroff (on_shutdown chains)," in out
    record = state.read_record(tmp_path / "state" / state.SHUTDOWN_RECORD, "shutdown")
    assert record["host_shutdown"] == {"kind": "poweroff", "why": "--poweroff was given"}
    assert record["guests"][next(k for k, g in record["guests"].items() if g["name"] == "web2")]["outcome"] == "saved"


# -- the unit's stop asks logind and systemd (stand-ins on a real private bus) ------------------


@pytest.mark.parametrize("said", ["logind-257", "job-252", "nothing-252"])
def test_the_unit_s_stop_runs_the_chain_of_the_kind_logind_or_systemd_s_job_says(hv, tmp_path, capsys, stand_ins,
                                                                                 said):
    logind, systemd = stand_ins
    if said == "logind-257":  # mgsave watch stopped the unit in logind's delay phase: no job yet
        logind.preparing, logind.shutdown_type = True, "reboot"
    elif said == "job-252":  # the unit's stop at a reboot, on a logind without metadata
        systemd.system_state = "stopping"
        systemd.jobs = [("reboot.target", "start"), ("shutdown.target", "start"), ("mgsave.service", "stop")]
    else:  # systemd 252 in logind's delay phase: nothing says which
        logind.preparing = True
    define(hv, "web1", "db")
    code, out, err = run(tmp_path, capsys, "shutdown", "--if-host-going-down", policy=POLICY)
    err = " ".join(err.split())
    record = state.read_record(tmp_path / "state" / state.SHUTDOWN_RECORD, "shutdown")
    outcomes = {g["name"]: g["outcome"] for g in record["guests"].values()}
    if said == "nothing-252":
        assert record["host_shutdown"]["kind"] == "unknown" and outcomes == {"web1": "saved", "db": "saved"}
        assert "cannot tell which kind of shutdown this is (neither logind nor systemd's jobs said which" in err
        assert "web1 gets its on_shutdown chain, not its on_reboot chain" in " ".join(out.split())
        return
    why = "logind announced a reboot" if said == "logind-257" else "reboot.target has a start job"
    assert record["host_shutdown"] == {"kind": "reboot", "why": why}
    assert outcomes == {"web1": "shut-down", "db": "saved"} and code == ExitCode.OK
    assert f"the host is going down for a reboot ({why}): each guest gets its on_reboot chain" in err
    assert "Summary of the shutdown pass for a reboot (on_reboot chains)," in out
