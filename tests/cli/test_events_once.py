"""A guest's event said once, on libvirt's test driver: the summary (``--json``), the record and
the journal each say it one time, the summary and the record in the same words."""

from __future__ import annotations

import json
import logging
import os

from libmgsave import cli, journal
from tests.testdriver import URI, domain_xml, hv  # noqa: F401


def test_each_event_is_said_once_in_each_sink(hv, tmp_path, capsys):
    sent: list[dict] = []
    handler = journal.JournalHandler(lambda **fields: sent.append(fields))
    logger = logging.getLogger(journal.LOGGER_NAME)
    logger.addHandler(handler)
    policy = tmp_path / "policy.yaml"
    policy.write_text(f"version: 1\nconnections: ['{URI}']\n")
    os.chmod(policy, 0o644)
    hv.defineXML(domain_xml("late")).create()  # its save does not fit the deadline: dropped up front
    hv.defineXML(domain_xml("quick", 65536)).create()
    try:
        cli.main(["shutdown", "--state-dir", str(tmp_path / "state"), "--policy", str(policy), "--deadline", "11",
                  "--json"])
    finally:
        logger.removeHandler(handler)
    summary = {g["name"]: g for g in json.loads(capsys.readouterr().out)["guests"]}
    record = json.loads((tmp_path / "state" / "last-shutdown.json").read_text())["guests"]
    late = summary["late"]
    [dropped] = [m for m in late["messages"] if m.startswith("save skipped")]
    assert [e["MESSAGE"] for e in sent if e.get("MGSAVE_GUEST") == "late" and e.get("MGSAVE_RESULT") == "skipped"] \
        == [f"late: {dropped}"]
    for name, guest in summary.items():
        [entry] = [e for e in record.values() if e["name"] == name]
        assert entry["messages"] == guest["messages"], name
        settled = [e for e in sent if e.get("MGSAVE_GUEST") == name and "MGSAVE_OUTCOME" in e]
        assert [e["MGSAVE_OUTCOME"] for e in settled] == [guest["outcome"]], name
