"""The shutdown pass plans against the UPS's runtime, read from a real NUT (tests/nutrig.py:
upsd and dummy-ups on loopback), its guests libvirt's test driver's: the deadline the pass used
is in its ``--json`` (``battery``), and a UPS that cannot be read or lies leaves the fixed
deadline with a warning in the summary."""

from __future__ import annotations

import json

import pytest

from libmgsave import cli
from libmgsave.errors import ExitCode
from tests import nutrig
from tests.testdriver import URI, define, hv, running  # noqa: F401 - hv is a fixture

LIMIT = 600  # limits.shutdown_deadline: 10 min
MARGIN = 60


@pytest.fixture(scope="module")
def nut(tmp_path_factory):
    nutrig.require()
    workdir = tmp_path_factory.mktemp("nut")
    workdir.chmod(0o700)
    with nutrig.NutRig(workdir, {"ups1": {"ups.status": "OL", "battery.runtime": "1200"}}) as rig:
        yield rig


def shutdown(tmp_path, capsys, port: int, *args) -> tuple[int, dict, str]:
    policy = tmp_path / "policy.yaml"
    policy.write_text(f"version: 1\nconnections: ['{URI}']\nlimits:\n  shutdown_deadline: {LIMIT}s\n"
                      f"power:\n  ups: ups1@127.0.0.1:{port}\n  margin: {MARGIN}s\n")
    policy.chmod(0o600)
    capsys.readouterr()
    code = cli.main(["shutdown", "--state-dir", str(tmp_path / "state"), "--policy", str(policy), "--json", *args])
    out, err = capsys.readouterr()
    return code, json.loads(out), err


def test_on_battery_the_pass_plans_against_the_runtime(nut, hv, tmp_path, capsys):
    define(hv, "web", "db")
    nut.set("ups1", {"ups.status": "OB DISCHRG", "battery.runtime": "400"})
    code, result, err = shutdown(tmp_path, capsys, nut.port)
    assert code == ExitCode.OK and running(hv) == []
    battery = result["battery"]
    assert (battery["seconds"], battery["runtime_seconds"], battery["warning"]) == (400 - MARGIN - 5, 400, None)
    assert battery["moves"] == []
    assert "the deadline is 5 min 35 s: runtime 6 min 40 s less the 1 min 00 s margin" in battery["why"]
    assert "shutdown deadline 5 min 35 s: the UPS ups1@127.0.0.1" in err  # the journal's line
    assert battery["replans"] == []
    # the record keeps the runtime the deadline was set on; the report shows it
    record = json.loads((tmp_path / "state" / "last-shutdown.json").read_text())
    [decision] = record["battery"]
    assert (decision["step"], decision["runtime_seconds"], decision["seconds_left"]) == ("deadline", 400, 335)
    capsys.readouterr()
    assert cli.main(["report", "--state-dir", str(tmp_path / "state"), "--policy", str(tmp_path / "policy.yaml")]) == 0
    assert "deadline   runtime 6 min 40 s, 5 min 35 s left" in capsys.readouterr().out


def test_the_summary_names_the_runtime_the_deadline_was_set_on(nut, hv, tmp_path, capsys):
    define(hv, "web")
    nut.set("ups1", {"ups.status": "OB DISCHRG", "battery.runtime": "400"})
    policy = tmp_path / "policy.yaml"
    shutdown(tmp_path, capsys, nut.port, "--dry-run")
    code = cli.main(["shutdown", "--state-dir", str(tmp_path / "state"), "--policy", str(policy), "--dry-run"])
    assert code == ExitCode.OK
    summary = " ".join(capsys.readouterr().out.split())  # wrapped at 80 columns
    assert "shutdown deadline: the UPS ups1@127.0.0.1" in summary and "runtime 6 min 40 s less" in summary


def test_on_line_the_fixed_deadline(nut, hv, tmp_path, capsys):
    define(hv, "web")
    nut.set("ups1", {"ups.status": "OL", "battery.runtime": "400"})
    code, result, _err = shutdown(tmp_path, capsys, nut.port, "--dry-run")
    assert code == ExitCode.OK
    assert (result["battery"]["seconds"], result["battery"]["warning"]) == (LIMIT, None)


@pytest.mark.parametrize("runtime", ["-5", "99999999999"])
def test_a_lying_ups_leaves_the_fixed_deadline_and_the_pass_says_so(nut, hv, tmp_path, capsys, runtime):
    define(hv, "web")
    nut.set("ups1", {"ups.status": "OB", "battery.runtime": runtime})
    code, result, err = shutdown(tmp_path, capsys, nut.port)
    assert code == ExitCode.OK and running(hv) == []
    warning = result["battery"]["warning"]
    assert result["battery"]["seconds"] == LIMIT and "its runtime is" in warning
    assert warning.endswith("plans against the fixed deadline of 10 min 00 s")
    assert warning in result["warnings"]
    assert warning in err


def test_an_unreachable_ups_leaves_the_fixed_deadline_and_the_pass_says_so(hv, tmp_path, capsys):
    define(hv, "web")
    code, result, _err = shutdown(tmp_path, capsys, nutrig.free_port())
    assert code == ExitCode.OK and running(hv) == []
    warning = result["battery"]["warning"]
    assert result["battery"]["seconds"] == LIMIT
    assert "cannot be read" in warning and warning in result["warnings"]


def test_without_power_the_json_has_no_battery(hv, tmp_path, capsys):
    define(hv, "web")
    policy = tmp_path / "policy.yaml"
    policy.write_text(f"version: 1\nconnections: ['{URI}']\n")
    capsys.readouterr()
    assert cli.main(["shutdown", "--state-dir", str(tmp_path / "state"), "--policy", str(policy), "--json"]) == 0
    assert "battery" not in json.loads(capsys.readouterr().out)
