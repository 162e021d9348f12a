"""The save files the state directory holds (``state/images.py``): which transient guests' files a
boot pass restores without a record to name them, and how a file is kept, set aside or removed,
each logged (real files and directories in ``tmp_path``; a guest's definition read back from a
file is given by a function, as a connection gives it)."""

from __future__ import annotations

import errno
import logging
import os
import re
import shutil
import tempfile
from pathlib import Path

import pytest

from libmgsave.history import GuestEntry, Outcome
from libmgsave.inventory import GuestInfo, GuestState
from libmgsave.state import images
from libmgsave.state.kept import KEPT_BESIDE

CONN = "test:///default"
# in the order the files are looked at: the one restored last, so that none before stops the rest
WRONG, OTHER, UNREAD, KNOWN = (f"0f6c9a4e-8f0e-4a53-9d8c-2b7f7b0c1a1{n}" for n in range(4))
STAMP = r"\d{8}-\d{6}"


def _guest(uuid: str, name: str) -> GuestInfo:
    return GuestInfo(CONN, name, uuid, GuestState.SHUTOFF, persistent=False, memory_kib=2048, title="T",
                     metadata={"urn:x": "<x/>"})


# What each file holds, as a connection reads it back: None, none can read it.
HELD = {KNOWN: _guest(KNOWN.upper(), "known"), OTHER: _guest(OTHER, "other"), UNREAD: None,
        WRONG: _guest(OTHER, "wrong")}


def _read(path: str) -> GuestInfo | None:
    return HELD[Path(path).name.removesuffix(".save")]


@pytest.fixture
def saved(tmp_path):
    """images/ with a save file for each of ``HELD``, and what is not a save file of a guest."""
    directory = tmp_path / "images"
    directory.mkdir()
    for uuid in HELD:
        (directory / f"{uuid}.save").write_bytes(b"s")
    (directory / "0-notes.txt").write_text("not looked at")
    (directory / "name.save").write_bytes(b"s")
    (directory / f"{KNOWN[:-1]}9.save").symlink_to(directory / f"{KNOWN}.save")
    (directory / f"{KNOWN[:-1]}8.save").mkdir()
    return directory


def _entry(guest: GuestInfo, path: Path) -> GuestEntry:
    return GuestEntry.of(connection=CONN, name=guest.name, uuid=guest.uuid, persistent=False, memory_kib=2048,
                         title="T", metadata={"urn:x": "<x/>"}, outcome=Outcome.SAVED_TO_FILE, image=str(path))


def test_without_a_record_only_a_known_guests_file_that_holds_it_is_restored(saved, caplog):
    caplog.set_level(logging.WARNING, logger="mgsave")
    warnings = []
    known = {f"{CONN} {KNOWN}"}
    entries = images.transient_images_without_record(saved, None, _read, warnings, known=known)
    assert entries == [_entry(HELD[KNOWN], saved / f"{KNOWN}.save")]
    assert entries[0].to_dict() == _entry(HELD[KNOWN], saved / f"{KNOWN}.save").to_dict()
    unreadable = f"{saved}/{UNREAD}.save: a saved transient guest that no connection can read; kept, not restored"
    assert warnings == [
        f"{saved}/{KNOWN[:-1]}8.save: not a transient guest's save file (not a regular file named <uuid>.save); "
        "left alone",
        f"{saved}/{KNOWN[:-1]}9.save: not a transient guest's save file (not a regular file named <uuid>.save); "
        "left alone",
        f"{saved}/name.save: not a transient guest's save file (not a regular file named <uuid>.save); left alone",
        f"{saved}/{WRONG}.save: holds the guest wrong of UUID {OTHER}, not the one its name says; kept, "
        "not restored",
        f"{saved}/{OTHER}.save: holds other, a guest no record names; kept, not restored "
        "(mgsave boot --restore-unrecorded restores it)",
        unreadable,
        f"known: restoring its saved image {saved}/{KNOWN}.save, found with no usable record to name it",
    ]
    assert [r.getMessage() for r in caplog.records] == [w for w in warnings if w != unreadable], \
        "reading logs its own error"


