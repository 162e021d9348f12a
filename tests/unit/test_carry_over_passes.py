"""Which entries a new shutdown record starts with, across passes whose boot IDs differ or are
unknown, and with several entries an interrupted pass left 'pending'.

Records are written to disk and read back through the state's reader, as a pass reads them
(``read_back``); guests have fixed UUIDs (uuid5 of the name)."""

import json
import logging
import time
import uuid
from pathlib import Path

import pytest

from libmgsave.inventory import GuestInfo, GuestState
from libmgsave.plan import plan_shutdown
from libmgsave.policyfile import parse_policy
from libmgsave.state import RECORD_FORMAT, RECORD_VERSION, guest_record_key, read_record
from libmgsave.state.carry_over import files_to_check, pending_files, starting_entries, still_away

URI = "test:///default"
B1, B2 = "0f4c6e5c-0000-4000-8000-000000000001", "0f4c6e5c-0000-4000-8000-000000000002"
SAVED, OFF, RUNNING = "saved", "off", "running"
SETTLED = "its save, begun by an interrupted pass, completed"


def guest(name, now=SAVED, *, persistent=True):
    """``now``: running, off with its managed-save image (saved), or off without one."""
    return GuestInfo(connection=URI, name=name, uuid=str(uuid.uuid5(uuid.NAMESPACE_URL, name)),
                     state=GuestState.RUNNING if now == RUNNING else GuestState.SHUTOFF, persistent=persistent,
                     has_managed_save=now == SAVED, memory_kib=1024)


def image(state_dir: Path, name: str) -> str:
    return str(state_dir / "images" / f"{guest(name).uuid}.save")


def read_back(state_dir: Path, kind: str, started: float, boot_id: str | None, *entries, **more):
    """A record of ``kind`` holding ``entries`` ((name, outcome, extra fields) each), written into
    ``state_dir`` and read back as a pass reads it."""
    guests = {}
    for name, outcome, extra in entries:
        g = guest(name)
        guests[guest_record_key(URI, g.uuid)] = {"connection": URI, "name": name, "uuid": g.uuid,
                                                 "outcome": outcome, **extra}
    state_dir.mkdir(exist_ok=True)
    path = state_dir / f"last-{kind}.json"
    path.write_text(json.dumps({"format": RECORD_FORMAT, "kind": kind, "version": RECORD_VERSION,
                                "started": started, "boot_id": boot_id, "guests": guests, **more}))
    return read_record(path, kind)


def start(previous, boot, guests, *, boot_id, complete=()):
    """What the next shutdown record starts with: name -> (outcome, note)."""
    plan = plan_shutdown(guests, parse_policy("version: 1\n", "policy.yaml"), state_dir=Path("/s"))
    entries = starting_entries(previous, boot, plan, set(complete), boot_id=boot_id)
    return {e["name"]: (e["outcome"], e.get("note")) for e in entries.values()}


def _several_pending(tmp_path, boot_id):
    """A shutdown pass cut short: five entries left 'pending' (the first one never saved) after
    one it had finished."""
    return read_back(tmp_path, "shutdown", 10, boot_id, ("shut", "shut-down", {}),
                     ("never", "pending", {}), ("done", "pending", {}),
                     ("t-whole", "pending", {"image": image(tmp_path, "t-whole")}),
                     ("t-cut", "pending", {"image": image(tmp_path, "t-cut")}),
                     ("again", "pending", {}))


NOW = [guest("shut", OFF), guest("never", OFF), guest("done", SAVED), guest("again", RUNNING)]


def test_several_pending_entries_of_this_boot_are_each_settled_or_kept_pending(tmp_path):
    previous = _several_pending(tmp_path, B1)
    assert start(previous, None, NOW, boot_id=B1, complete=[image(tmp_path, "t-whole")]) == {
        "shut": ("shut-down", None),
        "never": ("pending", None),  # off, nothing saved: still what the record knew
        "done": ("saved", SETTLED),
        "t-whole": ("saved-to-file", SETTLED),
        "t-cut": ("pending", None),  # its file was cut short
        "again": ("pending", None),  # running again: this pass's own entry
    }


def test_several_pending_entries_of_an_earlier_boot_carry_only_the_guests_still_saved(tmp_path):
    previous = _several_pending(tmp_path, B1)
    assert start(previous, None, NOW, boot_id=B2, complete=[image(tmp_path, "t-whole")]) == {
        "done": ("saved", SETTLED),
        "t-whole": ("saved-to-file", SETTLED),
        "again": ("pending", None),
    }


