"""What the state directory keeps for the admin (``state/kept.py``): which files count, in which
order, what ``--json`` says of them, how much of the file system they take and when that warns,
and how one is removed (real files and directories in ``tmp_path``)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from libmgsave.state.kept import (FAILED_IMAGES, KEPT_BESIDE, KeptFile, KeptUsage, kept_beside, kept_files,
                                  kept_usage, over_share_warning, remove_kept)


def _file(path: Path, size: int, mtime: float) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x" * size)
    os.utime(path, (mtime, mtime))
    return path


@pytest.fixture
def state_dir(tmp_path):
    path = tmp_path / "state"
    path.mkdir(mode=0o700)
    return path


def test_kept_files_are_the_records_set_aside_and_the_failed_images_oldest_first(state_dir, tmp_path):
    _file(state_dir / "last-shutdown.json.untrusted-20260102-000000", 10, 3000)
    _file(state_dir / "last-boot.json.untrusted-20260101-000000", 20, 1000)
    _file(state_dir / "last-shutdown.json", 30, 500)  # the record itself: not kept
    _file(state_dir / "policy.cache.untrusted-1", 5, 500)  # not a record set aside
    (state_dir / "last-boot.json.untrusted-dir").mkdir()  # not a regular file
    _file(state_dir / FAILED_IMAGES / "db-20260101-000000.save", 40, 2000)
    _file(state_dir / FAILED_IMAGES / "a-20260101-000000.save", 50, 2000)  # same time: by name
    (state_dir / FAILED_IMAGES / "link.save").symlink_to(state_dir / "last-shutdown.json")
    save_dir = tmp_path / "save"
    beside = _file(save_dir / KEPT_BESIDE / "web-20260101-000000.save", 60, 4000)
    found = kept_files(state_dir, [save_dir, str(save_dir)])  # the same directory twice: listed once
    assert found == [
        KeptFile("last-boot.json.untrusted-20260101-000000", state_dir / "last-boot.json.untrusted-20260101-000000",
                 "untrusted-record", 20, 1000),
        KeptFile("failed-images/a-20260101-000000.save", state_dir / "failed-images/a-20260101-000000.save",
                 "failed-image", 50, 2000),
        KeptFile("failed-images/db-20260101-000000.save", state_dir / "failed-images/db-20260101-000000.save",
                 "failed-image", 40, 2000),
        KeptFile("last-shutdown.json.untrusted-20260102-000000",
                 state_dir / "last-shutdown.json.untrusted-20260102-000000", "untrusted-record", 10, 3000),
        KeptFile(str(beside), beside, "failed-image", 60, 4000),
    ]
    assert [f.base for f in found] == [state_dir] * 4 + [save_dir], "what a removal opens as trusted"


def test_nothing_is_listed_from_a_directory_that_is_missing_or_a_link(state_dir, tmp_path):
    assert kept_files(tmp_path / "none", [tmp_path / "no-save-dir"]) == []
    elsewhere = tmp_path / "elsewhere"
    _file(elsewhere / "x.save", 1, 1000)
    (state_dir / FAILED_IMAGES).symlink_to(elsewhere)
    save_dir = tmp_path / "save"
    save_dir.mkdir()
    (save_dir / KEPT_BESIDE).symlink_to(elsewhere)
    assert kept_files(state_dir, [save_dir]) == []


def test_images_kept_beside_in_a_directory_others_can_write_are_not_listed(state_dir, tmp_path, caplog):
    open_dir, good_dir = tmp_path / "open", tmp_path / "good"
    _file(open_dir / KEPT_BESIDE / "planted.save", 1, 1000)
    (open_dir / KEPT_BESIDE).chmod(0o777)
    kept = _file(good_dir / KEPT_BESIDE / "g.save", 2, 1000)
    caplog.set_level(logging.WARNING, logger="mgsave")
    assert [f.path for f in kept_files(state_dir, [open_dir, good_dir])] == [kept], "the next one is still listed"
    assert [r.getMessage() for r in caplog.records] == [
        f"not listing the images kept in {open_dir / KEPT_BESIDE}: {open_dir / KEPT_BESIDE} is writable by "
        f"group or others (drwxrwxrwx)"]


def test_a_kept_file_in_json(state_dir):
    path = _file(state_dir / FAILED_IMAGES / "db.save", 7, 1_700_000_000.5)
    (found,) = kept_files(state_dir)
    assert found.to_dict() == {"name": "failed-images/db.save", "path": str(path), "kind": "failed-image",
                               "size_bytes": 7, "modified": "2023-11-14T22:13:20.500000Z"}


def test_images_are_looked_for_beside_the_system_daemons_and_each_local_connections(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    system = Path("/var/lib/libvirt/qemu/save")
    assert kept_beside([]) == [system]
    assert kept_beside(["test:///default", "qemu:///session", "qemu:///system", "qemu:///session/"]) == [
        system, tmp_path / "libvirt/qemu/save"]


def test_the_share_of_the_file_system_kept_files_take(state_dir):
    files = [KeptFile("a", state_dir / "a", "failed-image", 300, 1), KeptFile("b", state_dir / "b", "failed-image", 700, 2)]
    usage = kept_usage(state_dir, files)
    info = os.statvfs(state_dir)
    assert usage == KeptUsage(2, 1000, info.f_blocks * info.f_frsize)
    assert KeptUsage(2, 50, 200).share == 25.0
    assert KeptUsage(0, 0, 0).share is None and KeptUsage(1, 5, None).share is None
    assert KeptUsage(2, 50, 200).to_dict() == {"files": 2, "size_bytes": 50, "filesystem_bytes": 200,
                                               "share_percent": 25.0}
    assert kept_usage(state_dir / "gone", files) == KeptUsage(2, 1000, None), "an unknown size, not an error"


def test_kept_files_warn_only_past_their_share():
    assert over_share_warning(KeptUsage(1, 10 * 2**20, None), 0.0) is None, "an unknown file system: no share"
    assert over_share_warning(KeptUsage(1, 10 * 2**20, 100 * 2**20), 10.0) is None, "exactly the limit is fine"
    assert over_share_warning(KeptUsage(1, 10 * 2**20, 100 * 2**20), 9.5) == (
        "kept images take 10.0 MiB, 10.0% of the state directory's file system (more than "
        "limits.kept_images_warn_share, 9.5%): see 'mgsave images list', remove them with "
        "'mgsave images remove NAME...' once looked at")


@pytest.mark.parametrize("where", ["state", "beside"])
def test_a_kept_file_is_removed_by_its_listing_and_a_dry_run_removes_nothing(state_dir, tmp_path, caplog, where):
    save_dir = tmp_path / "save"
    path = _file(state_dir / FAILED_IMAGES / "db.save" if where == "state" else save_dir / KEPT_BESIDE / "db.save",
                 3000, 1000)
    (found,) = kept_files(state_dir, [save_dir])
    caplog.set_level(logging.INFO, logger="mgsave")
    assert remove_kept(found, dry_run=True) is None and path.exists()
    assert remove_kept(found, dry_run=False) is None and not path.exists()
    assert path.parent.is_dir(), "only the file goes"
    assert [r.getMessage() for r in caplog.records] == [f"would remove the kept failed-image {path} (2.9 KiB)",
                                                        f"removed the kept failed-image {path} (2.9 KiB)"]
    caplog.clear()
    assert remove_kept(found, dry_run=False) == f"No such file or directory: {path}"
    assert remove_kept(found, dry_run=True) == f"No such file or directory: {path}", "a dry run says so too"
    assert [(r.levelno, r.getMessage()) for r in caplog.records] == [
        (logging.ERROR, f"could not remove the kept failed-image {path} (No such file or directory)")] * 2


@pytest.mark.parametrize("dry_run", [True, False])
def test_a_kept_file_that_became_something_else_is_left_alone(state_dir, tmp_path, caplog, dry_run):
    path = _file(state_dir / FAILED_IMAGES / "db.save", 10, 1000)
    (found,) = kept_files(state_dir)
    path.unlink()
    victim = _file(tmp_path / "victim", 5, 1000)
    path.symlink_to(victim)
    caplog.set_level(logging.INFO, logger="mgsave")
    why = "db.save is a symbolic link, not a regular file; left alone"
    assert remove_kept(found, dry_run=dry_run) == f"{why}: {path}"
    assert path.is_symlink() and victim.exists()
    assert [(r.levelno, r.getMessage()) for r in caplog.records] == [
        (logging.ERROR, f"did not remove the kept failed-image {path}: {why}")]



def test_a_record_set_aside_is_removed_from_the_state_directory_itself(state_dir, caplog):
    path = _file(state_dir / "last-boot.json.untrusted-20260101-000000", 10, 1000)
    (found,) = kept_files(state_dir)
    assert remove_kept(found, dry_run=True) is None and path.exists()
    assert remove_kept(found, dry_run=False) is None and not path.exists()
