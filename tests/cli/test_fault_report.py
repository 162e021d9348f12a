"""Every problem is reported loudly: what the journal receives when things go wrong.

mgsave's log lines carry structured fields (MGSAVE_GUEST, MGSAVE_UUID, MGSAVE_CONNECTION,
MGSAVE_ACTION, MGSAVE_RESULT ...). Here the passes run in-process on libvirt's test driver with
the journal handler feeding a stand-in for systemd's journal, so the test sees each entry as
journald would store it: priority and fields.
"""

from __future__ import annotations

import json
import logging
import os

import libvirt
import pytest

from libmgsave import cli, journal, state
from libmgsave.errors import ExitCode
from tests.testdriver import URI, domain_xml, hv  # noqa: F401


@pytest.fixture
def entries():
    """The journal entries mgsave sends, as dicts of fields (MESSAGE, PRIORITY, MGSAVE_*...)."""
    sent: list[dict] = []
    handler = journal.JournalHandler(lambda **fields: sent.append(fields))
    logger = logging.getLogger(journal.LOGGER_NAME)
    logger.addHandler(handler)  # beside the stderr handler cli.main installs
    yield sent
    logger.removeHandler(handler)


def find(sent: list[dict], **fields) -> list[dict]:
    return [e for e in sent if all(e.get(k) == v for k, v in fields.items())]


def test_problems_at_shutdown_and_boot_reach_the_journal_with_guest_fields(hv, tmp_path, capsys, entries):
    state_dir = tmp_path / "state"
    policy = tmp_path / "policy.yaml"
    policy.write_text(f"version: 1\nconnections: ['{URI}']\n")
    os.chmod(policy, 0o644)
    hv.defineXML(domain_xml("late")).create()       # its save will not fit the deadline
    hv.createXML(domain_xml("transient", 65536), 0)  # its save fits, but its file cannot be written
    uuid = {d.name(): d.UUIDString() for d in hv.listAllDomains()}
    (state_dir / "images" / f"{uuid['transient']}.save").mkdir(parents=True)  # in the way

    # 11 s of deadline, 10 of them reserved: at the assumed 200 MB/s only the 64 MiB guest's save
    # fits; 'late' (256 MiB) goes straight to shutdown
    code = cli.main(["shutdown", "--state-dir", str(state_dir), "--policy", str(policy), "--deadline", "11"])
    capsys.readouterr()
    assert code == ExitCode.GUEST_DEGRADED  # both guests shut down: neither got its first choice, a save
    [skipped] = find(entries, MGSAVE_GUEST="late", MGSAVE_ACTION="save", MGSAVE_RESULT="skipped")
    assert skipped["PRIORITY"] == "4" and "save skipped" in skipped["MESSAGE"]
    assert skipped["MGSAVE_UUID"] == uuid["late"] and skipped["MGSAVE_CONNECTION"] == URI
    [failed] = find(entries, MGSAVE_GUEST="transient", MGSAVE_ACTION="save-to-file", MGSAVE_RESULT="failed")
    assert failed["PRIORITY"] == "4" and "images" in failed["MESSAGE"]
    assert find(entries, MGSAVE_GUEST="transient", MGSAVE_ACTION="shutdown", MGSAVE_RESULT="ok")
    for name, first_choice in (("late", "save"), ("transient", "save-to-file")):
        [degraded] = find(entries, MESSAGE_ID=journal.GUEST_DEGRADED, MGSAVE_GUEST=name)
        assert degraded["PRIORITY"] == "4" and degraded["MGSAVE_SEVERITY"] == "degraded"
        assert degraded["MGSAVE_OUTCOME"] == "shut-down" and degraded["MGSAVE_ACTION"] == "shutdown"
        assert f"first choice: {first_choice}" in degraded["MESSAGE"]
    [end] = find(entries, MESSAGE_ID=journal.PASS_END, MGSAVE_PASS="shutdown")
    assert end["PRIORITY"] == "4" and end["MGSAVE_SEVERITY"] == "degraded" and "2 degraded" in end["MESSAGE"]

    # boot: the record says 'late' was running, but it was never saved: its memory state is lost
    entries.clear()
    data = json.loads((state_dir / state.SHUTDOWN_RECORD).read_text())
    for entry in data["guests"].values():
        entry["outcome"] = "pending"
    (state_dir / state.SHUTDOWN_RECORD).write_text(json.dumps(data))
    code = cli.main(["boot", "--state-dir", str(state_dir), "--policy", str(policy)])
    capsys.readouterr()
    assert code == ExitCode.GUEST_DEGRADED
    [lost] = find(entries, MGSAVE_GUEST="late", MGSAVE_RESULT="booted-fresh")
    assert lost["PRIORITY"] == "3" and "memory state is lost" in lost["MESSAGE"]
    [degraded] = find(entries, MESSAGE_ID=journal.GUEST_DEGRADED, MGSAVE_GUEST="late")
    assert degraded["PRIORITY"] == "4" and degraded["MGSAVE_OUTCOME"] == "booted-fresh"
    [end] = find(entries, MESSAGE_ID=journal.PASS_END, MGSAVE_PASS="boot")
    assert end["PRIORITY"] == "4" and "1 degraded, 0 failed" in end["MESSAGE"]


