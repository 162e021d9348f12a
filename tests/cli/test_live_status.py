"""STATUS= (and a terminal's live line) say who waits for what during the boot pass."""

from __future__ import annotations

import os

from libmgsave import cli, notify
from tests.testdriver import URI, define, hv  # noqa: F401


def test_the_boot_pass_says_who_waits_for_whom(hv, tmp_path, monkeypatch):  # noqa: F811
    define(hv, "db", "web")
    policy = tmp_path / "policy.yaml"
    policy.write_text("version: 1\nguests:\n  - match: {name: db}\n    ready: 2s\n"
                      "  - match: {name: web}\n    after: [db]\n")
    os.chmod(policy, 0o644)
    common = ["--connect", URI, "--state-dir", str(tmp_path / "state"), "--policy", str(policy)]
    assert cli.main(common + ["shutdown"]) == 0
    sent: list[str] = []
    monkeypatch.setattr(notify, "status", sent.append)
    assert cli.main(common + ["boot"]) == 0
    waits = [s for s in sent if "waiting:" in s]
    assert any("db for its ready delay" in s for s in waits), sent
    assert any("web for db" in s for s in waits), sent
    assert all(s.startswith("starting ") for s in waits)