def test_asked_to_restore_the_unrecorded_every_file_that_holds_its_guest_is_restored(saved):
    warnings = []
    entries = images.transient_images_without_record(saved, None, _read, warnings, restore_unrecorded=True)
    assert entries == [_entry(HELD[OTHER], saved / f"{OTHER}.save"), _entry(HELD[KNOWN], saved / f"{KNOWN}.save")]


def test_with_a_record_a_file_it_does_not_name_is_kept_unless_asked(saved):
    record = {"guests": {f"{CONN} {KNOWN}": {"image": str(saved / f"{KNOWN}.save")}}}
    warnings = []
    assert images.transient_images_without_record(saved, record, _read, warnings, known={f"{CONN} {OTHER}"}) == []
    assert f"{saved}/{OTHER}.save: a saved transient guest that the shutdown record does not name; kept, not " \
           "restored (mgsave boot --restore-unrecorded restores it)" in warnings
    assert not any(f"{KNOWN}.save" in w for w in warnings), "the file the record names is the record's"
    entries = images.transient_images_without_record(saved, record, _read, [], restore_unrecorded=True)
    assert [e.name for e in entries] == ["other"]
    record = {"guests": {f"{CONN} {OTHER}": {"image": str(saved / f"{OTHER}.save")}}}
    entries = images.transient_images_without_record(saved, record, _read, [], restore_unrecorded=True)
    assert [e.name for e in entries] == ["known"], "a file the record names does not stop the rest"
    assert images.transient_images_without_record(saved, {}, _read, [], restore_unrecorded=True) != [], \
        "a record without guests names no file"


def test_an_images_directory_that_is_a_link_or_missing_gives_nothing(tmp_path, saved):
    link = tmp_path / "link"
    link.symlink_to(saved)
    warnings = []
    assert images.transient_images_without_record(link, None, _read, warnings, restore_unrecorded=True) == []
    assert warnings == [f"{link}: not a directory (a symlink?); nothing in it is restored"]
    warnings = []
    assert images.transient_images_without_record(tmp_path / "none", None, _read, warnings) == [] and not warnings


def test_the_images_directory_is_made_and_whatever_is_in_its_place_set_aside(tmp_path, caplog):
    caplog.set_level(logging.ERROR, logger="mgsave")
    made = images.images_directory(tmp_path / "state" / "images")
    assert made == tmp_path / "state" / "images" and made.is_dir() and not caplog.records
    assert images.images_directory(made) == made, "an existing one is kept"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    made.rmdir()
    made.symlink_to(elsewhere)
    assert images.images_directory(made) == made and made.is_dir() and not made.is_symlink()
    (aside,) = (made.parent).glob("images.untrusted-*")
    assert re.fullmatch(rf"images\.untrusted-{STAMP}", aside.name) and aside.is_symlink()
    assert [r.getMessage() for r in caplog.records] == [
        f"{made} was not a directory of its own; set aside as {aside}, and a new one made"]
    with pytest.raises(OSError) as raised:
        images.own_directory(aside)
    assert raised.value.errno == errno.ENOTDIR and raised.value.filename == str(aside)
    assert raised.value.strerror == "not a directory of its own (a symlink?)"


@pytest.fixture
def state_images(tmp_path):
    path = tmp_path / "state" / "images"
    path.mkdir(parents=True)
    return path


def test_a_partial_save_file_is_removed_and_said_so(state_images, caplog):
    caplog.set_level(logging.INFO, logger="mgsave")
    partial = state_images / f"{KNOWN}.save"
    partial.write_bytes(b"part")
    images.discard_partial_save(str(partial), "g", "no room")
    assert not partial.exists()
    assert [r.getMessage() for r in caplog.records] == [
        f"g: removed the partial save file {partial}: its save failed (no room) and the guest still runs"]
    caplog.clear()
    images.discard_partial_save(str(partial), "g", "no room")
    assert not caplog.records, "none written: nothing to say"


def test_a_partial_save_file_that_cannot_be_removed_is_an_error(state_images, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="mgsave")
    (state_images / "dir.save").mkdir()
    images.discard_partial_save(str(state_images / "dir.save"), "g", "no room")
    not_a_directory = tmp_path / "file"
    not_a_directory.write_text("")
    images.discard_partial_save(str(not_a_directory / "images" / "x.save"), "g", "no room")
    assert [(r.levelno, r.getMessage()) for r in caplog.records] == [
        (logging.ERROR, f"g: did not remove the partial save file {state_images}/dir.save: dir.save is a "
                        "directory, not a regular file; left alone"),
        (logging.ERROR, f"g: could not remove the partial save file {not_a_directory}/images/x.save "
                        "(Not a directory)")]
    assert (state_images / "dir.save").is_dir()