def test_a_broken_policy_and_an_untrusted_record_are_errors_in_the_journal(hv, tmp_path, capsys, entries):
    state_dir = tmp_path / "state"
    state_dir.mkdir()
    (state_dir / state.SHUTDOWN_RECORD).write_text("{ not json")
    policy = tmp_path / "policy.yaml"
    policy.write_text(f"version: 1\nconnections: ['{URI}']\ndefaults:\n  autostart: sometimes\n")
    os.chmod(policy, 0o644)
    hv.defineXML(domain_xml("a")).create()
    code = cli.main(["shutdown", "--state-dir", str(state_dir), "--policy", str(policy)])
    capsys.readouterr()
    assert code == ExitCode.GUEST_DEGRADED  # the guest saved, but on the built-in defaults
    errors = [e["MESSAGE"] for e in entries if e["PRIORITY"] == "3"]
    assert any(f"{policy}:4:14" in m for m in errors), errors
    assert any("built-in safe defaults" in m for m in errors), errors
    assert any("ignoring the shutdown record" in m and "untrusted-" in m for m in errors), errors
    assert find(entries, MGSAVE_GUEST="a", MGSAVE_ACTION="save", MGSAVE_RESULT="ok")


def test_a_pass_on_the_last_valid_copy_of_the_policy_says_so_in_the_journal(hv, tmp_path, capsys, entries):
    state_dir, policy = tmp_path / "state", tmp_path / "policy.yaml"
    policy.write_text(f"version: 1\nconnections: ['{URI}']\ndefaults:\n  autostart: never\n")
    os.chmod(policy, 0o644)
    hv.defineXML(domain_xml("a")).create()
    assert cli.main(["check", "--state-dir", str(state_dir), "--policy", str(policy)]) == ExitCode.OK
    policy.write_text(policy.read_text().replace("never", "nevr"))
    code = cli.main(["shutdown", "--state-dir", str(state_dir), "--policy", str(policy)])
    capsys.readouterr()
    assert code == ExitCode.GUEST_DEGRADED
    errors = [e["MESSAGE"] for e in entries if e["PRIORITY"] == "3"]
    assert any(f"{policy}:4:14" in m for m in errors), errors
    assert any("carrying on with its last valid copy (kept " in m for m in errors), errors
    [end] = find(entries, MESSAGE_ID=journal.PASS_END)
    assert end["MGSAVE_POLICY"] == "last-valid-copy" and end["PRIORITY"] == "4"
    assert "it ran on the last valid copy of" in end["MESSAGE"]
