"""A host booted with a real systemd as PID 1: ``systemd-nspawn -b`` over an overlay.

The lower layer is a root filesystem that stays untouched: this machine's own ``/`` (a Debian 12
host) or a cached root of another release (``tests.rig.debian_root``). The upper layer is a
tmpfs kept mounted across boots, so what an install put there survives the "reboot", and the
directories a real host keeps on disk are persistent binds:

    /var/lib/libvirt   libvirt's state, managed-save images
    /etc/libvirt       a copy of the lower root's config, qemu.conf set for root + TCG in a container
    /var/log/libvirt   libvirt's logs and the test guests' serial consoles (their heartbeat)
    /var/lib/mgsave    mgsave's state directory
    /var/log/journal   the persistent journal, read afterwards from outside

The container has a private network (only loopback). Guests are defined and read through the
container's libvirt socket from outside.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import stat
import subprocess
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pytest

SERIAL_DIR = "rig-serial"  # under /var/log/libvirt, as tests.rig.guests puts it
CONTAINER_ENV = ["env", "-i", "PATH=/usr/sbin:/usr/bin:/sbin:/bin", "HOME=/root", "LANG=C.UTF-8",
                 "SYSTEMD_COLORS=0", "SYSTEMD_PAGER=", "PAGER=cat"]
QEMU_CONF = """
# mgsave test: QEMU as root, no MAC driver, and no cgroup controllers (the container's v1
# controllers are read-only); systemd still puts each guest in a machine scope.
user = "root"
group = "root"
security_driver = "none"
cgroup_controllers = [ ]
"""
_TICK = re.compile(rb"^tick (\d+)\r?$", re.M)
_BOOT = re.compile(rb"^rig: init up ", re.M)


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() not in ("", "0", "false", "no")


def unavailable(reason: str):
    if in_ci():
        pytest.fail(f"systemd container test cannot run under CI: {reason}", pytrace=False)
    pytest.skip(reason)


@dataclass
class Container:
    """This machine's root booted by systemd-nspawn, as many times as wanted, as one host."""

    workdir: Path
    lower: Path = Path("/")
    machine_uuid: str = field(default_factory=lambda: uuid.uuid4().hex)
    binds_ro: list[str] = field(default_factory=list)
    nspawn: subprocess.Popen | None = None
    pid1: int | None = None
    boots: int = 0
    exit_status: int | None = None  # systemd-nspawn's, after the last go_down
    mounted: list[Path] = field(default_factory=list)

    @property
    def root(self) -> Path:
        return self.workdir / "root"

    def dir(self, name: str) -> Path:
        return self.workdir / name

    def prepare(self) -> None:
        """Mount the overlay and lay out the persistent directories and libvirt's config."""
        for name in ("ovl", "root", "lib", "etc", "log", "mgsave", "journal"):
            self.dir(name).mkdir(parents=True, exist_ok=True)
        subprocess.run(["mount", "-t", "tmpfs", "-o", "mode=0755", "tmpfs", str(self.dir("ovl"))], check=True)
        self.mounted.append(self.dir("ovl"))
        (self.dir("ovl") / "upper").mkdir()
        # nspawn copies the machine's /dev/null with its mode; where that is not 0666 (seen: 0644),
        # no service user in the container can open it (Debian 13's dbus failed to start, and
        # systemd-machined waited 90 s for it). The container gets a proper one.
        null = self.dir("ovl") / "null"
        os.mknod(null, stat.S_IFCHR | 0o666, os.makedev(1, 3))
        null.chmod(0o666)
        (self.dir("ovl") / "work").mkdir()
        options = f"lowerdir={self.lower},upperdir={self.dir('ovl')}/upper,workdir={self.dir('ovl')}/work"
        subprocess.run(["mount", "-t", "overlay", "overlay", "-o", options, str(self.root)], check=True)
        self.mounted.append(self.root)

        etc = self.dir("etc")
        shutil.copytree(self.lower / "etc/libvirt", etc, dirs_exist_ok=True, symlinks=True)
        # Only what this test defines: no guests or autostarted networks of this machine's config.
        for pattern in ("qemu/*.xml", "qemu/autostart/*", "qemu/networks/autostart/*"):
            for path in etc.glob(pattern):
                path.unlink()
        conf = etc / "qemu.conf"
        ours = re.compile(r"^\s*(user|group|security_driver|cgroup_controllers)\s*=")
        kept = [line for line in conf.read_text().splitlines() if not ours.match(line)]
        conf.write_text("\n".join(kept) + "\n" + QEMU_CONF)
        (self.dir("log") / SERIAL_DIR).mkdir(exist_ok=True)

    def write(self, path: str, text: str, mode: int = 0o644) -> None:
        """Put a file into the host's root (the overlay's upper layer), as the admin would."""
        target = self.root / path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
        target.chmod(mode)

    def boot(self, timeout: float = 180, wait: bool = True) -> float:
        """Boot; returns seconds until systemd reports the boot finished (the boot pass included),
        or, without ``wait``, until the host's systemd runs."""
        assert self.nspawn is None
        started = time.monotonic()
        command = [
            "systemd-nspawn", "-D", str(self.root), "--register=no", "--keep-unit", "--link-journal=no",
            f"--uuid={self.machine_uuid}", "--private-network", "--quiet",
            f"--bind={self.dir('lib')}:/var/lib/libvirt",
            f"--bind={self.dir('etc')}:/etc/libvirt",
            f"--bind={self.dir('log')}:/var/log/libvirt",
            f"--bind={self.dir('mgsave')}:/var/lib/mgsave",
            f"--bind={self.dir('journal')}:/var/log/journal",
            *(f"--bind-ro={path}" for path in self.binds_ro),
            f"--bind={self.dir('ovl') / 'null'}:/dev/null",
            "-b",
        ]
        self.boots += 1
        console = open(self.workdir / f"console-{self.boots}.log", "wb")
        self.nspawn = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=console, stderr=subprocess.STDOUT,
                                       start_new_session=True)
        console.close()
        self.pid1 = self._find_pid1(started + 60)
        if not wait:
            return time.monotonic() - started
        state = ""
        while state in ("", "offline") and time.monotonic() - started < timeout:
            # Until PID 1 has created /run/systemd/system this says "offline"; until it listens on
            # its bus it fails at once and says nothing.
            out = self.run("systemctl", "is-system-running", "--wait", check=False, timeout=timeout)
            state = out.stdout.strip()
            if state in ("", "offline"):
                time.sleep(0.1)
        seconds = time.monotonic() - started
        if state not in ("running", "degraded"):
            raise AssertionError(f"boot {self.boots} ended {state!r}; console:\n{self.console_tail()}")
        return seconds

    def _find_pid1(self, deadline: float) -> int:
        while time.monotonic() < deadline:
            if self.nspawn.poll() is not None:
                raise AssertionError(f"systemd-nspawn exited {self.nspawn.returncode}:\n{self.console_tail()}")
            for child in children(self.nspawn.pid):
                if comm(child) == "systemd":
                    return child
            time.sleep(0.05)
        raise AssertionError("the container's systemd did not show up")

    def console_tail(self, n: int = 4000) -> str:
        path = self.workdir / f"console-{self.boots}.log"
        return path.read_text(errors="replace")[-n:] if path.exists() else ""

    def run(self, *command: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess:
        """Run a command inside the running container (all of its namespaces, a clean environment)."""
        assert self.pid1 is not None, "the container is not running"
        out = subprocess.run(["nsenter", "-t", str(self.pid1), "-a", *CONTAINER_ENV, *command],
                             capture_output=True, text=True, timeout=timeout)
        if check and out.returncode != 0:
            raise AssertionError(f"{' '.join(command)} exited {out.returncode}:\n{out.stdout}\n{out.stderr}")
        return out

    def poweroff(self, timeout: float = 1200) -> float:
        """``systemctl poweroff`` inside; returns seconds until the container has exited."""
        return self.go_down("poweroff", timeout)

    def go_down(self, verb: str, timeout: float = 1200) -> float:
        """``systemctl <verb>`` inside (poweroff, reboot, halt...); returns seconds until the
        container has exited. systemd-nspawn ends at a reboot too, with exit status 133
        (``exit_status`` keeps it; a power-off: 0): the next ``boot`` is the reboot."""
        started = time.monotonic()
        self.run("systemctl", verb, check=False)
        try:
            self.exit_status = self.nspawn.wait(timeout=timeout)
        finally:
            seconds = time.monotonic() - started
            if self.nspawn.poll() is None:
                self.kill()
        self.nspawn = self.pid1 = None
        return seconds

    def kill(self) -> None:
        """Stop the container at once: SIGKILL to its PID 1 ends its whole PID namespace."""
        if self.nspawn is None:
            return
        if self.nspawn.poll() is None:
            if self.pid1 is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.pid1, signal.SIGKILL)
            try:
                self.nspawn.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.nspawn.kill()
                self.nspawn.wait(timeout=30)
        self.nspawn = self.pid1 = None

    def close(self) -> None:
        self.kill()
        for path in reversed(self.mounted):
            subprocess.run(["umount", "-l", str(path)], check=False)
        self.mounted.clear()
        shutil.rmtree(self.workdir, ignore_errors=True)

    # -- libvirt, the guests' heartbeat, the journal, seen from outside --

    def connect(self):
        import libvirt

        socket_path = Path(f"/proc/{self.pid1}/root/run/libvirt/libvirt-sock")
        deadline = time.monotonic() + 60
        while not socket_path.exists():
            if time.monotonic() > deadline:
                raise AssertionError("the container's libvirt socket never appeared")
            time.sleep(0.2)
        return libvirt.open(f"qemu+unix:///system?socket={socket_path}")

    def serial(self, name: str) -> bytes:
        try:
            return (self.dir("log") / SERIAL_DIR / f"{name}.log").read_bytes()
        except FileNotFoundError:
            return b""

    def ticks(self, name: str) -> list[int]:
        return [int(t) for t in _TICK.findall(self.serial(name))]

    def guest_boots(self, name: str) -> int:
        return len(_BOOT.findall(self.serial(name)))

    def wait_ticking(self, names, after: dict[str, int] | None = None, timeout: float = 180) -> float:
        started = time.monotonic()
        after = after or {}
        while True:
            if all((self.ticks(n) or [0])[-1] > after.get(n, 0) for n in names):
                return time.monotonic() - started
            if time.monotonic() - started > timeout:
                tails = {n: self.serial(n)[-300:] for n in names}
                raise AssertionError(f"guests not ticking after {timeout} s: {tails}")
            time.sleep(0.2)

    def journal(self, *matches: str, since: float | None = None, until: float | None = None) -> list[dict]:
        """Journal entries (journalctl -o json) of this host, optionally between two wall-clock times."""
        directories = [str(p) for p in self.dir("journal").iterdir() if p.is_dir()]
        entries = []
        for directory in directories:
            out = subprocess.run(["journalctl", "-D", directory, "-o", "json", "--no-pager", *matches],
                                 capture_output=True, text=True)
            entries += [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
        def inside(entry: dict) -> bool:
            t = int(entry["__REALTIME_TIMESTAMP"]) / 1e6
            return (since is None or t >= since) and (until is None or t <= until)
        return sorted(filter(inside, entries), key=lambda e: int(e["__REALTIME_TIMESTAMP"]))


def children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(p) for p in f.read().split()]
    except OSError:
        return []


def comm(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return ""


@contextlib.contextmanager
def prepared_host(prefix: str, lower: Path = Path("/")):
    """A Container over ``lower`` with the rig's guest image bound in, prepared (not booted) and
    removed afterwards; a missing piece skips the test (fails it under CI)."""
    from tests.rig.image import ImageBuildError, ensure_image

    try:
        image = ensure_image()
    except ImageBuildError as error:
        unavailable(f"cannot build the test guest: {error}")
    workdir = Path(tempfile.mkdtemp(prefix=prefix, dir="/var/tmp"))
    c = Container(workdir, lower=lower, binds_ro=[str(image.kernel.parent)])
    try:
        try:
            c.prepare()
        except subprocess.CalledProcessError as error:
            unavailable(f"cannot mount the container's overlay: {error}")
        yield c
    finally:
        c.close()
