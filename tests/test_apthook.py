"""The apt hook run by a real apt, with mgsave's .deb installed, on Debian 12 and Debian 13 roots.

Each root is an overlay (``tests.rig.container.Container``: this machine's root for Debian 12,
the cached root of ``tests.rig.debian_root`` for Debian 13) in which ``systemd-nspawn`` runs
one command at a time: apt needs no booted systemd. In each, in order:

  install   ``apt-get install ./mgsave.deb``: /etc/apt/apt.conf.d/20mgsave is there
  warn      a shutdown record (mgsave's own writer) holding a guest saved on qemu:///system, its
            managed-save image in libvirt's directory: apt changes a QEMU package, the hook names
            the guest and what to do, and apt goes on (the package is unpacked)
  refuse    ``upgrades: {on_saved_images: refuse}``: apt stops before it unpacks anything
  resumed   the image gone (as when the guest resumes), still ``refuse``: the hook says nothing
  broken    the image back, a syntax error planted in the installed apthook.py: one line, apt goes on
  removed   ``apt-get remove mgsave`` (its apt.conf.d file stays, a conffile): apt goes on

The QEMU package: on Debian 12, ``apt-get install --reinstall qemu-system-x86`` from apt's cache
(this machine's apt downloaded it when QEMU was installed). The Debian 13 root keeps no .deb of
QEMU and the container has no network: there apt installs local packages built by this test
with dpkg-deb and named like QEMU's (``qemu-system-apthooktest``), version 1 then version 2 (a
real upgrade through apt, the same hook protocol).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from libmgsave import state
from tests.rig.container import Container, unavailable
from tests.rig.deb import DebBuildError, build_deb

pytestmark = [pytest.mark.rig, pytest.mark.package]

GUEST = "apt-saved"
UUID = "5a7e0000-1111-2222-3333-444455556666"
URI = "qemu:///system"
DEB_IN_ROOT = "/var/cache/mgsave-test/mgsave.deb"
FAKE = "qemu-system-apthooktest"
APT = ("apt-get", "-y", "--no-install-recommends", "-o", "Dpkg::Use-Pty=0")
INSTALLED_HOOK = "/usr/lib/python3/dist-packages/libmgsave/apthook.py"


def _reason() -> str | None:
    if os.geteuid() != 0:
        return "needs root"
    for tool in ("systemd-nspawn", "dpkg-deb", "make"):
        if not shutil.which(tool):
            return f"{tool} is not installed"
    return None


@pytest.fixture(scope="module")
def package(tmp_path_factory) -> Path:
    """``make deb`` in a copy of this tree once for the module (or ``$MGSAVE_DEB``)."""
    reason = _reason()
    if reason:
        unavailable(reason)
    given = os.environ.get("MGSAVE_DEB")
    if given:
        return Path(given)
    try:
        return build_deb(tmp_path_factory.mktemp("deb"))
    except DebBuildError as error:
        unavailable(str(error))


class Root:
    """A Debian root under an overlay; each ``run`` is one ``systemd-nspawn`` command in it."""

    def __init__(self, lower: Path):
        self.c = Container(Path(tempfile.mkdtemp(prefix="mgsave-apt-", dir="/var/tmp")), lower=lower)

    def __enter__(self) -> Root:
        try:
            self.c.prepare()
        except subprocess.CalledProcessError as error:
            self.c.close()
            unavailable(f"cannot mount the overlay: {error}")
        return self

    def __exit__(self, *exc) -> None:
        self.c.close()

    def path(self, inside: str) -> Path:
        return self.c.root / inside.lstrip("/")

    def run(self, *command: str, timeout: float = 600) -> subprocess.CompletedProcess:
        return subprocess.run(
            ["systemd-nspawn", "-D", str(self.c.root), "--register=no", "--keep-unit", "--link-journal=no",
             f"--uuid={self.c.machine_uuid}", f"--machine=mgsave-apt-{self.c.machine_uuid[:8]}", "--quiet",
             "--private-network",
             f"--bind={self.c.dir('ovl') / 'null'}:/dev/null",
             "env", "-i", "PATH=/usr/sbin:/usr/bin:/sbin:/bin", "LANG=C.UTF-8", "DEBIAN_FRONTEND=noninteractive",
             *command], capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def _said(out: subprocess.CompletedProcess) -> list[str]:
    return [line for line in (out.stdout + out.stderr).splitlines() if line.startswith("mgsave:")]


def _unpacked(out: subprocess.CompletedProcess, name: str) -> bool:
    return f"Unpacking {name} " in out.stdout


def _fake_qemu(root: Root, version: str) -> str:
    """A package named like QEMU's, built with dpkg-deb; its path inside the root."""
    build = root.c.workdir / f"fake-{version}"
    (build / "DEBIAN").mkdir(parents=True)
    (build / "usr/share/doc" / FAKE).mkdir(parents=True)
    (build / "usr/share/doc" / FAKE / "README").write_text(f"mgsave's apt hook test, version {version}\n")
    (build / "DEBIAN/control").write_text(
        f"Package: {FAKE}\nVersion: {version}\nArchitecture: all\nMaintainer: mgsave test <root@localhost>\n"
        f"Description: stands for a QEMU package in mgsave's apt hook test\n")
    inside = f"/var/cache/mgsave-test/{FAKE}_{version}_all.deb"
    root.path(inside).parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(["dpkg-deb", "--root-owner-group", "-b", str(build), str(root.path(inside))], check=True,
                   capture_output=True)
    return inside


