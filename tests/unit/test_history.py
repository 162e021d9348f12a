"""The bottom floor's model of what happened (``history``): record entries read their own JSON,
validated, and write it back byte for byte; the closed sets every layer speaks."""

from __future__ import annotations

import json

import pytest

from libmgsave import history, state
from libmgsave.history import Action, EntryError, GuestEntry, Outcome, PassKind, RecordedPass, RecordedBy
from libmgsave.inventory import GuestInfo, GuestState
from libmgsave.plan import plan_shutdown
from libmgsave.policyfile import parse_policy
from libmgsave.state.carry_over import settle_interrupted
from libmgsave.state.writer import write_json_atomic

URI = "test:///default"
UUID = "6695eb01-f6a4-8304-79aa-97f2502e193f"
KEY = f"{URI} {UUID}"

# Entries as the passes have written them (and as they lie in records on hosts): a shutdown
# pass's pending entry of a persistent guest (its image null), a saved one with steps and
# waits, a boot pass's entry of a restored guest (image_used), an evacuate's, and one with a
# field this mgsave does not know.
WRITTEN = [
    {"connection": URI, "name": "web", "uuid": UUID, "outcome": "pending", "persistent": True, "state": "running",
     "memory_kib": 1048576, "title": "", "metadata": {}, "image": None, "planned": ["save", "shutdown"]},
    {"connection": URI, "name": "web", "uuid": UUID, "outcome": "saved", "persistent": True, "state": "running",
     "memory_kib": 1024, "title": "t", "metadata": {"role": "db"}, "image": None, "planned": ["save"],
     "steps": [{"action": "save", "ok": True, "started": 1700000000.5, "finished": 1700000002,
                "seconds": 1.5, "bytes": 123, "error": None}],
     "waits": [{"kind": "slot", "started": 1700000000, "finished": 1700000000.5, "seconds": 0.5}],
     "started": 1700000000, "finished": 1700000002.25, "bytes": 123, "messages": ["a note"]},
    {"connection": URI, "name": "t", "uuid": UUID, "outcome": "restored", "ok": True, "messages": [],
     "started": 1.0, "finished": 2.0, "bytes": 0, "steps": [], "waits": [], "image_used": True},
    {"connection": URI, "name": "web", "uuid": UUID, "outcome": "migrated", "peer": "qemu+ssh://b/system",
     "recorded_by": "evacuate", "recorded": 5.5, "note": "n"},
    {"connection": URI, "name": "web", "uuid": UUID, "outcome": "saved", "from_a_later_mgsave": {"x": [1]}},
]


def as_written(entry: dict) -> str:
    return json.dumps(entry, indent=1, sort_keys=True)


@pytest.mark.parametrize("raw", WRITTEN, ids=["pending", "saved", "boot-restored", "evacuate", "unknown-field"])
def test_an_entry_read_and_written_again_keeps_its_bytes(raw):
    assert as_written(GuestEntry.from_dict(json.loads(as_written(raw)), KEY).to_dict()) == as_written(raw)


def test_an_entry_declares_every_field_the_passes_write():
    restored = GuestEntry.from_dict(WRITTEN[2])
    assert restored.image_used is True and restored.outcome is Outcome.RESTORED
    evacuated = GuestEntry.from_dict(WRITTEN[3])
    assert evacuated.recorded_by is RecordedBy.EVACUATE and evacuated.migrated_to == "qemu+ssh://b/system"
    assert GuestEntry.from_dict(WRITTEN[1]).steps[0]["action"] == "save"


def test_a_change_is_written_and_nothing_else_is_added():
    entry = GuestEntry.from_dict(WRITTEN[0]).replace(outcome=Outcome.SAVED, note="done")
    assert entry.to_dict() == {**WRITTEN[0], "outcome": "saved", "note": "done"}
    assert GuestEntry.of(connection=URI, name="x", uuid=UUID, outcome="saved").to_dict() == {
        "connection": URI, "name": "x", "uuid": UUID, "outcome": "saved"}


@pytest.mark.parametrize("change, problem", [
    ({"memory_kib": -1}, "'memory_kib' is -1, not a size"),
    ({"outcome": "eaten"}, "'outcome' is 'eaten', not an outcome mgsave knows"),
    ({"uuid": "nope"}, "'uuid' is 'nope', not a UUID"),
    ({"steps": [{"action": "save"}]}, "'steps' is [{'action': 'save'}], not a list of steps"),
    ({"recorded_by": []}, "'recorded_by' is [], not a pass that adds entries (evacuate, return)"),
    ({"image_used": "yes"}, "'image_used' is 'yes', not true or false"),
])
def test_an_entry_is_validated_on_read_and_the_problem_names_the_field(change, problem):
    with pytest.raises(EntryError) as caught:
        GuestEntry.from_dict({**WRITTEN[0], **change}, KEY)
    assert str(caught.value) == problem


