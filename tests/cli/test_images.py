"""Kept images: what the state directory keeps for inspection (failed-images/, untrusted records
set aside) shows in ``mgsave status`` and ``mgsave images``, warns past the policy's share of the
file system, and goes only when the admin removes it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from libmgsave import cli, state
from libmgsave.actions import images as images_action
from libmgsave.errors import ExitCode
from tests.testdriver import URI, define, domain_xml, hv  # noqa: F401

REPO = Path(__file__).resolve().parents[2]


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

    def list_then_swap(state_dir, *beside):
        files = listed(state_dir, *beside)
        (state_dir / "failed-images").rename(state_dir / "failed-images.real")
        (state_dir / "failed-images").symlink_to(victim_dir)
        return files

    monkeypatch.setattr(images_action, "kept_files", list_then_swap)
    code, result, err = run("images", "remove", name)
    assert code == ExitCode.GUEST_FAILED and [f["name"] for f in result["failed"]] == [name]
    assert victim.read_bytes() == b"root's file"
    assert "not a directory" in result["failed"][0]["error"]


# In a private mount namespace: libvirt's save directory and the state directory are two tmpfs
# mounts, as the units' sandbox makes them two mounts (a link or rename between them is EXDEV).
TWO_FILESYSTEMS_SCRIPT = r"""
import json, os, subprocess, sys
from pathlib import Path
from libmgsave import cli
from libmgsave.state.images import keep_failed_image
from libmgsave.state.kept import KEPT_BESIDE

state = Path(sys.argv[1])
save = Path("/var/lib/libvirt/qemu/save")
for path, size in ((save, "64m"), (state, "16m")):
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0711", "mgsave-test", str(path)], check=True)
report = {}

def image(name, mib):
    path = save / f"{name}.save"
    path.write_bytes(b"LibvirtQemudSave" + os.urandom(mib * 2**20))
    return path

# 1. beside the image: a link on its own file system, nothing written to the state directory
first = image("g1", 4)
kept = keep_failed_image(str(first), state / "failed-images", "g1")
report["beside"] = [kept, os.stat(kept).st_ino == os.stat(first).st_ino]
# 2. beside impossible (a file in the way): a copy into the state directory, which has room
(save / KEPT_BESIDE).rename(save / "aside")
(save / KEPT_BESIDE).write_text("in the way")
second = image("g2", 4)
kept = keep_failed_image(str(second), state / "failed-images", "g2")
report["copied"] = [kept, kept and Path(kept).read_bytes() == second.read_bytes()]
# 3. no room for a copy (15 MiB into 16 MiB less the 10% kept free): left where it is
third = image("g3", 15)
report["no_room"] = [keep_failed_image(str(third), state / "failed-images", "g3"), third.exists(),
                     sorted(p.name for p in (state / "failed-images").iterdir())]
(save / KEPT_BESIDE).unlink()
(save / "aside").rename(save / KEPT_BESIDE)
code = cli.main(["--state-dir", str(state), "--policy", sys.argv[2], "--json", "images", "list"])
# removed by the name list gives: the kept link goes, libvirt's own image stays
beside = report["beside"][0]
code = cli.main(["--state-dir", str(state), "--policy", sys.argv[2], "images", "remove", beside])
report["removed"] = [code, os.path.exists(beside), first.exists()]
print(json.dumps(report), file=sys.stderr)
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to mount tmpfs in a private mount namespace")
def test_a_failed_image_is_kept_on_its_own_file_system_and_copied_only_with_room(tmp_path):
    """Under the units libvirt's save directory and the state directory are two mounts: a link
    from one to the other gives EXDEV, and keeping a failed image used to copy it (gigabytes, at
    boot, into /var). It is now linked beside the image, found there by 'mgsave images', copied
    into the state directory only when it leaves room, and otherwise left where it is."""
    state_dir = tmp_path / "state"
    policy = tmp_path / "policy.yaml"
    policy.write_text(f"version: 1\nconnections: ['{URI}']\n")
    os.chmod(policy, 0o644)
    proc = subprocess.run(["unshare", "--mount", "--propagation", "private", sys.executable, "-c",
                           TWO_FILESYSTEMS_SCRIPT, str(state_dir), str(policy)],
                          cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO)), capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stderr.strip().splitlines()[-1])
    beside = "/var/lib/libvirt/qemu/save/mgsave-failed-images/"
    kept, same_inode = report["beside"]
    assert kept.startswith(beside) and same_inode, report
    kept, same_bytes = report["copied"]
    assert kept.startswith(str(state_dir / "failed-images") + "/") and same_bytes, report
    assert report["no_room"][:2] == [None, True], report
    assert len(report["no_room"][2]) == 1, "nothing of the copy that had no room is left behind"
    assert "it is left where it is" in proc.stderr and "must stay free" in proc.stderr
    assert report["removed"] == [ExitCode.OK, False, True], report
    listed = {f["name"]: f["kind"] for f in json.loads(proc.stdout.split("\n}\n")[0] + "}")["kept_files"]}
    assert listed == {report["beside"][0]: "failed-image", report["copied"][0][len(str(state_dir)) + 1:]: "failed-image"}


def test_a_save_file_is_read_back_by_the_first_connection_that_can(hv, tmp_path, caplog):
    """``read_with_any``: the guest a transient guest's save file holds, as libvirt's test driver
    reads it back; a file no connection can read is logged with each connection's reason."""
    import logging

    from libmgsave.errors import HypervisorError
    from libmgsave.hypervisor.host import Host
    from libmgsave.state.images import read_with_any

    caplog.set_level(logging.ERROR, logger="mgsave")
    saved, junk = tmp_path / "t.save", tmp_path / "junk.save"
    dom = hv.createXML(domain_xml("t", 2048), 0)
    uuid = dom.UUIDString()
    dom.save(str(saved))
    junk.write_bytes(b"junk")
    host = Host.open(URI)
    guest = read_with_any([host], str(saved))
    assert (guest.name, guest.uuid, guest.persistent, guest.memory_kib) == ("t", uuid, False, 2048)
    assert not caplog.records
    assert read_with_any([host, host], str(junk)) is None
    assert read_with_any([], str(junk)) is None
    with pytest.raises(HypervisorError) as raised:
        host.saved_image_guest(str(junk))
    why = raised.value.message
    assert why.startswith(f"reading the guest definition in {junk}: ")
    prefix = f"{junk}: a saved transient guest that no connection can read; kept, not restored ("
    assert [r.getMessage() for r in caplog.records] == [prefix + f"{why}; {why})", prefix + "no connection)"]
