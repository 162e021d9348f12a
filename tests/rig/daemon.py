"""A private libvirtd for tests, isolated from any libvirtd already running on the machine.

``Rig.start()`` moves the *current process* into a new mount namespace (``unshare(CLONE_NEWNS)``),
makes every mount in it private, and mounts over libvirt's paths:

    /run/libvirt        tmpfs (sockets, pid files, running-domain status)
    /var/lib/libvirt    <workdir>/lib    (managed-save images land in qemu/save here)
    /etc/libvirt        <workdir>/etc    (the package's *.conf files, qemu.conf edited for root + TCG)
    /var/log/libvirt    <workdir>/log    (libvirtd.log, virtlogd.log, qemu/<guest>.log, rig-serial/)
    /var/cache/libvirt  <workdir>/cache
    /var/lib/mgsave     <workdir>/mgsave (mgsave's default state directory)

``<workdir>`` is a fresh directory on the real disk (``/var/tmp/mgsave-rig-*``; save images are
hundreds of MB each, so not a tmpfs). Then it starts ``virtlogd -d`` and ``libvirtd -d``. Everything
started from this process afterwards (tests, an ``mgsave`` subprocess, the daemons, QEMU) sees the
private mounts, so it all uses plain ``qemu:///system`` and libvirt's normal paths. Other processes
on the machine, including a system libvirtd, see none of it.

``Rig.stop()`` destroys and undefines every guest, kills the daemons and anything else left in the
namespace, returns the process to the original mount namespace and removes ``<workdir>``.
A rig whose owner died without stopping it is cleaned up by the next ``Rig.start()``.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import errno
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

from .image import PREBUILT_ENV

URI = "qemu:///system"

CLONE_NEWNS = 0x00020000
MS_NOSUID, MS_NODEV, MS_BIND, MS_REC, MS_PRIVATE = 2, 4, 4096, 16384, 1 << 18
MNT_DETACH = 2

LIBVIRT_DIRS = {           # mount point -> workdir subdirectory (None: tmpfs)
    "/run/libvirt": None,
    "/var/lib/libvirt": "lib",
    "/etc/libvirt": "etc",
    "/var/log/libvirt": "log",
    "/var/cache/libvirt": "cache",
    "/var/lib/mgsave": "mgsave",   # mgsave's default state directory: private too
}
SAVE_DIR = "/var/lib/libvirt/qemu/save"
SERIAL_DIR = "/var/log/libvirt/rig-serial"
MGSAVE_STATE_DIR = "/var/lib/mgsave"
LIBVIRTD_PID = "/run/libvirt/rig-libvirtd.pid"
VIRTLOGD_PID = "/run/libvirt/rig-virtlogd.pid"
LIBVIRTD_LOG = "/var/log/libvirt/libvirtd.log"

QEMU_CONF = {
    "user": '"root"',
    "group": '"root"',
    "security_driver": '"none"',
    # Keep QEMU in the rig's mount namespace (so cleanup finds it) and out of the host's cgroups.
    "namespaces": "[ ]",
    "cgroup_controllers": "[ ]",
}
LIBVIRTD_CONF = {
    "log_outputs": '"3:file:/var/log/libvirt/libvirtd.log"',
}
VIRTLOGD_CONF = {
    "log_outputs": '"3:file:/var/log/libvirt/virtlogd.log"',
}

REQUIRED_BINARIES = ("libvirtd", "virtlogd", "qemu-system-x86_64", "virsh")
_BIN_DIRS = ("/usr/sbin", "/usr/bin", "/sbin", "/bin")
DEFAULT_PARENT = "/var/tmp"
WORKDIR_PREFIX = "mgsave-rig-"

_libc = ctypes.CDLL(None, use_errno=True)


class RigError(RuntimeError):
    pass


def _check(ret: int, what: str) -> None:
    if ret != 0:
        e = ctypes.get_errno()
        raise OSError(e, f"{what}: {os.strerror(e)}")


def _mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    _check(_libc.mount(source.encode() if source else None, target.encode(),
                       fstype.encode() if fstype else None, ctypes.c_ulong(flags),
                       data.encode() if data else None), f"mount {target}")


def _umount(target: str) -> None:
    _check(_libc.umount2(target.encode(), MNT_DETACH), f"umount {target}")


def _which(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    for d in _BIN_DIRS:
        p = os.path.join(d, name)
        if os.access(p, os.X_OK):
            return p
    return None


def _threads() -> int:
    return len(os.listdir("/proc/self/task"))


def _mntns(pid: int | str = "self") -> int | None:
    try:
        return os.stat(f"/proc/{pid}/ns/mnt").st_ino
    except OSError:
        return None


def _start_time(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _pids_in_mntns(ns: int) -> list[int]:
    me = os.getpid()
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit() and int(d) != me and _mntns(d) == ns:
            out.append(int(d))
    return out


def _kill_all(pids: list[int], timeout: float = 10.0) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for p in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(p, sig)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            pids = [p for p in pids if os.path.exists(f"/proc/{p}") and not _is_zombie(p)]
            if not pids:
                return
            time.sleep(0.1)


def _is_zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def _set_conf(path: Path, values: dict[str, str]) -> None:
    text = path.read_text() if path.exists() else ""
    for key in values:
        text = re.sub(rf"(?m)^\s*{re.escape(key)}\s*=.*$", f"# (mgsave test rig) overridden: {key}", text)
    text += "\n# --- mgsave test rig ---\n" + "".join(f"{k} = {v}\n" for k, v in values.items())
    path.write_text(text)


def unavailable_reason() -> str | None:
    """Why a rig cannot run on this machine (None if it can)."""
    if os.geteuid() != 0:
        return "the test rig needs root (it runs a private libvirtd and QEMU)"
    missing = [b for b in REQUIRED_BINARIES if not _which(b)]
    if missing:
        return (f"the test rig needs {', '.join(missing)} (Debian packages libvirt-daemon-system, "
                "libvirt-clients, qemu-system-x86; run scripts/setup)")
    if not os.path.exists("/bin/busybox") and not os.environ.get(PREBUILT_ENV):
        # (only to build the guest image: not needed when it was built before)
        return "the test rig needs /bin/busybox (Debian package busybox-static; run scripts/setup)"
    try:
        import libvirt  # noqa: F401
    except ImportError:
        return ("the test rig needs the libvirt Python bindings (Debian's python3-libvirt, or the .venv "
                "of scripts/setup)")
    return None


def sweep_stale(parent: str = DEFAULT_PARENT) -> None:
    """Clean up after rigs whose owner process died without stopping them."""
    try:
        entries = os.listdir(parent)
    except OSError:
        return
    for name in entries:
        if not name.startswith(WORKDIR_PREFIX):
            continue
        wd = Path(parent) / name
        try:
            owner = json.loads((wd / "owner.json").read_text())
        except (OSError, ValueError):
            # Not yet written (a rig starting right now) or broken; only remove old ones.
            with contextlib.suppress(OSError):
                if time.time() - wd.stat().st_mtime > 3600:
                    shutil.rmtree(wd, ignore_errors=True)
            continue
        if _start_time(owner["pid"]) == owner["start_time"] and not _is_zombie(owner["pid"]):
            continue                                    # its owner is alive
        if owner.get("mntns"):
            _kill_all(_pids_in_mntns(owner["mntns"]))
        shutil.rmtree(wd, ignore_errors=True)


class Rig:
    """A private libvirtd (see the module docstring). Use ``start()``/``stop()`` or ``with Rig():``."""

    uri = URI

    def __init__(self, parent: str | None = None) -> None:
        self.parent = parent or os.environ.get("MGSAVE_RIG_TMPDIR") or DEFAULT_PARENT
        self.workdir: Path | None = None
        self.started = False
        self.start_seconds: float | None = None
        self._orig_ns: int | None = None
        self._ns: int | None = None
        self._mounts: list[str] = []
        self._extra_mounts: list[str] = []

    # --- life cycle ---

    def __enter__(self) -> "Rig":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> "Rig":
        if self.started:
            return self
        t0 = time.monotonic()
        reason = unavailable_reason()
        if reason:
            raise RigError(reason)
        if _threads() != 1:
            raise RigError("the rig must be started while the process is single-threaded "
                           f"(it has {_threads()} threads): unshare(CLONE_NEWNS) needs that")
        sweep_stale(self.parent)
        os.makedirs(self.parent, exist_ok=True)
        self.workdir = Path(tempfile.mkdtemp(prefix=WORKDIR_PREFIX, dir=self.parent))
        os.chmod(self.workdir, 0o755)
        try:
            self._prepare_workdir()
            self._enter_namespace()
            (self.workdir / "owner.json").write_text(json.dumps(
                {"pid": os.getpid(), "start_time": _start_time(os.getpid()), "mntns": self._ns}))
            self.started = True
            self.start_daemons()
        except BaseException:
            self.stop()
            raise
        self.start_seconds = time.monotonic() - t0
        atexit.register(self.stop)       # an owner exiting without stop() still cleans up
        return self

    def stop(self) -> None:
        """Destroy every guest, stop the daemons, leave the machine as it was found."""
        atexit.unregister(self.stop)
        if self._ns is not None and _mntns() == self._ns:
            with contextlib.suppress(Exception):
                if self.libvirtd_running():
                    self.remove_all_guests()
            self.stop_daemons()
            _kill_all(_pids_in_mntns(self._ns))
            self._leave_namespace()
        if self.workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = None
        self.started = False

    def _prepare_workdir(self) -> None:
        wd = self.workdir
        for sub in ("lib", "etc", "log", "cache", "mgsave"):
            (wd / sub).mkdir(mode=0o755)
        # Config: the package's top-level *.conf files only (no domains, networks, pools, filters
        # from the machine's own libvirt), with the settings a root TCG rig needs.
        for f in Path("/etc/libvirt").glob("*.conf"):
            shutil.copyfile(f, wd / "etc" / f.name)
        _set_conf(wd / "etc" / "qemu.conf", QEMU_CONF)
        _set_conf(wd / "etc" / "libvirtd.conf", LIBVIRTD_CONF)
        _set_conf(wd / "etc" / "virtlogd.conf", VIRTLOGD_CONF)
        os.chmod(wd / "etc" / "qemu.conf", 0o600)
        for d in ("qemu", "qemu/autostart"):
            (wd / "etc" / d).mkdir(mode=0o755)
        for d in ("qemu/save", "qemu/snapshot", "qemu/dump", "qemu/nvram", "images", "boot"):
            (wd / "lib" / d).mkdir(parents=True, mode=0o711)
        for d in ("qemu", "rig-serial"):
            (wd / "log" / d).mkdir(mode=0o755)
        (wd / "cache" / "qemu").mkdir(mode=0o711)

    def _enter_namespace(self) -> None:
        self._orig_ns = os.open("/proc/self/ns/mnt", os.O_RDONLY | os.O_CLOEXEC)
        self._cwd = os.getcwd()
        # Mount points must exist in the real file system. One we create stays (an empty
        # directory): removing it would detach the mounts of another rig running at the same
        # time (Linux lets a mount point of another namespace be removed, and unmounts it there).
        for mp in LIBVIRT_DIRS:
            os.makedirs(mp, exist_ok=True)
        _check(_libc.unshare(CLONE_NEWNS), "unshare(CLONE_NEWNS)")
        self._ns = _mntns()
        _mount(None, "/", None, MS_REC | MS_PRIVATE)
        for mp, sub in LIBVIRT_DIRS.items():
            if sub is None:
                _mount("mgsave-rig", mp, "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755")
            else:
                _mount(str(self.workdir / sub), mp, None, MS_BIND)
            self._mounts.append(mp)
        # /var/run is a symlink to /run on Debian; if it is not, cover it too.
        if os.path.realpath("/var/run/libvirt") != "/run/libvirt" and os.path.isdir("/var/run/libvirt"):
            _mount("/run/libvirt", "/var/run/libvirt", None, MS_BIND)
            self._mounts.append("/var/run/libvirt")
        os.makedirs(SERIAL_DIR, exist_ok=True)

    def _leave_namespace(self) -> None:
        for mp in reversed(self._extra_mounts + self._mounts):
            with contextlib.suppress(OSError):
                _umount(mp)
        self._mounts, self._extra_mounts = [], []
        if self._orig_ns is not None:
            if _threads() == 1:
                try:
                    _check(_libc.setns(self._orig_ns, CLONE_NEWNS), "setns")
                    os.chdir(self._cwd)
                except OSError:
                    pass   # stay in the (now empty) private namespace; it dies with the process
            os.close(self._orig_ns)
            self._orig_ns = None
        self._ns = None

    def host_mntns_path(self) -> str:
        """A path naming the mount namespace the rig left (for ``nsenter --mount=...``)."""
        self._require_inside()
        return f"/proc/{os.getpid()}/fd/{self._orig_ns}"

    def _require_inside(self) -> None:
        if not self.started or _mntns() != self._ns:
            raise RigError("the rig is not running in this process")

    # --- daemons ---

    @staticmethod
    def _read_pid(path: str) -> int | None:
        try:
            pid = int(Path(path).read_text().strip())
        except (OSError, ValueError):
            return None
        return pid if os.path.exists(f"/proc/{pid}") and not _is_zombie(pid) else None

    def libvirtd_running(self) -> bool:
        return self._read_pid(LIBVIRTD_PID) is not None

    def start_daemons(self) -> None:
        self._require_inside()
        if self._read_pid(VIRTLOGD_PID) is None:
            self._spawn(["virtlogd", "-d", "-p", VIRTLOGD_PID])
        self.start_libvirtd()

    def _spawn(self, argv: list[str]) -> None:
        exe = _which(argv[0])
        proc = subprocess.run([exe] + argv[1:], stdin=subprocess.DEVNULL, capture_output=True,
                              text=True, timeout=60, close_fds=True)
        if proc.returncode != 0:
            raise RigError(f"{' '.join(argv)} failed ({proc.returncode}): "
                           f"{(proc.stderr or proc.stdout).strip()}\n{self.libvirtd_log_tail()}")

    def start_libvirtd(self, timeout: float = 60.0) -> None:
        """Start libvirtd (if it is not running) and wait until qemu:///system answers."""
        self._require_inside()
        if not self.libvirtd_running():
            self._spawn(["libvirtd", "-d", "-p", LIBVIRTD_PID])
        import libvirt
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            try:
                conn = libvirt.open(URI)
                try:
                    conn.getLibVersion()
                    return
                finally:
                    conn.close()
            except libvirt.libvirtError as exc:
                last = exc
                time.sleep(0.1)
        raise RigError(f"libvirtd did not answer on {URI} within {timeout:.0f} s: {last}\n"
                       f"{self.libvirtd_log_tail()}")

    def stop_libvirtd(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> None:
        """Stop libvirtd (guests keep running, as with a real daemon restart)."""
        self._require_inside()
        pid = self._read_pid(LIBVIRTD_PID)
        if pid is None:
            return
        os.kill(pid, sig)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self._read_pid(LIBVIRTD_PID) == pid:
            time.sleep(0.05)
        if self._read_pid(LIBVIRTD_PID) == pid:
            os.kill(pid, signal.SIGKILL)
            time.sleep(0.2)
        with contextlib.suppress(OSError):
            os.unlink(LIBVIRTD_PID)

    def restart_libvirtd(self) -> None:
        self.stop_libvirtd()
        self.start_libvirtd()

    def stop_daemons(self) -> None:
        for pidfile in (LIBVIRTD_PID, VIRTLOGD_PID):
            pid = self._read_pid(pidfile)
            if pid is not None:
                _kill_all([pid])

    def libvirtd_log_tail(self, lines: int = 30) -> str:
        try:
            text = Path(LIBVIRTD_LOG).read_text(errors="replace").splitlines()
        except OSError:
            return "(no libvirtd log)"
        return "libvirtd.log:\n" + "\n".join(text[-lines:])

    # --- guests and faults ---

    def connect(self):
        import libvirt
        self._require_inside()
        return libvirt.open(URI)

    def remove_all_guests(self) -> None:
        """Destroy and undefine every guest, with its managed-save image."""
        from .guests import cleanup
        conn = self.connect()
        try:
            cleanup(conn)
        finally:
            conn.close()

    def reset(self) -> None:
        """Between tests: libvirtd up, fault mounts gone, no guests, no save images, no serial
        logs, an empty /var/lib/mgsave."""
        self._require_inside()
        self.release_save_dir()
        if not self.libvirtd_running():
            self.start_daemons()
        self.remove_all_guests()
        for d in (SAVE_DIR, SERIAL_DIR, MGSAVE_STATE_DIR):
            for f in Path(d).iterdir():
                with contextlib.suppress(OSError):
                    shutil.rmtree(f) if f.is_dir() else f.unlink()

    def limit_save_dir(self, size_mib: int) -> str:
        """Mount a tmpfs of ``size_mib`` MiB over the managed-save directory ("no room" faults).

        Undone by ``release_save_dir()`` (and by ``reset()`` between tests)."""
        self._require_inside()
        _mount("mgsave-rig-save", SAVE_DIR, "tmpfs", MS_NOSUID | MS_NODEV, f"size={size_mib}m,mode=0711")
        self._extra_mounts.append(SAVE_DIR)
        return SAVE_DIR

    def release_save_dir(self) -> None:
        while self._extra_mounts:
            with contextlib.suppress(OSError):
                _umount(self._extra_mounts.pop())

    @contextlib.contextmanager
    def save_dir_limited(self, size_mib: int):
        self.limit_save_dir(size_mib)
        try:
            yield SAVE_DIR
        finally:
            self.release_save_dir()