def test_a_used_save_file_is_removed_or_the_reason_given(state_images, caplog):
    caplog.set_level(logging.INFO, logger="mgsave")
    used = state_images / f"{KNOWN}.save"
    used.write_bytes(b"s")
    assert images.remove_used_image(str(used), "g") is None and not used.exists()
    assert images.remove_used_image(str(used), "g") is None, "already gone: fine"
    used.mkdir()
    why = f"{used.name} is a directory, not a regular file; left alone: {used}"
    assert images.remove_used_image(str(used), "g") == why
    assert [(r.levelno, r.getMessage()) for r in caplog.records] == [
        (logging.INFO, f"g: removed its used save file {used}"),
        (logging.ERROR, f"g: restored, but its used save file could not be removed ({why}); the boot record "
                        "marks it used so that it is never restored again")]
    plain = used.parent.parent / "plain"
    plain.write_text("a file where the state directory should be")
    assert images.remove_used_image(str(plain / "images" / "x.save"), "g") == \
        f"Not a directory: {plain}/images/x.save", "an OSError: its own words"


def test_a_file_that_failed_to_restore_is_set_aside_under_a_free_name(state_images, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="mgsave")
    failed = tmp_path / "state" / "failed-images"
    first, second = state_images / f"{KNOWN}.save", state_images / "sub"
    first.write_bytes(b"1")
    assert images.set_aside_failed_file(str(first), failed, "g") == failed / f"{KNOWN}.save"
    first.write_bytes(b"2")
    assert images.set_aside_failed_file(str(first), failed, "g") == failed / f"{KNOWN}-2.save"
    assert (failed / f"{KNOWN}-2.save").read_bytes() == b"2" and not first.exists()
    assert [r.getMessage() for r in caplog.records] == [
        f"g: set {first} aside as {failed}/{KNOWN}.save", f"g: set {first} aside as {failed}/{KNOWN}-2.save"]
    caplog.clear()
    second.mkdir()
    assert images.set_aside_failed_file(str(second), failed, "g") is None
    blocked = tmp_path / "blocked"
    blocked.write_text("a file, not a directory")
    first.write_bytes(b"3")
    assert images.set_aside_failed_file(str(first), blocked / "failed-images", "g") is None
    assert first.read_bytes() == b"3"
    assert [(r.levelno, r.getMessage()) for r in caplog.records] == [
        (logging.ERROR, f"g: {second}: sub is a directory, not a regular file; left alone"),
        (logging.ERROR, f"g: could not set {first} aside into {blocked}/failed-images (Not a directory); it stays "
                        "where it is")]


@pytest.fixture
def save_dir(tmp_path):
    path = tmp_path / "save"
    path.mkdir()
    return path


def _stamped(path: str | None, directory: Path, stem: str) -> bool:
    return path is not None and re.fullmatch(rf"{re.escape(str(directory))}/{stem}-{STAMP}\.save", path) is not None


def test_a_failed_image_is_kept_as_a_link_beside_it(save_dir, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="mgsave")
    image = save_dir / "guest.save"
    image.write_bytes(b"memory")
    kept = images.keep_failed_image(str(image), tmp_path / "failed-images", "../.web/1")
    assert _stamped(kept, save_dir / KEPT_BESIDE, "_.web_1") and os.path.samefile(kept, image)
    assert (save_dir / KEPT_BESIDE).stat().st_mode & 0o777 == 0o700, "root's alone"
    assert not (tmp_path / "failed-images").exists()
    assert [r.getMessage() for r in caplog.records] == [f"../.web/1: kept the image {image} as {kept}"]
    again = images.keep_failed_image(str(image), tmp_path / "failed-images", "../.web/1")
    assert again != kept and Path(again).parent == save_dir / KEPT_BESIDE, "a name of its own, beside"
    assert re.fullmatch(rf"_\.web_1-{STAMP}(-2)?\.save", Path(again).name)
    assert Path(images.keep_failed_image(str(image), tmp_path / "failed-images", "...")).name.startswith("guest-")
    assert Path(images.keep_failed_image(str(image), tmp_path / "failed-images", "X/.y")).name.startswith("X_.y-")