def _saved_guest(root: Root, *, image: bool = True) -> None:
    """The shutdown record of a pass that saved GUEST (mgsave's writer), and its managed-save image."""
    directory = root.path("/var/lib/mgsave")
    directory.mkdir(mode=0o755, exist_ok=True)
    record = {"format": state.RECORD_FORMAT, "kind": "shutdown", "version": state.RECORD_VERSION,
              "mgsave_version": "0.1.0", "started": time.time() - 60, "finished": time.time() - 50,
              "guests": {state.guest_record_key(URI, UUID): {
                  "connection": URI, "name": GUEST, "uuid": UUID, "outcome": "saved", "persistent": True,
                  "memory_kib": 262144, "image": None}}}
    state.write_json_atomic(directory / state.SHUTDOWN_RECORD, record)
    saves = root.path("/var/lib/libvirt/qemu/save")
    saves.mkdir(parents=True, exist_ok=True)
    if image:
        (saves / f"{GUEST}.save").write_bytes(b"LibvirtQemudSave" + b"\0" * 4096)
    else:
        (saves / f"{GUEST}.save").unlink(missing_ok=True)


def _policy(root: Root, text: str) -> None:
    root.path("/etc/mgsave/policy.yaml").write_text(text)


def _debian12_qemu_change(root: Root):
    """``apt-get install --reinstall qemu-system-x86`` from apt's cache, when the cache has it."""
    version = subprocess.run(["dpkg-query", "-W", "-f=${Version}", "qemu-system-x86"], capture_output=True,
                             text=True).stdout.strip()
    cached = Path("/var/cache/apt/archives") / f"qemu-system-x86_{version.replace(':', '%3a')}_amd64.deb"
    if not version or not cached.is_file():
        unavailable(f"apt's cache has no qemu-system-x86 {version or '(not installed)'}")
    return lambda: root.run(*APT, "install", "--reinstall", "qemu-system-x86"), "qemu-system-x86"