def test_an_entry_filed_under_another_key_is_refused():
    with pytest.raises(EntryError, match="filed under the wrong key"):
        GuestEntry.from_dict(WRITTEN[0], f"{URI} 00000000-0000-0000-0000-000000000000")


def test_a_record_whose_recorded_by_is_not_a_word_is_untrusted_not_a_crash(tmp_path):
    """A hand-edited ``recorded_by: []`` made the reader raise TypeError (a list in a set
    lookup), which no pass catches: it is a record that cannot be trusted, like any other."""
    path = tmp_path / state.SHUTDOWN_RECORD
    write_json_atomic(path, {"format": state.RECORD_FORMAT, "kind": "shutdown", "version": state.RECORD_VERSION,
                             "started": 1.0, "guests": {KEY: {**WRITTEN[3], "recorded_by": []}}})
    with pytest.raises(state.RecordError, match="'recorded_by' is \\[\\]"):
        state.read_record(path, "shutdown")


def test_settling_an_interrupted_save_changes_only_its_outcome_and_note():
    """The carry-over reads an entry typed and writes it back: every other field as it was."""
    guest = GuestInfo(connection=URI, name="web", uuid=UUID, state=GuestState.SHUTOFF, persistent=True,
                      has_managed_save=True)
    settled = settle_interrupted({KEY: WRITTEN[0]}, {KEY: guest}, ())
    assert settled[KEY] == {**WRITTEN[0], "outcome": "saved",
                            "note": "its save, begun by an interrupted pass, completed"}


def test_a_recorded_pass_holds_typed_entries():
    record = RecordedPass.from_dict({"kind": "shutdown", "started": 3.0, "guests": {KEY: WRITTEN[3]}})
    assert record.guests[KEY].outcome is Outcome.MIGRATED and record.started == 3.0


def test_the_closed_sets_are_the_bottom_floors_and_the_old_names_still_work():
    from libmgsave.outcomes import Outcome as OutcomeThere, Severity, WaitKind
    from libmgsave.plan import DEADLINE_RESERVE, Action as ActionThere, PassKind as PassKindThere

    assert (OutcomeThere, ActionThere, PassKindThere) == (Outcome, Action, PassKind)
    assert (Severity, WaitKind) == (history.Severity, history.WaitKind) and DEADLINE_RESERVE > 0
    assert [str(k) for k in PassKind] == ["shutdown", "boot", "evacuate", "return"]
    assert Outcome.SAVED_TO_FILE.step is Action.SAVE_TO_FILE and Outcome.STAYED.step is None


def test_a_transient_guests_save_file_is_planned_where_the_records_allow_it(tmp_path):
    """The shutdown plan names the one path a record may give (``saveimages``), without the state package."""
    info = GuestInfo(connection=URI, name="t", uuid=UUID.upper(), state=GuestState.RUNNING, persistent=False)
    (entry,) = plan_shutdown([info], parse_policy("version: 1\n", "policy.yaml"), state_dir=tmp_path).active
    assert entry.image == str(tmp_path / "images" / f"{UUID}.save")


BATTERY = [{"step": "deadline", "at": 1700000000.25, "runtime_seconds": 900, "seconds_left": 885.0,
            "why": "the UPS ups1@localhost is on battery", "moved": []},
           {"step": "moved", "at": 1700000003, "runtime_seconds": 43.5, "seconds_left": 28.5, "why": "fell",
            "moved": []},
           {"step": "replanned", "at": 1700000003.5, "runtime_seconds": None, "seconds_left": 28,
            "why": "re-planned", "moved": ["low-1", "low-2"]}]


def test_a_records_decisions_on_the_battery_read_typed_and_write_back_as_they_were():
    decisions = history.battery_decisions(json.loads(json.dumps(BATTERY)))
    assert [d.step for d in decisions] == list(history.BatteryStep)
    assert decisions[2].moved == ("low-1", "low-2") and decisions[2].runtime is None
    assert json.dumps([d.to_dict() for d in decisions]) == json.dumps(BATTERY)


def test_a_record_without_a_battery_reads_as_before_and_a_bad_one_is_refused():
    assert history.battery_decisions(None) == ()
    assert RecordedPass.from_dict({"guests": {}, "kind": "shutdown", "started": 1.0}).battery == ()
    assert RecordedPass.from_dict({"guests": {}, "battery": BATTERY}).battery[0].runtime == 900
    with pytest.raises(EntryError, match="'battery'"):
        history.battery_decisions([{**BATTERY[0], "at": "yesterday"}])
    with pytest.raises(EntryError, match="'battery'"):
        history.battery_decisions({"step": "deadline"})
