"""What ``mgsave status`` costs per guest, counted (not timed: the machine may be busy): the
Python functions it calls and the libvirt calls it makes, for two numbers of guests on libvirt's
test driver (a node file of ``bench/run scale``); the difference is the cost of a guest, which
must stay flat as hosts grow to thousands of guests."""

from __future__ import annotations

import collections
import json
import os
import sys

import pytest

from bench.scale import node_xml
from libmgsave import cli
from libmgsave.errors import ExitCode

FEW, MANY = 40, 140


def _counted(tmp_path, capsys, guests: int, *args: str, after_shutdown: bool = False) -> tuple[collections.Counter, str]:
    """Runs ``mgsave status`` on a node of ``guests`` guests (once to warm the imports and the
    policy cache, once counted), after a shutdown pass when asked (its record then holds every
    guest); returns what it called, by name, and its output."""
    node = tmp_path / f"node-{guests}.xml"
    node.write_text(node_xml(guests))
    policy = tmp_path / "policy.yaml"
    policy.write_text("version: 1\n")
    os.chmod(policy, 0o644)
    common = ["--connect", f"test://{node}", "--state-dir", str(tmp_path / "state"), "--policy", str(policy)]
    argv = [*common, *args, "status"]
    if after_shutdown:
        # Some guests are degraded (the test driver's transient guests, saves past the deadline):
        # the record holds them all the same.
        assert cli.main([*common, "shutdown"]) in (ExitCode.OK, ExitCode.GUEST_DEGRADED)
    assert cli.main(argv) == ExitCode.OK
    capsys.readouterr()
    calls: collections.Counter = collections.Counter()

    def profile(frame, event, arg):  # noqa: ANN001, ANN202
        if event == "call":
            calls["python"] += 1
        elif event == "c_call" and getattr(arg, "__module__", None) == "libvirtmod":
            calls[arg.__name__] += 1

    sys.setprofile(profile)
    try:
        code = cli.main(argv)
    finally:
        sys.setprofile(None)
    out = capsys.readouterr().out
    assert code == ExitCode.OK
    return calls, out


def _per_guest(tmp_path, capsys, *args: str, after_shutdown: bool = False) -> tuple[dict[str, float], str]:
    few, _ = _counted(tmp_path / "few", capsys, FEW, *args, after_shutdown=after_shutdown)
    many, out = _counted(tmp_path / "many", capsys, MANY, *args, after_shutdown=after_shutdown)
    return {name: (many[name] - few[name]) / (MANY - FEW) for name in many | few}, out


@pytest.fixture(autouse=True)
def _dirs(tmp_path):
    (tmp_path / "few").mkdir()
    (tmp_path / "many").mkdir()


# Counted: 47 Python calls a guest for the text (the inventory, the policy's resolution, the row,
# its cells made safe and cut to width), 38 for JSON; JSON indented by json.dumps, which then
# encodes in Python token by token, took 272.
@pytest.mark.parametrize("args", [(), ("--json",)], ids=["text", "json"])
def test_status_calls_a_bounded_number_of_python_functions_per_guest(tmp_path, capsys, args):
    per_guest, out = _per_guest(tmp_path, capsys, *args)
    assert per_guest["python"] <= 50, per_guest
    if args:
        assert len(json.loads(out)["guests"]) == MANY


def test_status_asks_libvirt_about_all_guests_at_once(tmp_path, capsys):
    """The inventory lists every guest's facts in a few calls for the whole connection; per guest
    it only reads what the binding holds without a round trip (name, UUID, freeing the handle)
    and, on the test driver alone (its bulk statistics have no balloon), the memory."""
    per_guest, _ = _per_guest(tmp_path, capsys)
    asked = {name: count for name, count in per_guest.items() if name != "python" and count}
    local = {"virDomainGetName", "virDomainGetUUIDString", "virDomainFree"}
    assert set(asked) - local <= {"virDomainGetInfo"}, asked
    assert per_guest.get("virDomainGetInfo", 0) <= 1, asked
    assert per_guest.get("virDomainGetUUIDString", 0) <= 3, asked


def test_status_reads_the_last_passes_records_once(tmp_path, capsys):
    """After a shutdown pass its record holds every guest: status reads it once, and parses an
    entry again only for a guest that is no longer defined here (migrated to a peer)."""
    per_guest, out = _per_guest(tmp_path, capsys, "--json", after_shutdown=True)
    # Counted: 77 (38 for the guest's row, the rest validating its entry of the record, which
    # is untrusted); each entry parsed three times, with the closed sets rebuilt each time: 172.
    assert per_guest["python"] <= 90, per_guest
    assert len(json.loads(out)["guests"]) == MANY
