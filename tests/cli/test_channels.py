"""``save_channels`` on the test driver, which has no parallel save: plan and check say so,
and the pass saves the guest in one stream all the same."""

import functools
import json
import os

import pytest

from libmgsave import cli, conflicts
from libmgsave.errors import ExitCode
from tests.testdriver import URI, define, has_image, hv  # noqa: F401

POLICY = """\
version: 1
guests:
  - name: big ones
    match: {name: "big*"}
    save_channels: 4
  - match: {name: "auto*"}
    save_channels: auto
"""
REFUSED = "save_channels 4 not available: the test driver has no parallel save (only qemu's has); saved in one stream"


@pytest.fixture(autouse=True)
def quiet_host(tmp_path, monkeypatch):
    (tmp_path / "root").mkdir()
    monkeypatch.setattr(conflicts, "host_conflicts", functools.partial(conflicts.host_conflicts, root=tmp_path / "root"))


@pytest.fixture
def mgsave(tmp_path, capsys):
    path = tmp_path / "policy.yaml"
    path.write_text(POLICY)
    os.chmod(path, 0o644)

    def run(*args):
        capsys.readouterr()
        code = cli.main(["--connect", URI, "--state-dir", str(tmp_path / "state"), "--policy", str(path), *args])
        return code, capsys.readouterr().out
    return run


def test_plan_and_check_say_why_a_guest_gets_one_stream(hv, mgsave):
    define(hv, "big1", "auto1")
    code, out = mgsave("plan", "shutdown")
    assert code == ExitCode.OK
    assert f"note: big1: {REFUSED}" in " ".join(out.split())
    assert "channels)" not in out and "auto1: save_channels" not in out  # auto asks for nothing in particular
    code, out = mgsave("--json", "plan", "shutdown")
    [plan] = json.loads(out)["plans"]
    big = {g["name"]: g for g in plan["guests"]}["big1"]
    assert big["save_channels"] == 1 and REFUSED in big["notes"]
    assert big["settings"]["save_channels"] == {"value": 4, "from": "guests[0] (big ones)", "line": 3}
    code, out = mgsave("check")
    assert code == ExitCode.OK, out
    assert f"policy.yaml:3: guests[0] (big ones):\n  warning: big1: {REFUSED}" in out
    assert mgsave("check", "--strict")[0] != ExitCode.OK


def test_the_pass_saves_in_one_stream_where_channels_are_not_offered(hv, mgsave):
    define(hv, "big1")
    code, out = mgsave("--json", "shutdown")
    assert code == ExitCode.OK, out
    [result] = json.loads(out)["guests"]
    assert result["outcome"] == "saved" and has_image(hv, "big1")


def test_a_save_with_channels_that_libvirt_refuses_is_made_in_one_stream(hv, tmp_path):
    """The test driver has no virDomainSaveParams: the wrapper falls back to the usual save,
    the guest still running when the refusal came."""
    from libmgsave.hypervisor import Host

    define(hv, "big1")
    host = Host(URI, hv)
    guest = host.guest(hv.lookupByName("big1").UUIDString())
    path = str(tmp_path / "big1.save")
    assert guest.save_to_file(path, channels=4) == 1
    assert not hv.lookupByName("big1").isActive() and os.path.getsize(path) > 0
    host.restore_from_file(path, channels=4)  # not a sparse image: read in one stream
    assert hv.lookupByName("big1").isActive()
