"""``image_format`` on the test driver, which cannot be asked for a format per save: ``plan``
says which format each guest gets and why, ``check`` warns at the rule, and the pass saves the
guest in libvirt's own format all the same."""

import json
import os

import pytest

from libmgsave.errors import ExitCode
from libmgsave.hypervisor import Host
from tests.cli.conftest import policy_runner
from tests.testdriver import URI, define, has_image, hv  # noqa: F401

POLICY = """\
version: 1
guests:
  - name: compressed
    match: {name: "z*"}
    image_format: zstd
"""
REFUSED = ("image_format zstd not available: the test driver has no per-call image format (only qemu's has); "
           "saved in libvirt's own format (raw, unless save_image_format in qemu.conf says otherwise)")


@pytest.fixture(autouse=True)
def _quiet_host(quiet_host):
    """This host's own setup is looked for in an empty tree (``quiet_host``)."""


@pytest.fixture
def mgsave(tmp_path, capsys):
    return policy_runner(tmp_path, capsys, POLICY)


def test_plan_says_which_format_each_guest_gets_and_why(hv, mgsave):
    define(hv, "z1", "plain")
    code, out = mgsave("--json", "plan", "shutdown")
    assert code == ExitCode.OK, out
    [plan] = json.loads(out)["plans"]
    guests = {g["name"]: g for g in plan["guests"]}
    assert guests["z1"]["image_format"] == "libvirt" and guests["z1"]["image_format_why"] == REFUSED
    assert REFUSED in guests["z1"]["notes"]
    assert guests["z1"]["settings"]["image_format"] == {"value": "zstd", "from": "guests[0] (compressed)", "line": 3}
    assert guests["plain"]["image_format"] == "libvirt" and guests["plain"]["notes"] == []
    assert guests["plain"]["image_format_why"].endswith(
        "image_format libvirt (built-in: the default until measurements justify another)")
    code, out = mgsave("plan", "shutdown", "--verbose")
    assert "format:" in out and "per-call image format" in " ".join(out.split())


def test_check_warns_at_the_rule_that_asks_for_a_format_the_connection_cannot_take(hv, mgsave):
    define(hv, "z1")
    code, out = mgsave("check")
    assert f"policy.yaml:3: guests[0] (compressed):\n  warning: z1: {REFUSED}" in out
    assert mgsave("check", "--strict")[0] != ExitCode.OK


def test_the_pass_saves_in_libvirts_own_format_where_none_can_be_asked(hv, mgsave):
    define(hv, "z1")
    code, out = mgsave("--json", "shutdown")
    assert code == ExitCode.OK, out
    [result] = json.loads(out)["guests"]
    assert result["outcome"] == "saved" and has_image(hv, "z1")


def test_a_save_whose_format_libvirt_refuses_is_made_in_its_own(hv, tmp_path, caplog):
    """The test driver has no virDomainSaveParams: the wrapper falls back to the usual save,
    the guest still running when the refusal came."""
    define(hv, "z1")
    guest = Host(URI, hv).guest(hv.lookupByName("z1").UUIDString())
    path = str(tmp_path / "z1.save")
    saved = guest.save_to_file(path, image_format="zstd")
    assert (saved.channels, saved.image_format) == (1, None)
    assert not hv.lookupByName("z1").isActive() and os.path.getsize(path) > 0
    assert "saving with image format zstd" in caplog.text and "libvirt's own format" in caplog.text
