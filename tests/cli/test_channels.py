"""``save_channels`` on the test driver, which has no parallel save: plan and check say so,
and the pass saves the guest in one stream all the same."""

import json
import os

import pytest

from libmgsave import parallelsave
from libmgsave.hypervisor import host as hypervisor_host
from libmgsave.errors import ExitCode
from libmgsave.hypervisor import Host
from tests.cli.conftest import policy_runner
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
def _quiet_host(quiet_host):
    """This host's own setup is looked for in an empty tree (``quiet_host``)."""


@pytest.fixture
def mgsave(tmp_path, capsys):
    return policy_runner(tmp_path, capsys, POLICY)


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
    define(hv, "big1")
    host = Host(URI, hv)
    guest = host.guest(hv.lookupByName("big1").UUIDString())
    path = str(tmp_path / "big1.save")
    assert guest.save_to_file(path, channels=4).channels == 1
    assert not hv.lookupByName("big1").isActive() and os.path.getsize(path) > 0
    host.restore_from_file(path, channels=4)  # not a sparse image: read in one stream
    assert hv.lookupByName("big1").isActive()


def _channels_path_raises(monkeypatch):
    """The ctypes path made to raise as it would with a binding whose capsule has another name.

    Injected: the real path cannot be made to raise on demand (it raises only with a binding or
    a libvirt library other than this machine's), and the test driver has no parallel save at all."""
    def capsule_of_another_name(obj, name):
        raise ValueError("PyCapsule_GetPointer called with incorrect name")

    monkeypatch.setattr(parallelsave, "binding_types_channels", lambda: False)
    monkeypatch.setattr(parallelsave, "_pointer", capsule_of_another_name)


def test_a_channels_path_that_raises_saves_in_one_stream(hv, tmp_path, monkeypatch, caplog):
    _channels_path_raises(monkeypatch)
    define(hv, "big1")
    guest = Host(URI, hv).guest(hv.lookupByName("big1").UUIDString())
    path = str(tmp_path / "big1.save")
    assert guest.save_to_file(path, channels=4).channels == 1
    assert not hv.lookupByName("big1").isActive() and os.path.getsize(path) > 0
    assert "ValueError" in caplog.text and "saving it in one stream" in caplog.text


def test_a_channels_path_that_raises_restores_in_one_stream(hv, tmp_path, monkeypatch, caplog):
    define(hv, "big1")
    host = Host(URI, hv)
    path = str(tmp_path / "big1.save")
    host.guest(hv.lookupByName("big1").UUIDString()).save_to_file(path)
    _channels_path_raises(monkeypatch)
    # The test driver's save files are not in libvirt's sparse format, which alone takes channels.
    monkeypatch.setattr(hypervisor_host, "is_sparse_image", lambda path: True)
    host.restore_from_file(path, channels=4)
    assert hv.lookupByName("big1").isActive()
    assert "ValueError" in caplog.text and "restoring it in one stream" in caplog.text
