"""What each save records of what resuming it needs, and a held image checked against the
hypervisor installed now, on libvirt's test driver: the record's needs, a QEMU changed since
the save said by ``status``, ``plan boot`` and ``check`` (text and JSON), and a resume that
fails after that change naming it in the summary and in ``mgsave report``.

The test driver offers no machine types and cannot read a saved image's definition, so the
"will not resume" verdict is the rig's (tests/test_restorable_rig.py) and the plan's
(tests/unit/test_restorable.py); here the versions change.
"""

from __future__ import annotations

import json

import pytest

from libmgsave import state
from libmgsave.errors import ExitCode
from libmgsave.state.writer import write_json_atomic
from tests.cli.conftest import policy_runner
from tests.testdriver import hv  # noqa: F401

GUEST = ("<domain type='test'><name>db</name><memory>262144</memory>"
         "<os><type arch='x86_64' machine='pc-i440fx-7.2'>hvm</type></os>"
         "<cpu mode='custom'><model>qemu64</model></cpu>"
         "<devices><video><model type='cirrus'/></video></devices></domain>")
CHANGED = "QEMU changed since the save (0.0.1 -> 0.0.2): expected to resume"


@pytest.fixture
def mgsave(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("NO_COLOR", "1")
    monkeypatch.setenv("COLUMNS", "250")
    run = policy_runner(tmp_path, capsys, "version: 1\n", stderr=True)
    run.record = run.state_dir / state.SHUTDOWN_RECORD
    return run


def saved_by_an_older_qemu(mgsave) -> None:
    """The record's entries as a QEMU one version older would have written them."""
    record = json.loads(mgsave.record.read_text())
    for entry in record["guests"].values():
        entry["needs"]["qemu_version"] -= 1
    write_json_atomic(mgsave.record, record)


def test_every_save_records_what_resuming_it_needs_read_from_libvirt(hv, mgsave):
    hv.defineXML(GUEST).create()
    assert mgsave("shutdown")[0] == ExitCode.OK
    [entry] = json.loads(mgsave.record.read_text())["guests"].values()
    assert entry["needs"] == {"qemu_version": hv.getVersion(), "libvirt_version": hv.getLibVersion(),
                              "machine": "pc-i440fx-7.2", "cpu_mode": "custom", "cpu_model": "qemu64",
                              "devices": ["video:cirrus"]}
    # the same hypervisor: nothing to say
    code, out, _ = mgsave("status")
    assert code == ExitCode.OK and "saved image:" not in out, out
    assert json.loads(mgsave("status", "--json")[1])["guests"][0]["resume"]["verdict"] == "resumes"


def test_a_qemu_changed_since_the_save_is_said_by_status_plan_and_check(hv, mgsave):
    hv.defineXML(GUEST).create()
    assert mgsave("shutdown")[0] == ExitCode.OK
    saved_by_an_older_qemu(mgsave)
    assert f"saved image: db: {CHANGED}" in mgsave("status")[1]
    assert json.loads(mgsave("status", "--json")[1])["guests"][0]["resume"] == {
        "verdict": "changed", "why": CHANGED, "advice": None}
    code, out, _ = mgsave("plan", "boot")
    assert code == ExitCode.OK and f"note: db: {CHANGED}" in out, out
    [guest] = json.loads(mgsave("plan", "boot", "--json")[1])["plans"][0]["guests"]
    assert guest["actions"] == ["resume"] and guest["changed_since_save"] == CHANGED
    code, out, _ = mgsave("check", "--strict")
    assert f"saved image: db: {CHANGED}" in out, out
    assert "warning: saved image" not in out, "expected to resume: no warning"
    [image] = json.loads(mgsave("check", "--json")[1])["saved_images"]
    assert image["name"] == "db" and image["verdict"] == "changed"


def test_a_resume_that_fails_after_a_change_names_it_in_the_summary_and_the_report(hv, mgsave, monkeypatch):
    from libmgsave.hypervisor import Guest

    hv.defineXML(GUEST).create()
    assert mgsave("shutdown")[0] == ExitCode.OK
    saved_by_an_older_qemu(mgsave)

    def refused(self, *args, **kwargs):  # the test driver resumes anything: a refusal injected
        raise RuntimeError("no such machine")

    monkeypatch.setattr(Guest, "start", refused)
    code, out, err = mgsave("boot")
    summary = " ".join(out[out.index("Summary of the boot pass"):].split())
    assert f"resume failed: resume: internal error: RuntimeError('no such machine') (after an upgrade: " \
           f"{CHANGED})" in summary, summary
    report = mgsave("report")[1]
    assert f"x db: resume failed:" in report and f"(after an upgrade: {CHANGED})" in report, report