def _debian13_qemu_change(root: Root):
    """Version 1 of the stand-in installed (a fresh install: nothing to say), then each change
    is an upgrade to version 2 (and back to 1 afterwards, unless apt was stopped)."""
    one, two = _fake_qemu(root, "1"), _fake_qemu(root, "2")
    out = root.run(*APT, "install", one)
    assert out.returncode == 0 and not _said(out), out.stdout + out.stderr

    def change():
        out = root.run(*APT, "install", two)
        if _unpacked(out, FAKE):
            root.run("dpkg", "-r", FAKE)
            assert root.run(*APT, "install", one).returncode == 0
        return out
    return change, FAKE


def _lower(name: str) -> Path:
    if name == "debian12":
        return Path("/")
    from tests.rig.debian_root import RootBuildError, ensure_root

    try:
        return ensure_root(log=lambda line: None)
    except RootBuildError as error:
        unavailable(f"cannot build the Debian 13 root: {error}")


@pytest.mark.parametrize("release", ["debian12", pytest.param("debian13", marks=pytest.mark.debian13)])
def test_apt_with_saved_guests(package, release):
    if release == "debian12":
        status = subprocess.run(["dpkg-query", "-W", "-f=${Status}", "mgsave"], capture_output=True, text=True)
        if "installed" in status.stdout.split():
            unavailable("mgsave is installed on this machine itself: its root is the container's")
    with Root(_lower(release)) as root:
        target = root.path(DEB_IN_ROOT)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(package, target)
        out = root.run(*APT, "install", DEB_IN_ROOT)
        assert out.returncode == 0, out.stdout + out.stderr
        assert root.path("/etc/apt/apt.conf.d/20mgsave").is_file()
        change, name = (_debian12_qemu_change if release == "debian12" else _debian13_qemu_change)(root)

        # warn (the installed policy: every setting commented out)
        _saved_guest(root)
        out = change()
        said = _said(out)
        assert out.returncode == 0 and _unpacked(out, name), out.stdout + out.stderr
        assert said[0].startswith(f"mgsave: apt is about to change what resumes saved guests: {name} "), said
        assert any(line.startswith(f"mgsave:   {GUEST} on {URI}: saved ") for line in said), said
        assert any(f"apt-mark hold {name}" in line for line in said), said
        assert said[-1] == ("mgsave: apt goes on (upgrades.on_saved_images: warn in /etc/mgsave/policy.yaml; "
                            "refuse stops it)")

        # refuse: apt stops before unpacking
        _policy(root, "version: 1\nupgrades: {on_saved_images: refuse}\n")
        out = change()
        assert out.returncode != 0 and not _unpacked(out, name), out.stdout + out.stderr
        assert any(line.startswith("mgsave: refusing: apt stops before it unpacks anything") for line in _said(out))

        # resumed since: nothing held, not a word, apt goes on
        _saved_guest(root, image=False)
        out = change()
        assert out.returncode == 0 and _unpacked(out, name), out.stdout + out.stderr
        assert _said(out) == []

        # mgsave's Python broken: one line, apt goes on although the policy says refuse
        _saved_guest(root)
        root.path(INSTALLED_HOOK).write_text("def broken(:\n")
        out = change()
        assert out.returncode == 0 and _unpacked(out, name), out.stdout + out.stderr
        assert _said(out) == ["mgsave: apt hook: failed (exit code 1: mgsave's Python code is broken or missing); "
                              "apt goes on"]

        # mgsave removed, its apt.conf.d file (a conffile) kept: apt goes on
        out = root.run(*APT, "remove", "mgsave")
        assert out.returncode == 0, out.stdout + out.stderr
        assert root.path("/etc/apt/apt.conf.d/20mgsave").is_file()
        out = change()
        assert out.returncode == 0 and _unpacked(out, name), out.stdout + out.stderr
        # The shell's one line, and apt goes on (only the hook's own refusal, 75, stops it).
        assert [line for line in (out.stdout + out.stderr).splitlines() if "mgsave-apt-hook" in line] == \
            ["/bin/sh: 1: /usr/lib/mgsave/mgsave-apt-hook: not found"], out.stdout + out.stderr
