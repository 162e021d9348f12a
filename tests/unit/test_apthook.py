"""The apt hook's pure part (apt's hook protocol read, the saved guests, the verdict) and its shell
wrapper run for real with this tree's Python. A real apt runs it in tests/test_apthook.py."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from libmgsave import apthook, state
from libmgsave.apthook import Change, HeldImage, PackageChange, decide, held_images, parse_hook_input, watched
from libmgsave.policy import OnSavedImages
from libmgsave.saveimages import transient_image_path

ROOT = Path(__file__).resolve().parents[2]
URI = "qemu:///system"
UUID = "0a9f8d3c-1111-2222-3333-444455556666"

# A hook's input in protocol version 3 (apt's configuration cut short): a reinstall of
# qemu-system-x86, an upgrade of libvirt0, a removal and a fresh install, each line shaped as in
# REAL below.
V3 = """VERSION 3
APT::Architecture=amd64
APT::Build-Essential::=build-essential
DPkg::Pre-Install-Pkgs::=/usr/lib/mgsave/mgsave-apt-hook || test $? -ne 75

qemu-system-x86 1:7.2+dfsg-7+deb12u18+b3 amd64 same = 1:7.2+dfsg-7+deb12u18+b3 amd64 same /var/cache/apt/archives/qemu-system-x86_1%3a7.2+dfsg-7+deb12u18+b3_amd64.deb
libvirt0 9.0.0-4 amd64 same < 9.0.0-4+deb12u2 amd64 same /var/cache/apt/archives/libvirt0_9.0.0-4+deb12u2_amd64.deb
qemu-system-arm 1:7.2+dfsg-7 amd64 none > - - none **REMOVE**
hello - - none < 2.10-3 amd64 none /var/cache/apt/archives/hello_2.10-3_amd64.deb
qemu-system-x86 1:7.2+dfsg-7+deb12u18+b3 amd64 same = 1:7.2+dfsg-7+deb12u18+b3 amd64 same **CONFIGURE**
libvirt0 9.0.0-4 amd64 same < 9.0.0-4+deb12u2 amd64 same **CONFIGURE**
hello - - none < 2.10-3 amd64 none **CONFIGURE**
"""
V2 = """VERSION 2
APT::Architecture=amd64

