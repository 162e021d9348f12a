"""A guest's event said once: one value, rendered by each sink (the summary, the journal with its
MGSAVE_* fields, the record), none reading another's text."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from libmgsave import journal
from libmgsave.events import RENDERINGS, EventKind, Events, GuestEvent, Journal, Record, Summary, summary_line
from libmgsave.inventory import GuestInfo, GuestState
from libmgsave.outcomes import GuestResult, Outcome, StepResult
from libmgsave.plan import Action, plan_shutdown
from libmgsave.policyfile import parse_policy
from libmgsave.state import RecordWriter, guest_record_key

URI = "test:///default"
DB1 = GuestInfo(URI, "db1", "00000000-0000-4000-8000-000000000001", GuestState.RUNNING, memory_kib=262144)


def _result() -> GuestResult:
    policy = parse_policy("version: 1\ndefaults:\n  on_shutdown: [save, shutdown, poweroff]\n", "policy.yaml")
    (planned,) = plan_shutdown([DB1], policy, state_dir=Path("/nonexistent")).active
    return GuestResult(planned, Outcome.FAILED)


@pytest.fixture
def sent():
    """What the journal gets: the mgsave logger's records, as the journal handler sends them."""
    entries: list[dict] = []
    logger = logging.getLogger(journal.LOGGER_NAME)
    handler = journal.JournalHandler(lambda **fields: entries.append(fields))
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    yield entries
    logger.removeHandler(handler)
    logger.setLevel(level)


def test_every_kind_of_event_has_its_texts_and_they_render(sent):
    """A closed set: each kind is in the table, and each sink renders an event of it."""
    assert set(RENDERINGS) == set(EventKind)
    full = GuestEvent(EventKind.NOTE, DB1, action=Action.SAVE, why="why", what="what", peer="qemu+ssh://peer/system",
                      path="/images/x.save", seconds=1.5, bytes=1 << 20, number=3, outcome=Outcome.SAVED)
    for kind, rendering in RENDERINGS.items():
        if kind is EventKind.SETTLED:
            continue
        result, before = _result(), len(sent)
        Events().send(GuestEvent(**{**full.__dict__, "kind": kind}), result)
        assert len(result.messages) == (rendering.summary is not None), kind
        assert len(sent) - before == (rendering.log is not None), kind
        assert result.messages == [summary_line(GuestEvent(**{**full.__dict__, "kind": kind}))] or not result.messages


def test_one_event_gives_the_summary_line_and_one_journal_entry_with_its_fields(sent):
    result = _result()
    Events().say(result, EventKind.SKIPPED_FOR_TIME, action=Action.SAVE)
    assert result.messages == ["deadline reached: save skipped"]
    [entry] = sent
    assert entry["MESSAGE"] == "db1: shutdown deadline reached, skipping save"
    assert entry["PRIORITY"] == "4"
    assert (entry["MGSAVE_GUEST"], entry["MGSAVE_UUID"], entry["MGSAVE_CONNECTION"]) == (DB1.name, DB1.uuid, URI)
    assert (entry["MGSAVE_ACTION"], entry["MGSAVE_RESULT"]) == ("save", "skipped")


def test_a_step_is_measured_in_the_journal_and_not_in_the_summary(sent):
    result = _result()
    Events().say(result, EventKind.STEP_DONE, action=Action.SAVE, seconds=2.25, bytes=3 << 20)
    assert result.messages == []
    [entry] = sent
    assert entry["MESSAGE"] == "db1: save ok in 2.2 s, 3.0 MiB"
    assert (entry["MGSAVE_RESULT"], entry["MGSAVE_SECONDS"], entry["MGSAVE_BYTES"]) == ("ok", "2.25", str(3 << 20))


def test_what_others_wrote_is_escaped_in_the_journal_and_kept_for_the_summary(sent):
    result = _result()
    error = "db1: refused\nmgsave: forged line"
    Events().say(result, EventKind.RESUME_FAILED, why=error, what="left in place")
    # the summary drops the guest's own name the error starts with; the journal keeps the whole error
    assert result.messages == ["resume failed: refused\nmgsave: forged line; image left in place"]
    [entry] = sent
    assert "\n" not in entry["MESSAGE"] and entry["MESSAGE"].startswith("db1: resuming failed (db1: refused")
    assert entry["PRIORITY"] == "3" and entry["MGSAVE_RESULT"] == "failed"


def test_the_settled_outcome_is_logged_with_its_message_id_and_written_to_the_record(sent, tmp_path):
    result = _result()
    result.outcome = Outcome.POWERED_OFF
    result.steps.append(StepResult(Action.POWEROFF, True, 1.0, 2.0))
    key = guest_record_key(*DB1.key)
    writer = RecordWriter.begin(tmp_path / "last-shutdown.json", "shutdown", {key: {"outcome": "pending"}})
    events = Events([Summary(), Journal(), Record(writer, lambda r: guest_record_key(*r.plan.key))])
    events.say(result, EventKind.SAVE_DROPPED, why="save skipped: no room")
    events.settled(result)
    writer.finish()
    [dropped, settled] = sent
    assert (dropped["MGSAVE_ACTION"], dropped["MGSAVE_RESULT"]) == ("save", "skipped")
    assert settled["MESSAGE_ID"] == journal.GUEST_DEGRADED and settled["MGSAVE_OUTCOME"] == "powered-off"
    assert settled["MESSAGE"] == "db1: powered-off, degraded: did not get its first choice (first choice: save)"
    entry = json.loads((tmp_path / "last-shutdown.json").read_text())["guests"][key]
    assert entry["outcome"] == "powered-off" and entry["messages"] == ["save skipped: no room"]
    assert [s["action"] for s in entry["steps"]] == ["poweroff"]


def test_an_event_without_a_guest_result_reaches_the_journal_alone(sent):
    Events().send(GuestEvent(EventKind.SAVE_ABORTING, DB1, why="save_timeout reached"))
    [entry] = sent
    assert entry["MESSAGE"] == "db1: aborting the save: save_timeout reached" and entry["MGSAVE_RESULT"] == "abort"
