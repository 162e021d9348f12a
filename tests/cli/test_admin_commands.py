"""What an admin expects of the commands, on libvirt's test driver: a broken policy or an unknown
guest fails ``plan``; ``check``'s hints name what is valid; ``sample-policy``; ``-c`` and
``$LIBVIRT_DEFAULT_URI`` as with virsh; ``--help`` in 80 columns; refusals predicted."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from libmgsave import arguments, cli
from libmgsave.errors import ExitCode
from libmgsave.policy import BUILTIN_POLICY
from libmgsave.policyfile import load_policy
from tests.testdriver import URI, define, hv  # noqa: F401

ROOT = Path(__file__).resolve().parents[2]


def run(tmp_path, capsys, *args, policy: str | None = None, connect=(URI,)):
    """``mgsave`` in this process: (exit code, stdout, stderr)."""
    command = ["--state-dir", str(tmp_path / "state")]
    for uri in connect:
        command += ["-c", uri]
    if policy is not None:
        path = tmp_path / "policy.yaml"
        path.write_text(policy)
        os.chmod(path, 0o644)
        command += ["--policy", str(path)]
    capsys.readouterr()
    code = cli.main([*command, *args])
    out, err = capsys.readouterr()
    return code, out, err


# -- 7. a broken policy, an unknown guest -------------------------------------------------------


def test_plan_on_a_broken_policy_shows_the_fallback_and_exits_2(hv, tmp_path, capsys):
    define(hv, "web1")
    code, out, err = run(tmp_path, capsys, "plan", policy="version: 1\ndefaults:\n  autostart: maybe\n")
    assert code == ExitCode.BAD_INPUT
    assert "web1" in out, "the plan a pass would carry out on the fallback is still shown"
    assert "policy.yaml:3:14: at 'defaults.autostart'" in err
    code, out, _err = run(tmp_path, capsys, "--json", "plan", policy="version: 1\ndefaults:\n  autostart: maybe\n")
    assert code == ExitCode.BAD_INPUT and "policy_problems" in out


def test_plan_of_a_guest_that_is_not_there_exits_2_and_names_the_near_ones(hv, tmp_path, capsys):
    define(hv, "web1", "web2", "db")
    code, _out, err = run(tmp_path, capsys, "plan", "shutdown", "wbe1")
    assert code == ExitCode.BAD_INPUT
    assert f"no guest named 'wbe1' on {URI} (did you mean 'web1'?)" in err
    code, _out, err = run(tmp_path, capsys, "plan", "nosuch")
    assert code == ExitCode.BAD_INPUT and "no guest named 'nosuch'" in err and "did you mean" not in err
    code, out, _err = run(tmp_path, capsys, "plan", "boot", "db")
    assert code == ExitCode.OK, out


@pytest.mark.parametrize("written, meant", [("true", "always"), ('"true"', "always"), ("off", "never"),
                                            ("no", "never"), ("false", "never"), ("alwyas", "always")])
def test_check_names_the_valid_value_meant(tmp_path, capsys, written, meant):
    code, _out, err = run(tmp_path, capsys, "check", policy=f"version: 1\ndefaults:\n  autostart: {written}\n")
    assert code == ExitCode.BAD_INPUT
    problems = [line for line in err.splitlines() if "defaults.autostart" in line]
    assert len(problems) == 1, err  # not also "must be a string"
    assert "must be one of always, if-running, never" in problems[0]
    assert f"(hint: did you mean '{meant}'?)" in problems[0]
    assert "quote it" not in err, "quoting would still be invalid"


def test_check_names_the_guest_an_after_may_mean(hv, tmp_path, capsys):
    define(hv, "dns1", "web")
    policy = "version: 1\nguests:\n  - match: {name: web}\n    after: [dns, dsn1, mail]\n"
    code, out, _err = run(tmp_path, capsys, "check", policy=policy)
    assert code == ExitCode.OK, out
    assert "'after' names 'dns', which is not a guest here; ignored (did you mean 'dns1'?)" in out
    assert "'after' names 'dsn1', which is not a guest here; ignored (did you mean 'dns1'?)" in out
    assert "'after' names 'mail', which is not a guest here; ignored\n" in out


def test_a_missing_policy_file_points_at_what_is_installed(tmp_path, capsys):
    capsys.readouterr()
    code = cli.main(["--state-dir", str(tmp_path / "state"), "--policy", str(tmp_path / "none.yaml"), "check"])
    err = capsys.readouterr().err
    assert code == ExitCode.BAD_INPUT
    assert "mgsave sample-policy" in err and "mgsave-policy(5)" in err
    assert "config/" not in err, "the package ships no config/ directory"


def test_sample_policy_prints_the_installed_default_which_means_the_builtin_policy(tmp_path, capsys):
    code, out, _err = run(tmp_path, capsys, "sample-policy", connect=())
    assert code == ExitCode.OK
    assert out == (ROOT / "config" / "policy.default.yaml").read_text()
    path = tmp_path / "sample.yaml"
    path.write_text(out)
    os.chmod(path, 0o644)
    sample = load_policy(str(path))
    assert (sample.defaults, sample.rules, sample.limits, sample.connections) == \
        (BUILTIN_POLICY.defaults, BUILTIN_POLICY.rules, BUILTIN_POLICY.limits, BUILTIN_POLICY.connections)
    explained = {key for key in re.findall(r"^#\s{0,6}(\w+):", out, re.MULTILINE)}
    assert {"limits", "defaults", "guests", "autostart", "on_shutdown", "bypass_cache"} <= explained


def test_a_pass_loads_nothing_of_the_sample(tmp_path):
    """The sample's rendering (textwrap over the whole schema) is sample-policy's alone."""
    code = (f"import sys; from libmgsave import cli; code = cli.main(['-c', '{URI}', '--state-dir', "
            f"'{tmp_path}/state', 'shutdown', '--dry-run']); "
            "print(code, 'libmgsave.policysample' in sys.modules, file=sys.stderr)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path,
                          env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert done.stderr.splitlines()[-1] == "0 False", done.stderr


# -- 9. virsh's habits: -c, $LIBVIRT_DEFAULT_URI ------------------------------------------------


def test_dash_c_is_connect_and_may_come_before_and_after_the_command(hv, tmp_path, capsys):
    define(hv, "web1")
    nowhere = f"qemu+unix:///system?socket={tmp_path}/no-such-socket"
    code, out, _err = run(tmp_path, capsys, "--json", "plan", "-c", nowhere, connect=(URI,))
    assert code == ExitCode.OK, out
    plan = json.loads(out)
    assert [g["name"] for g in plan["plans"][0]["guests"]] == ["web1"], "the URI before the command"
    assert any(w.startswith(f"could not reach {nowhere}") for w in plan["warnings"]), "and the one after it"


def test_libvirt_default_uri_replaces_the_builtin_connection_only(hv, tmp_path, capsys, monkeypatch):
    define(hv, "web1")
    monkeypatch.setenv("LIBVIRT_DEFAULT_URI", URI)
    code, out, _err = run(tmp_path, capsys, "plan", "shutdown", policy="version: 1\n", connect=())
    assert code == ExitCode.OK, out
    assert "web1" in out
    # A policy that names its connections is not overridden by the environment.
    nowhere = f"qemu+unix:///system?socket={tmp_path}/no-such-socket"
    code, _out, err = run(tmp_path, capsys, "plan", policy=f"version: 1\nconnections: ['{nowhere}']\n", connect=())
    assert code == ExitCode.UNAVAILABLE, err


def test_complete_guests_lists_the_names_without_a_policy(hv, tmp_path, capsys, monkeypatch):
    define(hv, "web1", "db", running=False)
    code, out, _err = run(tmp_path, capsys, "_complete-guests", policy="version: [broken\n")
    assert code == ExitCode.OK
    assert out.split() == ["db", "web1"]
    code, out, err = run(tmp_path, capsys, "_complete-guests", connect=(f"qemu+unix:///system?socket={tmp_path}/x",))
    assert (code, out, err) == (ExitCode.OK, "", ""), "a daemon that does not answer: nothing, quietly"


# -- 10. --help -----------------------------------------------------------------------------------


@pytest.mark.parametrize("columns", ["200", "80"])
def test_help_fits_80_columns_and_names_every_command(columns, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", columns)
    commands = arguments.commands(arguments.build_parser())
    for args in [["--help"], *([name, "--help"] for name in commands)]:
        capsys.readouterr()
        with pytest.raises(SystemExit):
            cli.main(args)
        out = capsys.readouterr().out
        assert max(map(len, out.splitlines())) <= 80, (args, [line for line in out.splitlines() if len(line) > 80])
        if args == ["--help"]:
            for name in commands:
                assert re.search(rf"^    {re.escape(name)}\s", out, re.MULTILINE), f"{name} is not named"
            assert "_complete-guests" not in out


# -- 11. what the pass would refuse, said before -------------------------------------------------


def test_plan_and_check_predict_that_the_test_driver_refuses_bypass_cache(hv, tmp_path, capsys):
    define(hv, "web1", "db")
    policy = "version: 1\nguests:\n  - name: fast\n    match: {name: web1}\n    bypass_cache: true\n"
    code, out, _err = run(tmp_path, capsys, "plan", "boot", policy=policy)
    assert code == ExitCode.OK
    flat = " ".join(out.split())
    assert (f"warning: {URI}: bypass_cache would fail the resume at boot of web1: the test driver refuses it "
            "when it starts or restores a guest") in flat
    assert "of db" not in flat and "web1, db" not in flat
    code, out, _err = run(tmp_path, capsys, "check", policy=policy)
    assert re.search(r"policy.yaml:3: guests\[0\] \(fast\):\n  warning: web1: bypass_cache would fail its resume at "
                     r"boot: the test driver refuses it", out), out
    code, _out, _err = run(tmp_path, capsys, "check", "--strict", policy=policy)
    assert code == ExitCode.BAD_INPUT


def test_a_degraded_pass_says_so_and_why_in_its_last_status(tmp_path, capsys, monkeypatch):
    """What ``systemctl status mgsave-boot`` keeps showing of a pass that failed its unit."""
    import socket

    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notifications:
        notifications.bind(str(tmp_path / "notify"))
        monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "notify"))
        code, _out, _err = run(tmp_path, capsys, "boot", policy="version: 1\ndefaults:\n  autostart: maybe\n")
        notifications.setblocking(False)
        sent = []
        while True:
            try:
                sent.append(notifications.recv(65536).decode())
            except BlockingIOError:
                break
    assert code == ExitCode.GUEST_DEGRADED
    last = [m for m in sent if m.startswith("STATUS=")][-1]
    assert "ran on the built-in defaults: the policy file is broken" in last
    assert "degraded: 'journalctl -t mgsave -b' says more" in last


def test_the_units_fail_on_a_degraded_pass_and_say_why(tmp_path):
    for unit in ("mgsave-boot.service", "mgsave.service"):
        text = (ROOT / "units" / unit).read_text()
        success = [line.split("=", 1)[1].split() for line in text.splitlines() if line.startswith("SuccessExitStatus=")]
        assert "10" not in sum(success, []), unit
        assert "degraded" in text and "exit 10" in text or "not 10" in text, f"{unit} does not say why"
    assert "A degraded pass (exit 10) fails the unit too, deliberately" in (ROOT / "docs" / "SYSTEMD.md").read_text()