def test_pending_and_saved_files_are_the_files_to_check(tmp_path):
    previous = read_back(tmp_path, "shutdown", 10, B1,
                         ("p", "pending", {"image": image(tmp_path, "p")}), ("q", "pending", {}),
                         ("f", "saved-to-file", {"image": image(tmp_path, "f")}),
                         ("s", "saved", {}), ("x", "failed", {"image": image(tmp_path, "x")}))
    assert files_to_check(previous) == [image(tmp_path, "p"), image(tmp_path, "f")]
    assert pending_files(previous) == [image(tmp_path, "p")]
    assert files_to_check(None) == [] and pending_files(None) == []


# -- boot IDs that change between passes, or are unknown ------------------------------------------


def _shut_down_and_saved(tmp_path, boot_id):
    return read_back(tmp_path, "shutdown", 10, boot_id, ("off", "shut-down", {}), ("kept", "saved", {}))


NOW_OFF = [guest("off", OFF), guest("kept", SAVED)]


def test_a_record_is_continued_whole_only_when_its_boot_id_is_this_boots(tmp_path):
    previous = _shut_down_and_saved(tmp_path, B1)
    whole = {"off": ("shut-down", None), "kept": ("saved", None)}
    assert start(previous, None, NOW_OFF, boot_id=B1) == whole
    # another boot: only the guest still away is carried; the one shut down (and maybe stopped
    # by the admin since) is not started again
    assert start(previous, None, NOW_OFF, boot_id=B2) == {"kept": ("saved", None)}


def test_an_unknown_boot_id_is_never_this_boot(tmp_path):
    """No /proc boot ID now, none in the record: nothing says they are of the same boot."""
    previous = _shut_down_and_saved(tmp_path, None)
    assert start(previous, None, NOW_OFF, boot_id=None) == {"kept": ("saved", None)}
    assert start(_shut_down_and_saved(tmp_path, B1), None, NOW_OFF, boot_id=None) == {"kept": ("saved", None)}
    assert start(_shut_down_and_saved(tmp_path, None), None, NOW_OFF, boot_id=B1) == {"kept": ("saved", None)}


def test_a_boot_pass_of_the_same_boot_since_the_record_ends_its_continuation(tmp_path):
    """``mgsave boot`` run by hand after a shutdown pass of this boot: the record is not continued
    whole, and what that boot pass did decides which guests are still away."""
    previous = _shut_down_and_saved(tmp_path, B1)
    boot = read_back(tmp_path, "boot", 20, B1, ("off", "skipped", {}), ("kept", "left-off", {}), interrupted=None)
    assert start(previous, boot, NOW_OFF, boot_id=B1) == {}
    stopped = read_back(tmp_path, "boot", 20, B1, ("off", "interrupted", {}), ("kept", "interrupted", {}),
                        interrupted="SIGTERM")
    assert start(previous, stopped, NOW_OFF, boot_id=B1) == {"off": ("shut-down", None), "kept": ("saved", None)}


def test_a_boot_pass_that_began_when_the_record_did_ran_no_later(tmp_path):
    previous = _shut_down_and_saved(tmp_path, B1)
    boot = read_back(tmp_path, "boot", 10, B1, ("off", "started", {}), ("kept", "resumed", {}))
    assert start(previous, boot, NOW_OFF, boot_id=B1) == {"off": ("shut-down", None), "kept": ("saved", None)}


def test_boot_ids_changing_at_every_pass_carry_a_saved_guest_until_a_boot_pass_brings_it_back(tmp_path):
    first = read_back(tmp_path, "shutdown", 10, B1, ("kept", "saved", {}))
    # boot 2: its boot pass died before it wrote a record; the shutdown of boot 2 carries the guest
    assert start(first, None, [guest("kept")], boot_id=B2) == {"kept": ("saved", None)}
    # a boot record of boot 1, older than the shutdown: no boot pass since, still carried
    old = read_back(tmp_path, "boot", 5, B1, ("kept", "resumed", {}))
    assert start(first, old, [guest("kept")], boot_id=B2) == {"kept": ("saved", None)}
    # boot 2's pass resumed it and it runs: this pass's own entry only
    back = read_back(tmp_path, "boot", 20, B2, ("kept", "resumed", {}))
    assert start(first, back, [guest("kept", RUNNING)], boot_id=B2) == {"kept": ("pending", None)}


