"""Text output that tells the truth, in one spelling: a setting as the policy spells it, plurals,
binary units (bytes exact only in JSON), the deadline a plan was made for, a dry run's estimates
marked as such, and a failed step said once, without the guest's name twice."""

from __future__ import annotations

import logging
import os

import pytest

from libmgsave.errors import ExitCode
from tests.cli.conftest import policy_runner
from tests.testdriver import define, domain_xml, hv  # noqa: F401

POLICY = """\
version: 1
defaults:
  save_timeout: 10m
guests:
  - match: {name: db}
    bypass_cache: true
    after: []
    ready: 30s
"""


@pytest.fixture
def mgsave(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("NO_COLOR", "1")
    return policy_runner(tmp_path, capsys, POLICY, stderr=True)


def _setting(out: str, name: str) -> str:
    (line,) = [line for line in out.splitlines() if line.split()[:1] == [name]]
    return line.split(None, 1)[1].rsplit("  [", 1)[0].strip()  # the value, before its origin


def test_plan_verbose_spells_each_setting_as_the_policy_does(hv, mgsave):
    define(hv, "db")
    code, out, err = mgsave("plan", "--verbose", "shutdown", "db")
    assert code == ExitCode.OK, err
    assert _setting(out, "save_timeout") == "10min"
    assert _setting(out, "shutdown_timeout") == "2min"
    assert _setting(out, "bypass_cache") == "true" and _setting(out, "sync_time") == "false"
    assert _setting(out, "after") == "[]"
    assert _setting(out, "on_shutdown") == "[save, shutdown, poweroff]"
    assert _setting(out, "ready") == "30s"
    for python in ("600.0", "True", "False", "120.0"):
        assert python not in out, python


def test_kept_files_are_counted_in_words_and_sized_in_binary_units(hv, mgsave, caplog):
    failed = mgsave.state_dir / "failed-images"
    failed.mkdir(parents=True, mode=0o700)
    os.chmod(mgsave.state_dir, 0o700)
    (failed / "db-20260101-000000.save").write_bytes(b"x" * 3_500_000)
    code, out, err = mgsave("images", "list")
    assert code == ExitCode.OK, err
    assert "kept: 1 file, 3.3 MiB" in out and "1 files" not in out
    row = next(line for line in out.splitlines() if line.startswith("failed-images/"))
    assert " old" not in row and row.split()[-1] == "s", row  # the AGE column: "12 s", "under 1 s"
    with caplog.at_level(logging.INFO, logger="mgsave"):
        code, out, err = mgsave("images", "remove", "failed-images/db-20260101-000000.save")
    assert code == ExitCode.OK, err
    assert "(3.3 MiB)" in out + err and "3500000" not in out + err


def test_the_header_gives_the_deadline_the_plan_was_made_for(hv, mgsave):
    define(hv, "db")
    hv.defineXML(domain_xml("big", memory_kib=16 << 20)).create()  # about 86 s at the default rate
    code, out, err = mgsave("shutdown", "--dry-run", "--deadline", "60")
    text = " ".join(out.split())  # wrapped at 80 columns
    header = text[text.index("Shutdown plan"):][:120]
    assert "deadline 1 min 00 s;" in header, header
    assert "15 min" not in header and "900" not in header, header
    assert "up to 4 saves at once" in text
    # the note says the deadline as the header does, and why a save ending before it is too late
    assert "past the 1 min 00 s deadline less the 10 s kept for the fallback steps" in text, text


def test_a_dry_runs_summary_gives_the_plans_estimates_marked_as_such(hv, mgsave):
    hv.defineXML(domain_xml("big", memory_kib=16 << 20)).create()
    code, out, err = mgsave("shutdown", "--dry-run")
    assert code == ExitCode.OK, err
    summary = out[out.index("Summary of the shutdown pass"):].splitlines()
    row = next(line for line in summary if line.lstrip().startswith("big"))
    assert "~" in row and "(est.)" in row and "~16.0 GiB (est.)" in row, row
    assert " 0.0 s" not in row and " 0.00 s" not in row, row
    plan_row = next(line for line in out.splitlines() if line.lstrip().startswith("big"))
    assert plan_row.endswith(row.split("~")[1].split(" (est.)")[0]), (plan_row, row)  # the plan's SAVE ENDS
    assert any("(est.)" in line and "estimate" in line for line in summary), "what (est.) means"


def test_a_failed_step_is_said_once_without_the_name_twice(hv, mgsave):
    dom = hv.createXML(domain_xml("transient"), 0)
    (mgsave.state_dir / "images" / f"{dom.UUIDString()}.save").mkdir(parents=True)  # a save file cannot go there
    code, out, err = mgsave("shutdown")
    assert code == ExitCode.GUEST_DEGRADED, err
    summary = " ".join(out[out.index("Summary of the shutdown pass"):].split())
    assert summary.count("save-to-file failed") == 1, summary
    assert "transient: save-to-file failed: saving to" in summary, summary
    assert "failed: transient:" not in summary, summary


def test_a_failed_resume_is_said_once_without_the_name_twice(hv, mgsave, monkeypatch):
    from libmgsave.hypervisor import Guest

    define(hv, "a")
    assert mgsave("shutdown")[0] == ExitCode.OK

    def refused(self, *args, **kwargs):  # the test driver resumes anything: a refusal injected
        raise RuntimeError("surprise")

    monkeypatch.setattr(Guest, "start", refused)
    code, out, err = mgsave("boot")
    assert code == ExitCode.GUEST_DEGRADED, err
    summary = " ".join(out[out.index("Summary of the boot pass"):].split())
    assert summary.count("RuntimeError('surprise')") == 1, summary
    assert "a: resume failed: resume: internal error" in summary and "failed: a:" not in summary, summary