def test_a_failed_image_is_linked_into_failed_images_when_it_cannot_be_beside(save_dir, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="mgsave")
    image = save_dir / "guest.save"
    image.write_bytes(b"memory")
    (save_dir / KEPT_BESIDE).write_text("in the way")
    failed = tmp_path / "var" / "state" / "failed-images"  # made, with the directories above it
    kept = images.keep_failed_image(str(image), failed, "g")
    assert _stamped(kept, failed, "g") and os.path.samefile(kept, image)
    assert [r.getMessage() for r in caplog.records] == [f"g: kept the image {image} as {kept}"]


def test_nothing_is_kept_of_what_is_no_file(tmp_path):
    assert images.keep_failed_image(None, tmp_path / "failed-images", "g") is None
    assert images.keep_failed_image(str(tmp_path / "none.save"), tmp_path / "failed-images", "g") is None
    assert images.keep_failed_image(str(tmp_path), tmp_path / "failed-images", "g") is None
    assert not (tmp_path / "failed-images").exists()


def test_a_failed_image_that_cannot_be_kept_is_left_where_it_is(save_dir, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="mgsave")
    image = save_dir / "guest.save"
    image.write_bytes(b"memory")
    (save_dir / KEPT_BESIDE).write_text("in the way")
    failed = tmp_path / "failed-images"
    failed.mkdir(mode=0o700)
    failed.chmod(0o777)  # others could plant a file there that root would remove
    assert images.keep_failed_image(str(image), failed, "g") is None
    assert image.read_bytes() == b"memory" and list(failed.iterdir()) == []
    beside = save_dir / KEPT_BESIDE
    assert [(r.levelno, r.getMessage()) for r in caplog.records] == [
        (logging.ERROR, f"g: could not keep the image {image} elsewhere (no link in {beside}: "
                        f"File exists; no link in {failed}: not safe: {failed} is "
                        f"writable by group or others (drwxrwxrwx); no copy in {failed}: not safe: {failed} is "
                        "writable by group or others (drwxrwxrwx)); it is left where it is")]


@pytest.fixture
def other_filesystem():
    """A directory on another file system than ``tmp_path`` (/dev/shm, a tmpfs): a link from
    there into ``tmp_path`` fails with EXDEV, as from libvirt's save directory into the state
    directory under the units."""
    if not os.path.isdir("/dev/shm") or os.stat("/dev/shm").st_dev == os.stat(tempfile.gettempdir()).st_dev:
        pytest.skip("needs /dev/shm on a file system of its own")
    path = Path(tempfile.mkdtemp(dir="/dev/shm", prefix="mgsave-test-"))
    yield path
    shutil.rmtree(path)


def test_a_failed_image_on_another_file_system_is_copied_into_failed_images(other_filesystem, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="mgsave")
    image = other_filesystem / "guest.save"
    image.write_bytes(os.urandom(3 * 2**20 + 5))
    (other_filesystem / KEPT_BESIDE).write_text("in the way")
    failed = tmp_path / "failed-images"
    kept = images.keep_failed_image(str(image), failed, "g")
    assert _stamped(kept, failed, "g") and Path(kept).read_bytes() == image.read_bytes()
    assert Path(kept).stat().st_mode & 0o777 == 0o600 and image.exists()
    again = images.keep_failed_image(str(image), failed, "g")
    assert again != kept and Path(again).parent == failed and Path(again).read_bytes() == image.read_bytes()
    assert [r.getMessage() for r in caplog.records][:1] == [
        f"g: kept the image {image} as {kept} (a copy: no link in {other_filesystem / KEPT_BESIDE}: File exists; "
        f"no link in {failed}: Invalid cross-device link)"]


def test_a_directory_others_can_write_to_is_refused_for_kept_images(tmp_path):
    path = tmp_path / "kept"
    assert images.kept_directory(path) == path and path.stat().st_mode & 0o777 == 0o700
    path.chmod(0o777)
    with pytest.raises(OSError) as raised:
        images.kept_directory(path)
    assert (raised.value.errno, raised.value.filename) == (errno.EPERM, str(path))
    assert raised.value.strerror == f"not safe: {path} is writable by group or others (drwxrwxrwx)"