def test_a_guest_running_again_is_not_carried_whatever_its_entry_says(tmp_path):
    previous = read_back(tmp_path, "shutdown", 10, B1, ("kept", "saved", {}),
                         ("t", "saved-to-file", {"image": image(tmp_path, "t")}))
    boot = read_back(tmp_path, "boot", 20, B2, ("kept", "interrupted", {}), ("t", "interrupted", {}),
                     interrupted="SIGTERM")
    # the transient guest runs again (restored by hand): its file is not carried
    now = [guest("kept", SAVED), GuestInfo(connection=URI, name="t", uuid=guest("t").uuid, state=GuestState.RUNNING,
                                           persistent=False, memory_kib=1024)]
    result = start(previous, boot, now, boot_id=B2, complete=[image(tmp_path, "t")])
    assert result == {"kept": ("saved", None), "t": ("pending", None)}


def test_a_guest_running_now_is_not_still_away_even_when_a_stopped_boot_pass_never_reached_it(tmp_path):
    previous = read_back(tmp_path, "shutdown", 10, B1, ("up", "shut-down", {}), ("down", "shut-down", {}))
    boot = read_back(tmp_path, "boot", 20, B2, ("up", "interrupted", {}), ("down", "interrupted", {}),
                     interrupted="SIGTERM")
    now = {guest_record_key(URI, g.uuid): g for g in (guest("up", RUNNING), guest("down", OFF))}
    assert list(still_away(previous, boot, now, ())) == [guest_record_key(URI, guest("down").uuid)]


@pytest.fixture
def utc(monkeypatch):
    """The journal's lines give a record's local time: UTC here, so that they can be compared."""
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def test_the_journal_says_which_record_is_continued_and_why_each_guest_is_carried(tmp_path, caplog, utc):
    caplog.set_level(logging.INFO, logger="mgsave")
    previous = read_back(tmp_path, "shutdown", 10, B1, ("kept", "saved", {}), ("done", "pending", {}),
                         ("t", "saved-to-file", {"image": image(tmp_path, "t")}), ("away", "migrated",
                                                                                   {"peer": "qemu+ssh://p/system"}))
    now = [guest("kept"), guest("done")]
    start(previous, None, now, boot_id=B1, complete=[image(tmp_path, "t")])
    assert [r.getMessage() for r in caplog.records] == [
        "done: found saved by the interrupted pass",
        "continuing the shutdown record of 1970-01-01 00:00:10 (no boot since)"]
    caplog.clear()
    start(previous, None, now, boot_id=B2, complete=[image(tmp_path, "t")])
    assert [r.getMessage() for r in caplog.records] == [
        "done: found saved by the interrupted pass",
        "not continuing the shutdown record of 1970-01-01 00:00:10: it is of an earlier boot of the host; keeping "
        "the guests still away",
        "kept: carried over from the shutdown record of 1970-01-01 00:00:10: it is still saved (never resumed since)",
        "done: carried over from the shutdown record of 1970-01-01 00:00:10: it is still saved (never resumed since)",
        "t: carried over from the shutdown record of 1970-01-01 00:00:10: its save file is whole (never restored "
        "since)",
        "away: carried over from the shutdown record of 1970-01-01 00:00:10: it lives on qemu+ssh://p/system (not "
        "back since)"]
    caplog.clear()
    boot = read_back(tmp_path, "boot", 20, B1, ("kept", "interrupted", {}), interrupted="SIGTERM")
    start(previous, boot, [guest("kept", OFF)], boot_id=B1)
    assert [r.getMessage() for r in caplog.records] == [
        "not continuing the shutdown record of 1970-01-01 00:00:10: a boot pass ran since; keeping the guests "
        "still away",
        "kept: carried over from the shutdown record of 1970-01-01 00:00:10: the boot pass since was stopped before "
        "it reached it",
        "away: carried over from the shutdown record of 1970-01-01 00:00:10: it lives on qemu+ssh://p/system (not "
        "back since)"]


def test_only_a_migrated_entry_places_its_guest_on_a_peer(tmp_path):
    """A guest whose migration failed and that was shut down instead names the peer it tried:
    it is not away on it."""
    previous = read_back(tmp_path, "shutdown", 10, B1, ("tried", "shut-down", {"peer": "qemu+ssh://p/system"}),
                         ("went", "migrated", {"peer": "qemu+ssh://p/system"}), ("nowhere", "migrated", {}))
    assert start(previous, None, [guest("tried", OFF)], boot_id=B2) == {"went": ("migrated", None)}
