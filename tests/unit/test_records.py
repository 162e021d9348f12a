"""The records a pass leaves (``state.records``): the reasons a record is not trusted, each said
with the file; setting an untrusted one aside; the boot ID; the entries a pass writes. Real
files in tmp_path."""

import json
import logging
import os
import time
import uuid
from pathlib import Path

import pytest

from libmgsave import __version__
from libmgsave.inventory import GuestInfo, GuestState
from libmgsave.outcomes import GuestResult, Outcome, StepResult, Wait
from libmgsave.plan import Action, plan_shutdown
from libmgsave.policyfile import parse_policy
from libmgsave.history import WaitKind
from libmgsave.state import records
from libmgsave.state.records import (RecordError, boot_record, booted_since, current_boot_id, pending_entry,
                                     read_record, read_trusted, set_aside_untrusted, used_images)

URI = "test:///default"


def record(kind="shutdown", **changes) -> dict:
    data = {"format": "mgsave-state", "kind": kind, "version": 1, "started": 10.0, "guests": {}}
    return {**data, **changes}


def problem(path: Path, content, kind="shutdown") -> str:
    path.write_bytes(content if isinstance(content, bytes) else json.dumps(content).encode())
    with pytest.raises(RecordError) as why:
        read_record(path, kind)
    return str(why.value)


def test_each_reason_a_record_is_not_trusted_names_the_file(tmp_path):
    path = tmp_path / "last-shutdown.json"
    assert problem(path, b"\xff\xfe") == f"{path}: not valid JSON (not UTF-8 text); the file is corrupt"
    assert problem(path, b"{").startswith(f"{path}: not valid JSON (Expecting property name")
    assert problem(path, b"[" * 100000).startswith(f"{path}: not valid JSON (maximum recursion depth")
    assert problem(path, ["a list"]) == f"{path}: not an mgsave shutdown record"
    assert problem(path, record(format="other")) == f"{path}: not an mgsave shutdown record"
    assert problem(path, record(kind="boot")) == f"{path}: not an mgsave shutdown record"
    assert problem(path, record(), kind="boot") == f"{path}: not an mgsave boot record"
    assert problem(path, record(version=2, mgsave_version="9.0")) == (
        f"{path}: written by mgsave 9.0 in record format 2; this mgsave {__version__} reads format 1 only")
    assert problem(path, {k: v for k, v in record().items() if k != "version"}) == (
        f"{path}: written by mgsave ? in record format None; this mgsave {__version__} reads format 1 only")
    assert problem(path, record(guests=[])) == f"{path}: has no guest list; the file is corrupt"
    assert problem(path, record(started="x")) == f"{path}: 'started' is 'x', not a time; the file is corrupt"


def test_a_record_that_cannot_be_read_says_why(tmp_path):
    path = tmp_path / "last-shutdown.json"
    path.mkdir()
    with pytest.raises(RecordError) as why:
        read_record(path, "shutdown")
    assert str(why.value) == f"{path}: cannot read: it is a directory, not a regular file"
    (tmp_path / "file").write_text("")
    with pytest.raises(RecordError) as why:
        read_record(tmp_path / "file" / "last-shutdown.json", "shutdown")
    assert str(why.value) == f"{tmp_path / 'file' / 'last-shutdown.json'}: cannot read: Not a directory"


def test_a_records_images_are_named_as_this_mgsave_names_them(tmp_path):
    state = tmp_path / "state"
    (state / "images").mkdir(parents=True)
    (tmp_path / "link").symlink_to(state)
    key = f"{URI} 0a9f8d3c-1111-2222-3333-444455556666"
    entry = {"connection": URI, "name": "a", "uuid": key.split()[1], "outcome": "saved",
             "image": str(tmp_path / "link" / "images" / f"{key.split()[1]}.save")}
    (state / "last-shutdown.json").write_text(json.dumps(record(guests={key: entry})))
    data = read_record(state / "last-shutdown.json", "shutdown")
    assert data["guests"][key]["image"] == str(state / "images" / f"{key.split()[1]}.save")


def test_an_untrusted_record_is_logged_and_said_unless_quiet(tmp_path, caplog):
    path = tmp_path / "last-boot.json"
    path.write_text("{")
    caplog.set_level(logging.ERROR, logger="mgsave")
    warnings = []
    assert read_trusted(path, "boot", warnings=warnings) is None
    assert len(warnings) == 1 and warnings[0].startswith(f"ignoring the boot record: {path}: not valid JSON")
    assert [r.getMessage() for r in caplog.records] == warnings
    caplog.clear()
    assert read_trusted(path, "boot", quiet=True) is None
    assert caplog.records == []
    path.write_text(json.dumps(record("boot")))
    assert read_trusted(path, "boot") == record("boot")
    assert read_trusted(tmp_path / "none.json", "boot", warnings=warnings) is None and len(warnings) == 1


def test_an_untrusted_record_is_set_aside_under_a_name_of_its_own(tmp_path, monkeypatch, caplog):
    caplog.set_level(logging.ERROR, logger="mgsave")
    strftime = time.strftime
    monkeypatch.setattr(time, "strftime", lambda form: strftime(form, time.localtime(1.7e9)))  # the same second
    stamp = strftime("%Y%m%d-%H%M%S", time.localtime(1.7e9))
    path = tmp_path / "last-shutdown.json"
    warnings = []
    path.write_text(json.dumps(record()))
    set_aside_untrusted(path, "shutdown", warnings)
    assert path.exists() and warnings == [], "a good record stays"
    set_aside_untrusted(tmp_path / "none.json", "shutdown", warnings)
    assert warnings == [], "no record: nothing to set aside"
    for n in range(3):
        path.write_text("{" * (n + 1))
        set_aside_untrusted(path, "shutdown", warnings)
        assert not path.exists()
    kept = [f"{path}.untrusted-{stamp}", f"{path}.untrusted-{stamp}-2", f"{path}.untrusted-{stamp}-3"]
    assert [Path(k).read_text() for k in kept] == ["{", "{{", "{{{"]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(Path(k).name for k in kept)
    assert [w.rpartition("; kept as ")[2] for w in warnings] == kept
    assert warnings[0].startswith(f"ignoring the shutdown record: {path}: not valid JSON")
    assert [r.getMessage() for r in caplog.records] == warnings