qemu-system-x86 1:8.2 > 1:7.2 /var/cache/apt/archives/qemu-system-x86_1%3a7.2_amd64.deb
libvirt-daemon 9.0.0 > - **REMOVE**
"""


# The package lines apt 2.6 sent a protocol 3 hook, captured from real runs of `apt-get install
# ./pkg_1.deb` (a fresh install), then pkg_2.deb, `--reinstall` of it, pkg_1.deb again (a
# downgrade) and `apt-get remove`.
REAL = {
    None: "p - - none < 1 all none /var/cache/t/p_1_all.deb\np - - none < 1 all none **CONFIGURE**\n",
    Change.UPGRADE: "p 1 all none < 2 all none /var/cache/t/p_2_all.deb\np 1 all none < 2 all none **CONFIGURE**\n",
    Change.REINSTALL: "p 2 all none = 2 all none /var/cache/t/p_2_all.deb\np 2 all none = 2 all none **CONFIGURE**\n",
    Change.DOWNGRADE: "p 2 all none > 1 all none /var/cache/t/p_1_all.deb\np 2 all none > 1 all none **CONFIGURE**\n",
    Change.REMOVE: "p 1 all none > - - none **REMOVE**\n",
}


@pytest.mark.parametrize("change", REAL)
def test_what_apt_really_sends(change):
    changes = parse_hook_input("VERSION 3\nAPT::Architecture=amd64\n\n" + REAL[change])
    assert [c.change for c in changes] == ([change] if change else [])


def test_protocol_3_gives_each_installed_package_changed_once():
    assert parse_hook_input(V3) == [
        PackageChange("qemu-system-x86", "1:7.2+dfsg-7+deb12u18+b3", "1:7.2+dfsg-7+deb12u18+b3", Change.REINSTALL),
        PackageChange("libvirt0", "9.0.0-4", "9.0.0-4+deb12u2", Change.UPGRADE),
        PackageChange("qemu-system-arm", "1:7.2+dfsg-7", None, Change.REMOVE),
    ]


def test_protocol_2_and_a_downgrade():
    assert parse_hook_input(V2) == [PackageChange("qemu-system-x86", "1:8.2", "1:7.2", Change.DOWNGRADE),
                                    PackageChange("libvirt-daemon", "9.0.0", None, Change.REMOVE)]


def test_a_name_with_its_architecture_is_the_package():
    text = "VERSION 3\n\nlibvirt0:amd64 9.0.0 amd64 same < 9.1 amd64 same /x.deb\n"
    assert parse_hook_input(text)[0].name == "libvirt0"


@pytest.mark.parametrize("text, said", [
    ("", "not protocol version 2 or 3"),
    ("/var/cache/apt/archives/qemu.deb\n", "not protocol version 2 or 3"),  # version 1: file names only
    ("VERSION 4\n\n", "not protocol version 2 or 3"),
    ("VERSION 3\nAPT::Architecture=amd64\n", "no end"),
    ("VERSION 3\n\nqemu-system-x86 1 < 2 /x.deb\n", "has 5 fields, not 9"),
    ("VERSION 2\n\nqemu-system-x86 1 ? 2 /x.deb\n", "is none of <, >, ="),
    ("VERSION 3\n\n\x1b[2Jevil\n", "\\x1b[2Jevil"),
])
def test_input_that_is_not_apts_protocol_is_refused_with_why(text, said):
    with pytest.raises(apthook.HookInputError) as error:
        parse_hook_input(text)
    assert said in str(error.value)
    assert "\x1b" not in str(error.value)


@pytest.mark.parametrize("name, expected", [
    ("qemu-system-x86", True), ("qemu-system-arm", True), ("qemu-system-common", True), ("qemu-system-data", True),
    ("qemu-kvm", True), ("libvirt-daemon", True), ("libvirt-daemon-driver-qemu", True),
    ("libvirt-daemon-system", True), ("libvirt0", True),
    ("qemu-utils", False), ("qemu-guest-agent", False), ("libvirt-clients", False), ("python3-libvirt", False),
    ("ovmf", False), ("hello", False),
])
def test_the_watched_packages(name, expected):
    assert watched(name) is expected


def _entry(name: str, outcome: str, connection: str = URI, uuid: str = UUID, image: str | None = None) -> dict:
    return {"connection": connection, "name": name, "uuid": uuid, "outcome": outcome, "persistent": image is None,
            "memory_kib": 262144, "image": image}


def _record(*entries: dict, started: float = 1_700_000_000.0) -> dict:
    return {"format": state.RECORD_FORMAT, "kind": "shutdown", "version": state.RECORD_VERSION,
            "mgsave_version": "0.1.0", "started": started, "finished": started + 10,
            "guests": {state.guest_record_key(e["connection"], e["uuid"]): e for e in entries}}


def test_held_images_are_the_saved_guests_of_this_hosts_qemu_whose_image_is_still_there():
    record = _record(
        _entry("web", "saved", uuid="00000000-0000-0000-0000-000000000001"),
        _entry("resumed-since", "saved", uuid="00000000-0000-0000-0000-000000000002"),
        _entry("tmp", "saved-to-file", uuid="00000000-0000-0000-0000-000000000003",
               image="/var/lib/mgsave/images/00000000-0000-0000-0000-000000000003.save"),
        _entry("off", "shut-down", uuid="00000000-0000-0000-0000-000000000004"),
        _entry("far", "saved", connection="qemu+ssh://peer/system", uuid="00000000-0000-0000-0000-000000000005"),
        _entry("test", "saved", connection="test:///default", uuid="00000000-0000-0000-0000-000000000006"),
        _entry("restored", "saved-to-file", uuid="00000000-0000-0000-0000-000000000007",
               image="/var/lib/mgsave/images/00000000-0000-0000-0000-000000000007.save"),
    )
    there = {"/var/lib/libvirt/qemu/save/web.save", "/var/lib/mgsave/images/00000000-0000-0000-0000-000000000003.save",
             "/var/lib/mgsave/images/00000000-0000-0000-0000-000000000007.save"}
    used = {f"{URI} 00000000-0000-0000-0000-000000000007"}
    held = held_images(record, used, exists=there.__contains__)
    assert [(h.name, h.image) for h in held] == [
        ("web", None), ("tmp", "/var/lib/mgsave/images/00000000-0000-0000-0000-000000000003.save")]
    assert held_images(None) == []


def test_a_name_no_file_can_have_counts_as_held():
    record = _record(_entry("../../etc/passwd", "saved"))
    assert [h.name for h in held_images(record, exists=lambda path: False)] == ["../../etc/passwd"]


QEMU = [PackageChange("qemu-system-x86", "1:7.2", "1:8.2", Change.UPGRADE)]
HELD = [HeldImage("web", URI, None, 1_700_000_000.0), HeldImage("evil\x1b[2J", URI, None, 1_700_000_000.0)]


def test_nothing_to_say_without_a_watched_change_or_without_a_held_image():
    hello = [PackageChange("hello", "1", "2", Change.UPGRADE)]
    assert decide(hello, HELD, OnSavedImages.REFUSE, None) == apthook.Verdict((), False)
    assert decide(QEMU, [], OnSavedImages.REFUSE, None) == apthook.Verdict((), False)


def test_warn_names_the_change_the_guests_and_what_to_do():
    verdict = decide(QEMU, HELD, OnSavedImages.WARN, "/etc/mgsave/policy.yaml")
    assert not verdict.refuse
    text = "\n".join(verdict.lines)
    assert "qemu-system-x86 1:7.2 -> 1:8.2: upgrade" in text
    assert "2 guests are saved and not resumed yet" in text
    assert "  web on qemu:///system: saved " in text and "evil\\x1b[2J on" in text and "\x1b" not in text
    assert "mgsave boot" in text and "apt-mark hold qemu-system-x86" in text
    assert verdict.lines[-1] == ("apt goes on (upgrades.on_saved_images: warn in /etc/mgsave/policy.yaml; "
                                 "refuse stops it)")


def test_refuse_says_so():
    verdict = decide(QEMU, HELD[:1], OnSavedImages.REFUSE, "/etc/mgsave/policy.yaml")
    assert verdict.refuse
    assert "1 guest is saved" in verdict.lines[1]
    assert verdict.lines[-1].startswith("refusing: apt stops before it unpacks anything")


# -- run: the records and the policy as the hook reads them -------------------------------------


@pytest.fixture
def host(tmp_path, monkeypatch):
    """A state directory with a shutdown record holding one saved guest ('web', its managed-save
    image in a directory of this test), and a policy file."""
    directory = tmp_path / "state"
    directory.mkdir(mode=0o755)
    saves = tmp_path / "save"
    saves.mkdir()
    (saves / "web.save").write_bytes(b"LibvirtQemudSave")
    monkeypatch.setattr(apthook, "managed_save_dir", lambda uri: str(saves))
    state.write_json_atomic(directory / state.SHUTDOWN_RECORD, _record(_entry("web", "saved"), started=time.time()))
    policy = tmp_path / "policy.yaml"
    policy.write_text("version: 1\n")
    return {"MGSAVE_STATE_DIR": str(directory), "MGSAVE_POLICY": str(policy), "_saves": saves, "_policy": policy}


def _run(env: dict, text: str = V3) -> apthook.Verdict:
    return apthook.run(text.encode(), {k: v for k, v in env.items() if not k.startswith("_")})


def test_run_warns_by_default_and_refuses_when_the_policy_says_so(host):
    assert not _run(host).refuse and "1 guest is saved" in _run(host).lines[1]
    assert _run(host).lines[-1].startswith("apt goes on")
    host["_policy"].write_text("version: 1\nupgrades: {on_saved_images: refuse}\n")
    assert _run(host).refuse


def test_run_says_nothing_when_no_image_is_held_or_no_watched_package_changes(host):
    assert _run(host, "VERSION 3\n\nhello 1 amd64 none < 2 amd64 none /h.deb\n") == apthook.Verdict((), False)
    (host["_saves"] / "web.save").unlink()
    assert _run(host) == apthook.Verdict((), False)


def test_a_broken_policy_only_warns_and_says_so(host):
    host["_policy"].write_text("version: 1\nupgrades: {on_saved_images: refusee}\n")
    verdict = _run(host)
    assert not verdict.refuse
    assert verdict.lines[-1].startswith("the policy cannot be read (") and "mgsave check" in verdict.lines[-1]


def test_a_state_directory_others_can_write_to_is_not_read(host):
    Path(host["MGSAVE_STATE_DIR"]).chmod(0o777)
    verdict = _run(host)
    assert not verdict.refuse and len(verdict.lines) == 1
    assert verdict.lines[0].startswith("apt hook: cannot tell which guests are saved (the state directory")


def test_a_damaged_record_is_one_line(host):
    (Path(host["MGSAVE_STATE_DIR"]) / state.SHUTDOWN_RECORD).write_text("{not json")
    verdict = _run(host)
    assert not verdict.refuse and len(verdict.lines) == 1 and "not valid JSON" in verdict.lines[0]


# -- the shell wrapper, run -----------------------------------------------------------------------


def _tree(tmp_path: Path) -> Path:
    """The hook and libmgsave side by side, as in this tree: the wrapper finds them there."""
    tree = tmp_path / "tree"
    (tree / "hooks").mkdir(parents=True)
    shutil.copy(ROOT / "hooks/mgsave-apt-hook", tree / "hooks")
    shutil.copytree(ROOT / "libmgsave", tree / "libmgsave",
                    ignore=shutil.ignore_patterns("__pycache__"))
    return tree


def _hook(tree: Path, env: dict, text: str = V3) -> subprocess.CompletedProcess:
    # The wrapper runs the python3 on PATH when not installed: this test's.
    path = f"{Path(sys.executable).parent}:/usr/bin:/bin"
    clean = {k: v for k, v in env.items() if not k.startswith("_")}
    return subprocess.run([str(tree / "hooks/mgsave-apt-hook")], input=text.encode(), capture_output=True,
                          env={"PATH": path, **clean}, timeout=60)


def test_the_wrapper_passes_the_refusal_on_and_nothing_else(tmp_path, host):
    tree = _tree(tmp_path)
    # The wrapper's Python is another process, blind to this test's stand-in for libvirt's
    # managed-save directory: a transient guest's save file in the state directory, then.
    directory = state.StateDir(Path(host["MGSAVE_STATE_DIR"]))
    directory.images.mkdir(mode=0o700)
    Path(transient_image_path(directory.path, UUID)).write_bytes(b"LibvirtQemudSave")
    record = _record(_entry("web", "saved-to-file", image=str(transient_image_path(directory.path, UUID))), started=time.time())
    state.write_json_atomic(directory.shutdown_record, record)
    out = _hook(tree, host)
    assert out.returncode == 0 and out.stdout == b"", out
    said = out.stderr.decode().splitlines()
    assert said[0].startswith("mgsave: apt is about to change what resumes saved guests: qemu-system-x86 ")
    assert any(line.startswith("mgsave:   web on qemu:///system: saved ") for line in said), said
    host["_policy"].write_text("version: 1\nupgrades: {on_saved_images: refuse}\n")
    out = _hook(tree, host)
    assert out.returncode == apthook.REFUSE_EXIT == 75, out
    assert out.stderr.decode().splitlines()[-1].startswith("mgsave: refusing: apt stops")
    # Broken Python code: one line, exit 0, even when refusing was asked for.
    (tree / "libmgsave/apthook.py").write_text("def broken(:\n")
    out = _hook(tree, host)
    assert out.returncode == 0, out
    assert out.stderr.decode().splitlines()[-1] == (
        "mgsave: apt hook: failed (exit code 1: mgsave's Python code is broken or missing); apt goes on")


def test_no_guest_saved_no_word(tmp_path, host):
    (host["_saves"] / "web.save").unlink()
    out = _hook(_tree(tmp_path), host)
    assert (out.returncode, out.stdout, out.stderr) == (0, b"", b""), out


def test_the_apt_command_goes_on_when_mgsave_is_removed_and_stops_only_on_the_refusal(tmp_path):
    """The apt.conf.d file is a conffile: it stays after `apt-get remove mgsave`, the hook does not."""
    conf = (ROOT / "hooks/apt.conf").read_text()
    (command,) = re.findall(r'Pre-Install-Pkgs \{ "(.*)"; \};', conf)
    assert f"DPkg::Tools::Options::{command.split()[0]}::Version \"3\";" in conf  # apt keys it by the first word
    gone = command.replace("@HOOKDIR@", str(tmp_path / "gone"))
    out = subprocess.run(["/bin/sh", "-c", gone], input=b"VERSION 3\n\n", capture_output=True)
    assert out.returncode == 0 and len(out.stderr.decode().splitlines()) == 1, out
    hookdir = tmp_path / "hooks"
    hookdir.mkdir()
    for rc, expected in ((0, 0), (1, 0), (75, 1)):
        (hookdir / "mgsave-apt-hook").write_text(f"#!/bin/sh\nexit {rc}\n")
        (hookdir / "mgsave-apt-hook").chmod(0o755)
        out = subprocess.run(["/bin/sh", "-c", command.replace("@HOOKDIR@", str(hookdir))], capture_output=True)
        assert out.returncode == expected, (rc, out)


def test_the_hook_imports_no_libvirt():
    """Fast and independent of libvirtd: no libvirt binding, no connection."""
    code = (f"import sys; sys.path.insert(0, {str(ROOT)!r}); import libmgsave.apthook, libmgsave.policyfile, libmgsave.state; "
            "print(json.dumps(sorted(m for m in sys.modules if 'libvirt' in m or 'hypervisor' in m)))")
    out = subprocess.run([sys.executable, "-I", "-c", "import json; " + code], capture_output=True, text=True,
                         cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == []


def test_a_policy_validated_before_is_taken_from_the_passes_cache(host):
    """The hook reads the policy as the passes do: once validated, the same bytes are not parsed
    again (no YAML, no schema), from a cache only root can write."""
    from libmgsave.policyfile import cache

    host["_policy"].write_text("version: 1\nupgrades: {on_saved_images: refuse}\n")
    key = cache.cache_path(Path(host["MGSAVE_STATE_DIR"]), str(host["_policy"]))
    assert not key.exists()
    assert _run(host).refuse and key.exists()
    stamp = key.stat().st_mtime_ns
    assert _run(host).refuse and key.stat().st_mtime_ns == stamp
