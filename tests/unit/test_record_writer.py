"""Writing records (``state.writer``): the first write before anything else, later updates in
the background, the final one at once; a pass amending another's record; a write that fails
never stops the pass. Real files in tmp_path; the background writer is waited on through the
file it writes, with a generous bound."""

import json
import logging
import time

import pytest

from libmgsave import __version__
from libmgsave.state.writer import RecordWriter, os_error_text, write_json_atomic

BOUND = 30.0  # seconds: machines are loaded


def on_disk(path):
    return json.loads(path.read_text())


def wait_for(path, predicate):
    """The record at ``path`` once ``predicate`` holds for it (within BOUND)."""
    end = time.monotonic() + BOUND
    while True:
        data = on_disk(path)
        if predicate(data):
            return data
        assert time.monotonic() < end, f"the record never changed as expected: {data}"
        time.sleep(0.05)


@pytest.fixture
def clock(monkeypatch):
    now = [100.0]
    monkeypatch.setattr(time, "time", lambda: now[0])
    return now


def test_a_record_is_written_as_sorted_json_replacing_whatever_is_there(tmp_path):
    path = tmp_path / "a" / "b" / "last-boot.json"
    write_json_atomic(path, {"b": 1, "a": [2]})
    assert path.read_text() == '{\n "a": [\n  2\n ],\n "b": 1\n}\n'
    assert path.stat().st_mode & 0o777 == 0o600
    victim = tmp_path / "victim"
    victim.write_text("precious")
    path.unlink()
    path.symlink_to(victim)
    write_json_atomic(path, {"c": 3})
    assert victim.read_text() == "precious" and not path.is_symlink() and on_disk(path) == {"c": 3}


def test_a_pass_writes_its_record_first_then_in_the_background_then_at_its_end(tmp_path, clock):
    path = tmp_path / "state" / "last-shutdown.json"
    writer = RecordWriter.begin(path, "shutdown", {"k1": {"outcome": "pending"}}, extra={"boot_id": "b"})
    assert on_disk(path) == {"format": "mgsave-state", "kind": "shutdown", "version": 1, "mgsave_version": __version__,
                             "started": 100.0, "finished": None, "guests": {"k1": {"outcome": "pending"}},
                             "boot_id": "b"}
    assert writer._flusher.is_alive() and writer.error is None
    # a pass that dies without finishing does not hang the process on its writer
    assert writer._flusher.daemon and writer._flusher.name == "mgsave-record"
    writer.update_guest("k1", outcome="saved")
    writer.update_guest("k2", outcome="saved")  # a guest it had no entry for
    wait_for(path, lambda d: d["guests"] == {"k1": {"outcome": "saved"}, "k2": {"outcome": "saved"}})
    writer.add_guest("k3", {"outcome": "pending"})
    wait_for(path, lambda d: "k3" in d["guests"])
    assert on_disk(path)["guests"]["k3"] == {"outcome": "pending"}, "the record's own pass marks nothing"
    clock[0] = 200.0
    writer.finish(ok=True)
    assert not writer._flusher.is_alive()
    data = on_disk(path)
    assert (data["started"], data["finished"], data["ok"]) == (100.0, 200.0, True)
    assert writer.FLUSH_EVERY == 0.5


def test_a_pass_amending_a_record_keeps_the_other_passes_times_and_entries(tmp_path, clock):
    path = tmp_path / "last-shutdown.json"
    record = {"format": "mgsave-state", "kind": "shutdown", "version": 1, "started": 50.0, "finished": 60.0,
              "guests": {"k1": {"outcome": "saved"}}}
    writer = RecordWriter.amend(path, "shutdown", record, {"k2": {"outcome": "pending"}}, by="evacuate",
                                extra={"boot_id": "b"})
    marks = {"recorded_by": "evacuate", "recorded": 100.0}
    assert on_disk(path) == {**record, "evacuate": {"started": 100.0, "finished": None, "boot_id": "b"},
                             "guests": {"k1": {"outcome": "saved"}, "k2": {"outcome": "pending", **marks}}}
    assert record["guests"] == {"k1": {"outcome": "saved"}} and "evacuate" not in record, "not changed in place"
    writer.add_guest("k3", {"outcome": "pending"})
    wait_for(path, lambda d: d["guests"].get("k3") == {"outcome": "pending", **marks})
    clock[0] = 150.0
    writer.finish(ok=False)
    data = on_disk(path)
    assert (data["started"], data["finished"]) == (50.0, 60.0) and "ok" not in data
    assert data["evacuate"] == {"started": 100.0, "finished": 150.0, "boot_id": "b", "ok": False}


def test_a_pass_amending_no_record_writes_one_of_its_own(tmp_path, clock):
    path = tmp_path / "last-shutdown.json"
    writer = RecordWriter.amend(path, "shutdown", None, {"k": {"outcome": "pending"}}, by="return",
                                extra={"boot_id": "b"})
    writer.finish()
    assert on_disk(path) == {
        "format": "mgsave-state", "kind": "shutdown", "version": 1, "mgsave_version": __version__,
        "started": 100.0, "finished": 100.0, "boot_id": "b",
        "return": {"started": 100.0, "finished": 100.0, "boot_id": "b"},
        "guests": {"k": {"outcome": "pending", "recorded_by": "return", "recorded": 100.0}}}
    other = RecordWriter.amend(tmp_path / "other.json", "shutdown", None, {}, by="return")
    other.finish()
    assert "boot_id" not in on_disk(tmp_path / "other.json")


def test_a_write_that_fails_is_said_once_and_the_pass_goes_on_until_one_succeeds(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="mgsave")
    blocker = tmp_path / "state"
    blocker.write_text("")  # the state directory cannot be made: a file is in its place
    path = blocker / "last-shutdown.json"
    writer = RecordWriter.begin(path, "shutdown", {})
    assert writer.error == f"File exists: {blocker}"
    assert len(caplog.records) == 1, "the first failure is said"
    writer.flush()
    assert [(r.levelno, r.getMessage()) for r in caplog.records] == [
        (logging.ERROR, f"cannot write the shutdown record {path} (File exists: {blocker}); the pass goes on")]
    blocker.unlink()
    writer.finish()
    assert writer.error is None and on_disk(path)["finished"] is not None
    assert caplog.records[-1].levelno == logging.INFO
    assert caplog.records[-1].getMessage() == f"the shutdown record {path} is written again"
    assert len(caplog.records) == 2


def test_a_failed_write_says_what_failed_on_which_file():
    assert os_error_text(OSError(28, "No space left on device", "/var/lib/mgsave/x")) == \
        "No space left on device: /var/lib/mgsave/x"
    assert os_error_text(OSError(28, "No space left on device")) == "No space left on device"
    assert os_error_text(OSError("odd")) == "odd"


def test_a_pass_amending_a_record_it_cannot_write_says_which_record(tmp_path, caplog):
    (tmp_path / "state").write_text("")
    path = tmp_path / "state" / "last-shutdown.json"
    writer = RecordWriter.amend(path, "shutdown", None, {}, by="evacuate")
    assert caplog.records[-1].getMessage() == \
        f"cannot write the shutdown record {path} (File exists: {tmp_path / 'state'}); the pass goes on"
    assert writer.kind == "shutdown"
    writer.finish()
