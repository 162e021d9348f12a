"""Two libvirt "hosts" on one machine, for tests that move guests between hosts.

Each host is a private libvirtd (``Rig``) run by its own child process inside its own network
namespace, so the two have their own ``/run/libvirt``, ``/var/lib/libvirt``, ``/etc/libvirt``
(with a distinct ``host_uuid``: libvirt refuses to migrate to "the same host" by UUID) and their
own address on a veth pair between the two namespaces. libvirtd listens on plain TCP without
authentication there (``auth_tcp = "none"``), which is acceptable only because nothing outside
the two namespaces can reach those addresses: the machine's own network namespace has neither
end of the pair.

    with HostPair() as (a, b):
        conn = a.connect()                          # through A's Unix socket, from this process
        ...migrate to b.tcp_uri ...
        a.run([sys.executable, "-m", "libmgsave", ...])   # a command "on host A"

Guests for such tests put their serial log in ``HostPair.serial_dir`` (seen the same by both
hosts), so their heartbeat can be followed across a move; the rig's kernel and initramfs live
in the cache, which both hosts see too.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from .daemon import DEFAULT_PARENT, RigError, Rig, _which

# An address block reserved for documentation (RFC 5737), used only inside the pair's own
# namespaces.
NETWORK = "192.0.2"
PREFIX = 24
REPO = Path(__file__).resolve().parents[2]


@dataclass
class PeerHost:
    name: str
    netns: str
    address: str
    workdir: Path
    process: subprocess.Popen | None = None

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    @property
    def socket(self) -> str:
        return f"/proc/{self.pid}/root/run/libvirt/libvirt-sock"

    @property
    def unix_uri(self) -> str:
        """This host's qemu:///system, reached from the test process."""
        return f"qemu+unix:///system?socket={self.socket}"

    @property
    def tcp_uri(self) -> str:
        """The URI the *other* host (and a command run on it) uses to reach this one."""
        return f"qemu+tcp://{self.address}/system"

    def connect(self):
        import libvirt

        return libvirt.open(self.unix_uri)

    def run(self, argv: list[str], **kwargs) -> subprocess.CompletedProcess:
        """Run a command on this host: in its mount and network namespaces."""
        return subprocess.run(["nsenter", "-t", str(self.pid), "-m", "-n", "--wd=" + str(REPO), *argv], **kwargs)

    def libvirtd_pid(self) -> int | None:
        try:
            return int(Path(f"/proc/{self.pid}/root/run/libvirt/rig-libvirtd.pid").read_text())
        except (OSError, ValueError):
            return None


class HostPair:
    """Two ``PeerHost``s on a veth pair; a context manager yielding ``(a, b)``."""

    def __init__(self, parent: str | None = None):
        self.parent = parent or os.environ.get("MGSAVE_RIG_TMPDIR") or DEFAULT_PARENT
        tag = secrets.token_hex(3)
        self.workdir = Path(tempfile.mkdtemp(prefix="mgsave-peers-", dir=self.parent))
        os.chmod(self.workdir, 0o755)
        self.serial_dir = self.workdir / "serial"
        self.serial_dir.mkdir()
        self.hosts = [PeerHost(name, f"mgsave-{name}-{tag}", f"{NETWORK}.{i}", self.workdir / name)
                      for i, name in ((1, "a"), (2, "b"))]

    def __enter__(self) -> tuple[PeerHost, PeerHost]:
        try:
            self._network()
            for host in self.hosts:
                self._start(host)
        except BaseException:
            self.close()
            raise
        return tuple(self.hosts)

    def __exit__(self, *exc) -> None:
        self.close()

    def _network(self) -> None:
        for tool in ("ip", "nsenter"):
            if not _which(tool):
                raise RigError(f"the two-host rig needs {tool} (Debian packages iproute2, util-linux)")
        a, b = self.hosts
        for host in self.hosts:
            _ip("netns", "add", host.netns)
        _ip("link", "add", "mgs-a", "netns", a.netns, "type", "veth", "peer", "name", "mgs-b", "netns", b.netns)
        for host, dev in ((a, "mgs-a"), (b, "mgs-b")):
            _ip("-n", host.netns, "addr", "add", f"{host.address}/{PREFIX}", "dev", dev)
            _ip("-n", host.netns, "link", "set", dev, "up")
            _ip("-n", host.netns, "link", "set", "lo", "up")

    def _start(self, host: PeerHost, timeout: float = 90) -> None:
        host.workdir.mkdir()
        ready = host.workdir / "ready"
        log = open(host.workdir / "host.log", "w")
        host.process = subprocess.Popen(
            ["ip", "netns", "exec", host.netns, sys.executable, "-m", "tests.rig.peers", str(host.workdir),
             host.address, str(uuid.uuid4())],
            cwd=REPO, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        deadline = time.monotonic() + timeout
        while not ready.exists():
            if host.process.poll() is not None or time.monotonic() > deadline:
                raise RigError(f"host {host.name} did not come up:\n{(host.workdir / 'host.log').read_text()[-3000:]}")
            time.sleep(0.1)

    def kill_libvirtd(self, host: PeerHost, sig: int = signal.SIGKILL) -> None:
        """The host's daemon dies (its guests keep running, as on a real host)."""
        pid = host.libvirtd_pid()
        if pid:
            os.kill(pid, sig)

    def close(self) -> None:
        for host in self.hosts:
            if host.process is not None and host.process.poll() is None:
                host.process.send_signal(signal.SIGTERM)
                try:
                    host.process.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    host.process.kill()
                    host.process.wait()
        for host in self.hosts:
            subprocess.run(["ip", "netns", "del", host.netns], capture_output=True)
        import shutil

        shutil.rmtree(self.workdir, ignore_errors=True)


def _ip(*args: str) -> None:
    out = subprocess.run(["ip", *args], capture_output=True, text=True)
    if out.returncode != 0:
        raise RigError(f"ip {' '.join(args)}: {out.stderr.strip()}")


class _ListeningRig(Rig):
    """A Rig whose libvirtd listens on TCP at ``address`` and migrates over it."""

    def __init__(self, workdir: Path, address: str, host_uuid: str):
        super().__init__(parent=str(workdir))
        self.address = address
        self.host_uuid = host_uuid

    def _prepare_workdir(self) -> None:
        super()._prepare_workdir()
        from .daemon import _set_conf

        etc = self.workdir / "etc"
        _set_conf(etc / "libvirtd.conf", {"listen_tcp": "1", "listen_tls": "0", "auth_tcp": '"none"',
                                          "listen_addr": f'"{self.address}"', "host_uuid": f'"{self.host_uuid}"'})
        # Without migration_host the peer is told this host's name, which does not resolve here.
        _set_conf(etc / "qemu.conf", {"migration_address": f'"{self.address}"',
                                      "migration_host": f'"{self.address}"'})

    def start_libvirtd(self, timeout: float = 60.0) -> None:
        if not self.libvirtd_running():
            self._spawn(["libvirtd", "-d", "--listen", "-p", "/run/libvirt/rig-libvirtd.pid"])
        super().start_libvirtd(timeout)


def _serve(workdir: str, address: str, host_uuid: str) -> None:
    """The child process of one host: set it up, say so, and keep it until SIGTERM."""
    rig = _ListeningRig(Path(workdir), address, host_uuid)
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(True))
    rig.start()
    try:
        (Path(workdir) / "ready").write_text(str(rig.workdir))
        while not stop:
            time.sleep(0.2)
    finally:
        with contextlib.suppress(Exception):
            rig.stop()


if __name__ == "__main__":
    _serve(*sys.argv[1:4])
