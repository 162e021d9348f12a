"""Kept images: what the state directory keeps for inspection (failed-images/, untrusted records
set aside) shows in ``mgsave status`` and ``mgsave images``, warns past the policy's share of the
file system, and goes only when the admin removes it."""

from __future__ import annotations

import json
import os

import pytest

from libmgsave import cli, state
from libmgsave.actions import images as images_action
from libmgsave.errors import ExitCode
from tests.testdriver import URI, define, hv  # noqa: F401


@pytest.fixture
def run(tmp_path, capsys):
    state_dir = tmp_path / "state"
    policy = tmp_path / "policy.yaml"
    policy.write_text(f"version: 1\nconnections: ['{URI}']\n")
    os.chmod(policy, 0o644)

    def run_mgsave(*args):
        capsys.readouterr()
        code = cli.main([args[0], "--state-dir", str(state_dir), "--policy", str(policy), "--json", *args[1:]])
        out, err = capsys.readouterr()
        return code, (json.loads(out) if out.strip() else None), err

    run_mgsave.state_dir = state_dir
    run_mgsave.policy = policy
    return run_mgsave


def _kept(hv, run):
    """A failed image (as a failed resume keeps one) and an untrusted record set aside by a pass."""
    failed = run.state_dir / "failed-images"
    failed.mkdir(parents=True)
    (failed / "db-20260101-000000.save").write_bytes(b"x" * 300_000)
    (run.state_dir / state.SHUTDOWN_RECORD).write_bytes(b"\0" * 1000)
    define(hv, "a")
    code, result, err = run("shutdown")
    assert code == ExitCode.OK, err
    (aside,) = run.state_dir.glob(state.SHUTDOWN_RECORD + ".untrusted-*")
    return {"failed-images/db-20260101-000000.save": 300_000, aside.name: 1000}


def test_status_and_images_list_show_the_kept_files_and_their_bytes(hv, run):
    kept = _kept(hv, run)
    code, result, err = run("status")
    assert code == ExitCode.OK, err
    assert result["kept_usage"]["files"] == 2 and result["kept_usage"]["size_bytes"] == 301_000
    code, result, err = run("images", "list")
    assert code == ExitCode.OK, err
    assert {f["name"]: f["size_bytes"] for f in result["kept_files"]} == kept
    assert {f["kind"] for f in result["kept_files"]} == {"failed-image", "untrusted-record"}


def test_status_text_names_the_kept_files(hv, run, capsys):
    _kept(hv, run)
    capsys.readouterr()
    assert cli.main(["status", "--state-dir", str(run.state_dir), "--policy", str(run.policy)]) == ExitCode.OK
    out = capsys.readouterr().out
    assert "kept: 2 files, 294 KiB" in out and "mgsave images list" in out


def test_kept_files_are_removed_only_when_asked_and_only_those_named(hv, run):
    kept = _kept(hv, run)
    name = "failed-images/db-20260101-000000.save"
    code, result, err = run("boot")
    code, result, err = run("shutdown")
    assert (run.state_dir / name).exists(), "a pass never removes a kept file"
    code, result, err = run("images", "remove", name, "--dry-run")
    assert code == ExitCode.OK and [f["name"] for f in result["removed"]] == [name]
    assert (run.state_dir / name).exists(), "a dry run removes nothing"
    code, result, err = run("images", "remove", name)
    assert code == ExitCode.OK, err
    assert not (run.state_dir / name).exists()
    assert "removed the kept failed-image" in err
    (other,) = set(kept) - {name}
    assert (run.state_dir / other).exists()
    code, result, err = run("images", "remove", "--all")
    assert code == ExitCode.OK and [f["name"] for f in result["removed"]] == [other]
    assert not (run.state_dir / other).exists()


@pytest.mark.parametrize("name", ["last-shutdown.json", "../policy.yaml", "failed-images/nothing.save", "images"])
def test_only_kept_files_can_be_removed(hv, run, name):
    _kept(hv, run)
    code, result, err = run("images", "remove", name)
    assert code == ExitCode.BAD_INPUT
    assert name in result["unknown"]
    assert (run.state_dir / state.SHUTDOWN_RECORD).exists() and run.policy.exists()


def test_a_symlink_in_failed_images_is_neither_counted_nor_followed(hv, run, tmp_path):
    victim = tmp_path / "victim"
    victim.write_bytes(b"v" * 5000)
    (run.state_dir / "failed-images").mkdir(parents=True)
    (run.state_dir / "failed-images" / "link.save").symlink_to(victim)
    code, result, err = run("images", "list")
    assert result["kept_files"] == []
    code, result, err = run("images", "remove", "--all")
    assert code == ExitCode.OK and victim.read_bytes() == b"v" * 5000


def test_kept_files_past_the_policys_share_warn_in_status_and_at_boot(hv, run):
    _kept(hv, run)
    run.policy.write_text(f"version: 1\nconnections: ['{URI}']\nlimits:\n  kept_images_warn_share: 0.000001\n")
    code, result, err = run("status")
    assert any("kept_images_warn_share" in w for w in result["warnings"]), result["warnings"]
    code, result, err = run("boot")
    assert any("kept_images_warn_share" in w for w in result["warnings"]), result["warnings"]
    assert code == ExitCode.OK, "a warning, not a failure: the guests are fine"
    run.policy.write_text(f"version: 1\nconnections: ['{URI}']\n")  # the default: 10%
    code, result, err = run("status")
    assert not any("kept_images_warn_share" in w for w in result["warnings"]), result["warnings"]


def test_images_remove_refuses_an_insecure_state_directory(hv, run):
    kept = _kept(hv, run)
    run.state_dir.chmod(0o777)
    code, result, err = run("images", "remove", "--all")
    assert code == ExitCode.BAD_INPUT and result["removed"] == []
    assert "not safe" in result["error"] and "--insecure-state-dir" in result["error"]
    assert all((run.state_dir / name).exists() for name in kept)
    code, result, err = run("images", "list")
    assert any("--insecure-state-dir" in w for w in result["warnings"]), "listing only reads names: it warns"
    code, result, err = run("images", "remove", "--all", "--insecure-state-dir")
    assert code == ExitCode.OK and sorted(f["name"] for f in result["removed"]) == sorted(kept)


def test_failed_images_swapped_for_a_link_after_the_listing_is_not_followed(hv, run, tmp_path, monkeypatch):
    """The swap happens between the listing and the removal, where a renameat2 loop of a user who
    can write the directory would land it (a root-only directory is used here, and the swap is
    done at that point instead of raced for)."""
    name = "failed-images/db-20260101-000000.save"
    _kept(hv, run)
    victim_dir = tmp_path / "etc"
    victim_dir.mkdir()
    victim = victim_dir / "db-20260101-000000.save"
    victim.write_bytes(b"root's file")
    listed = images_action.kept_files

    def list_then_swap(state_dir):
        files = listed(state_dir)
        (state_dir / "failed-images").rename(state_dir / "failed-images.real")
        (state_dir / "failed-images").symlink_to(victim_dir)
        return files

    monkeypatch.setattr(images_action, "kept_files", list_then_swap)
    code, result, err = run("images", "remove", name)
    assert code == ExitCode.GUEST_FAILED and [f["name"] for f in result["failed"]] == [name]
    assert victim.read_bytes() == b"root's file"
    assert "not a directory" in result["failed"][0]["error"]
