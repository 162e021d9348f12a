"""``mgsave check`` on libvirt's test driver: warnings located at their rule, and ``--strict``."""

import json
import os

import pytest

from libmgsave import cli
from libmgsave.errors import ExitCode
from tests.testdriver import URI, define, hv  # noqa: F401

# Line numbers matter: the test looks for them.
POLICY = """\
version: 1
defaults:
  priority: 1
guests:
  - name: web servers
    match: {name: "web*"}
    after: [db, nosuchguest]
  - name: a stale rule
    match: {name: "gone-*"}
    order: 3
  - match: {name: db}
    after: [web1]
"""


@pytest.fixture(autouse=True)
def _quiet_host(quiet_host):
    """This host's own setup is looked for in an empty tree (``quiet_host``)."""


def _check(tmp_path, capsys, *args, policy=POLICY, connect=URI):
    path = tmp_path / "policy.yaml"
    path.write_text(policy)
    os.chmod(path, 0o644)
    capsys.readouterr()
    code = cli.main(["--connect", connect, "--state-dir", str(tmp_path / "state"), "--policy", str(path),
                     "check", *args])
    out, err = capsys.readouterr()
    return code, out, err, str(path)


def test_warnings_about_a_rule_carry_its_line_and_are_grouped_under_it(hv, tmp_path, capsys):
    define(hv, "web1", "db")
    code, out, _err, path = _check(tmp_path, capsys)
    assert code == ExitCode.OK, out
    lines = out.splitlines()
    web = lines.index(f"{path}:5: guests[0] (web servers):")
    stale = lines.index(f"{path}:8: guests[1] (a stale rule):")
    assert web < stale, "the rules in file order"
    assert lines[web + 1] == "  warning: web1: 'after' names 'nosuchguest', which is not a guest here; ignored"
    assert lines[stale + 1] == "  warning: matches no guest"
    # the cycle web1 -> db -> web1 is broken at one of its two edges, under the rule that made it
    (cycle,) = [i for i, line in enumerate(lines) if "'after' forms a cycle" in line]
    assert web < cycle < stale or lines[cycle - 1] == f"{path}:11: guests[2]:", out
    assert not [line for line in lines if line.startswith("warning:")], "every warning here is about a rule"


def test_strict_turns_warnings_into_exit_2(hv, tmp_path, capsys):
    define(hv, "web1", "db")
    code, out, _err, _path = _check(tmp_path, capsys, "--strict")
    assert code == ExitCode.BAD_INPUT
    assert "--strict: 3 warnings counted as errors" in out


def test_strict_passes_a_clean_policy(hv, tmp_path, capsys):
    define(hv, "web1", "db")
    clean = "version: 1\nguests:\n  - match: {name: web1}\n    after: [db]\n"
    code, out, _err, _path = _check(tmp_path, capsys, "--strict", policy=clean)
    assert code == ExitCode.OK, out
    assert "warning" not in out


def test_an_unreachable_hypervisor_is_a_warning_and_an_error_under_strict(tmp_path, capsys):
    clean = "version: 1\n"
    nowhere = f"qemu+unix:///system?socket={tmp_path}/no-such-socket"
    code, out, _err, _path = _check(tmp_path, capsys, policy=clean, connect=nowhere)
    assert code == ExitCode.OK
    assert "warning: could not look at the guests" in out
    code, out, _err, _path = _check(tmp_path, capsys, "--strict", "--json", policy=clean, connect=nowhere)
    assert code == ExitCode.BAD_INPUT
    report = json.loads(out)
    assert report["ok"] is False and report["strict"] is True
    assert [w["rule"] for w in report["warnings"]] == [None]


def test_json_warnings_name_their_rule_file_and_line(hv, tmp_path, capsys):
    define(hv, "web1", "db")
    code, out, _err, path = _check(tmp_path, capsys, "--json")
    assert code == ExitCode.OK
    located = {(w["rule"], w["file"], w["line"]) for w in json.loads(out)["warnings"]}
    assert ("guests[1] (a stale rule)", path, 8) in located
    assert ("guests[0] (web servers)", path, 5) in located


def test_a_warning_about_a_setting_of_defaults_points_at_defaults(hv, tmp_path, capsys):
    define(hv, "a")
    policy = "version: 1\nconnections: [test:///default]\ndefaults:\n  on_shutdown: [save, shutdown]\n"
    code, out, _err, path = _check(tmp_path, capsys, policy=policy)
    lines = out.splitlines()
    at = lines.index(f"{path}:3: defaults:")
    assert lines[at + 1].startswith("  warning: a: on_shutdown does not end with poweroff"), out


@pytest.mark.parametrize("where", ["peer", "home", "connection"])
def test_a_uri_that_would_run_a_program_is_refused_and_never_run(hv, tmp_path, capsys, where):
    ran = tmp_path / "ran"
    script = tmp_path / "script"
    script.write_text(f"#!/bin/sh\ntouch {ran}\nexit 1\n")
    script.chmod(0o755)
    uri = f"qemu+ext:///system?command={script}"
    policy = {"peer": f"version: 1\ndefaults:\n  migrate:\n    peers: ['{uri}']\n",
              "home": f"version: 1\ndefaults:\n  migrate:\n    peers: ['{URI}']\n    come_back: true\n    home: '{uri}'\n",
              "connection": f"version: 1\nconnections: ['{uri}']\n"}[where]
    code, _out, out, path = _check(tmp_path, capsys, policy=policy, connect=URI)  # problems: on stderr
    assert code == ExitCode.BAD_INPUT, out
    line = {"peer": 4, "home": 6, "connection": 2}[where]
    assert f"{path}:{line}:" in out and "a transport a migration can use" in out
    assert "only parameters that run no command" in out
    assert not ran.exists(), "libvirt ran the URI's program"