def test_an_untrusted_record_that_cannot_be_set_aside_is_said_and_left(tmp_path, caplog):
    path = tmp_path / ("r" * 240)  # its name with ".untrusted-<time>" is longer than a name may be
    path.write_text("{")
    warnings = []
    set_aside_untrusted(path, "shutdown", warnings)
    assert path.read_text() == "{"
    (warning,) = warnings
    assert warning.startswith(f"ignoring the shutdown record: {path}: not valid JSON")
    assert warning.endswith("; could not keep it aside (File name too long)")
    assert caplog.records[-1].getMessage() == warning and caplog.records[-1].levelno == logging.ERROR


def test_the_boot_id_is_the_kernels_or_none(tmp_path, monkeypatch):
    boot_id = tmp_path / "boot_id"
    monkeypatch.setattr(records, "BOOT_ID_FILE", str(boot_id))
    assert current_boot_id() is None
    boot_id.write_text("4f1c0e3a-5b6d-4e7f-8a9b-0c1d2e3f4a5b\n")
    assert current_boot_id() == "4f1c0e3a-5b6d-4e7f-8a9b-0c1d2e3f4a5b"
    boot_id.write_text("\n")
    assert current_boot_id() is None
    boot_id.write_text("x" * 99 + "yz")
    assert current_boot_id() == "x" * 99 + "y"
    boot_id.write_bytes(b"\xff")
    assert current_boot_id() is None
    boot_id.write_text("\u00e9t\u00e9")  # UTF-8, but no boot ID the kernel writes
    assert current_boot_id() is None
    assert records.BOOT_ID_FILE == str(boot_id)
    monkeypatch.undo()
    assert records.BOOT_ID_FILE == "/proc/sys/kernel/random/boot_id"


def plan_of(name, **facts):
    info = GuestInfo(URI, name, str(uuid.uuid5(uuid.NAMESPACE_URL, name)), GuestState.RUNNING, memory_kib=1024,
                     **facts)
    policy = parse_policy("version: 1\n", "policy.yaml")
    (entry,) = plan_shutdown([info], policy, state_dir=Path("/state")).active
    return entry


def test_a_boot_record_has_an_entry_per_guest_and_marks_restored_images_used(monkeypatch):
    monkeypatch.setattr(time, "time", lambda: 50.0)
    restored = GuestResult(plan_of("t"), Outcome.RESTORED, started=20.0, finished=30.0,
                           steps=[StepResult(Action.RESTORE, True, 20.0, 30.0, bytes=5)],
                           waits=[Wait(WaitKind.SLOT, 19.0, 20.0)], messages=["restored"])
    on_peer = GuestResult(plan_of("m"), Outcome.ON_PEER, peer="qemu+ssh://peer/system")
    data = boot_record(10.0, [restored, on_peer], "SIGTERM", boot_id="b")
    assert {k: v for k, v in data.items() if k != "guests"} == {
        "format": "mgsave-state", "kind": "boot", "version": 1, "mgsave_version": __version__,
        "started": 10.0, "finished": 50.0, "interrupted": "SIGTERM", "boot_id": "b"}
    t = data["guests"][f"{URI} {restored.plan.guest.uuid}"]
    assert t == {"connection": URI, "name": "t", "uuid": restored.plan.guest.uuid, "outcome": "restored",
                 "ok": restored.ok, "messages": ["restored"], "started": 20.0, "finished": 30.0, "bytes": 5,
                 "steps": [restored.steps[0].to_dict()], "waits": [restored.waits[0].to_dict()], "image_used": True}
    m = data["guests"][f"{URI} {on_peer.plan.guest.uuid}"]
    assert m["peer"] == "qemu+ssh://peer/system" and "image_used" not in m
    assert boot_record(10.0, [], None)["boot_id"] is None


def test_used_images_are_those_a_boot_pass_since_the_shutdown_restored():
    shutdown = {"started": 10.0, "guests": {}}
    boot = {"started": 20.0, "guests": {"k1": {"image_used": True}, "k2": {"image_used": False}, "k3": {}}}
    assert booted_since(shutdown, boot) is True
    assert used_images(shutdown, boot) == frozenset({"k1"})
    earlier = {**boot, "started": 10.0}  # the same time is not since
    assert booted_since(shutdown, earlier) is False and used_images(shutdown, earlier) == frozenset()
    assert booted_since(None, boot) is False and booted_since(shutdown, None) is False
    assert used_images(None, boot) == frozenset()


def test_a_transient_guests_pending_entry_names_its_save_file():
    entry = plan_of("t", persistent=False)
    assert entry.image == "/state/images/" + entry.guest.uuid + ".save"
    assert pending_entry(entry)["image"] == entry.image and pending_entry(entry)["persistent"] is False


def test_a_pending_entry_keeps_the_guests_facts_and_plan():
    entry = plan_of("p", title="web", metadata={"role": "db"})
    written = pending_entry(entry)
    assert written == {"connection": URI, "name": "p", "uuid": entry.guest.uuid, "persistent": True,
                       "state": "running", "memory_kib": 1024, "title": "web", "metadata": {"role": "db"},
                       "outcome": "pending", "image": entry.image, "planned": [str(a) for a in entry.actions]}
    assert written["planned"]
