"""The tiny test guest: a Debian kernel and a busybox initramfs, built at test time and cached.

The guest's /init mounts proc/sys/devtmpfs, fills ``fill=<MiB>`` of a tmpfs from /dev/urandom (so a
save image holds real, incompressible memory; with ``fill_kind=text``, that randomness written as
base64 text, which a compressed image format shrinks by about a quarter), then writes ``tick <n>`` to /dev/ttyS0 once a second
forever. Unless the kernel command line says ``ignore_acpi=1`` it loads the ACPI button driver and
powers off (``poweroff -f``) when the power button is pressed (an ACPI shutdown request). With
``agent=1`` (and the domain's ``org.qemu.guest_agent.0`` channel, see ``guests.domain_xml``) it
runs QEMU's guest agent: Debian's ``qemu-ga`` with the shared libraries it needs, copied from the
host (they are QEMU's own dependencies, so a host that runs the rig has them), and busybox's
``hwclock`` where the agent looks for it, so ``guest-set-time`` works.

Lines it writes to the serial console (besides kernel messages):

    rig: init up fill=<MiB> ignore_acpi=<0|1>       once per boot (so a count of these = boots)
    rig: power button armed (<device>)               the power-button watcher is running
    rig: filled <MiB> MiB                            the fill is done
    rig: agent up (<device>)                         qemu-ga runs on the agent's virtio port
    tick <n>                                         once a second, n = 1, 2, ...
    rig: power button pressed, powering off

The build needs apt (to download the kernel and guest agent packages), dpkg-deb and /bin/busybox
(busybox-static).
Everything is cached under ``${XDG_CACHE_HOME:-$HOME/.cache}/mgsave-testrig``, keyed by content:
the kernel package name and version, and a hash of the initramfs's inputs.

``MGSAVE_RIG_IMAGE=<dir>`` makes ``ensure_image()`` use an image built before (``<dir>`` holds its
``vmlinuz`` and ``initrd.gz``: a ``guest-<hash>`` directory of the cache) and build nothing: a rig
in another root (e.g. a Debian 13 one, ``tests/test_debian13_rig.py``) runs the very guest this
machine built, without apt, busybox or a kernel package of its own.
"""

from __future__ import annotations

import dataclasses
import fcntl
import gzip
import hashlib
import io
import lzma
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

# Bump when the initramfs layout changes in a way the hashed inputs don't show.
BUILD_FORMAT = 4

BUSYBOX = Path("/bin/busybox")
PREBUILT_ENV = "MGSAVE_RIG_IMAGE"
KERNEL_META_PACKAGE = "linux-image-amd64"
# Kernel modules the power-button handling needs (with their dependencies, resolved from the .ko).
MODULES = ("evdev", "button")
# ... and those the guest agent's virtio-serial port needs.
AGENT_MODULES = ("virtio_pci", "virtio_console")
AGENT_PACKAGE = "qemu-guest-agent"
AGENT_BINARY = "usr/sbin/qemu-ga"

INIT_SCRIPT = r"""#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
exec </dev/null >/dev/ttyS0 2>&1

fill=0
fill_kind=random
ignore_acpi=0
agent=0
for arg in $(cat /proc/cmdline); do
    case "$arg" in
        fill=*) fill="${arg#fill=}" ;;
        fill_kind=*) fill_kind="${arg#fill_kind=}" ;;
        ignore_acpi=*) ignore_acpi="${arg#ignore_acpi=}" ;;
        agent=*) agent="${arg#agent=}" ;;
    esac
done
echo "rig: init up fill=$fill ignore_acpi=$ignore_acpi agent=$agent"

if [ "$agent" = 1 ]; then
    for m in $(cat /lib/modules/agent-load-order); do
        insmod "/lib/modules/$m.ko" || echo "rig: insmod $m failed"
    done
    # The device announces its ports after the module has loaded, asynchronously: on a loaded
    # host the port can appear seconds later, so look for it for up to a minute.
    port=""
    tries=0
    while [ -z "$port" ] && [ "$tries" -lt 600 ]; do
        for p in /sys/class/virtio-ports/*; do
            [ "$(cat "$p/name" 2>/dev/null)" = org.qemu.guest_agent.0 ] && port="/dev/${p##*/}"
        done
        [ -n "$port" ] && [ -e "$port" ] && break
        port=""
        tries=$((tries + 1))
        sleep 0.1
    done
    if [ -n "$port" ]; then
        mkdir -p /run/qga
        /usr/sbin/qemu-ga -m virtio-serial -p "$port" -f /run/qga/pid -t /run/qga -l /run/qga/log &
        echo "rig: agent up ($port)"
    else
        echo "rig: no guest agent port found"
    fi
fi

if [ "$ignore_acpi" != 1 ]; then
    for m in $(cat /lib/modules/load-order); do
        insmod "/lib/modules/$m.ko" || echo "rig: insmod $m failed"
    done
    armed=0
    for ev in /sys/class/input/event*; do
        [ -e "$ev/device/name" ] || continue
        if [ "$(cat "$ev/device/name")" = "Power Button" ]; then
            dev="/dev/input/${ev##*/}"
            # One input event from the power button (a press) is enough.
            ( dd if="$dev" of=/dev/null bs=24 count=1 2>/dev/null
              echo "rig: power button pressed, powering off"
              sync
              poweroff -f ) &
            echo "rig: power button armed ($dev)"
            armed=1
        fi
    done
    [ "$armed" = 1 ] || echo "rig: no power button found"
fi

mkdir -p /fill
mount -t tmpfs -o size=$((fill + 8))m tmpfs /fill
if [ "$fill" -gt 0 ] && [ "$fill_kind" = text ]; then
    # compressible: random bytes written as base64 text (6 bits of every 8 carry information)
    dd if=/dev/urandom bs=1M count=$((fill * 3 / 4 + 1)) 2>/dev/null | base64 | head -c $((fill * 1048576)) >/fill/data
elif [ "$fill" -gt 0 ]; then
    dd if=/dev/urandom of=/fill/data bs=1M count="$fill" 2>/dev/null
fi
echo "rig: filled $fill MiB"

n=0
while :; do
    n=$((n + 1))
    echo "tick $n"
    sleep 1
done
"""


@dataclasses.dataclass(frozen=True)
class GuestImage:
    kernel: Path
    initrd: Path
    kernel_package: str   # e.g. "linux-image-6.1.0-56-amd64=6.1.192-2"


class ImageBuildError(RuntimeError):
    pass


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "mgsave-testrig"


def _run(cmd: list[str], **kw) -> str:
    try:
        proc = subprocess.run(cmd, check=True, capture_output=True, text=True, **kw)
    except FileNotFoundError as exc:
        raise ImageBuildError(f"{cmd[0]} is not installed") from exc
    except subprocess.CalledProcessError as exc:
        raise ImageBuildError(f"{' '.join(cmd)} failed: {exc.stderr.strip()}") from exc
    return proc.stdout


def _apt_env() -> dict:
    env = dict(os.environ)
    env.setdefault("DEBIAN_FRONTEND", "noninteractive")
    return env


def _apt_lists_stamp() -> str:
    lists = Path("/var/lib/apt/lists")
    try:
        st = [(p.name, p.stat().st_mtime_ns, p.stat().st_size) for p in lists.iterdir() if p.is_file()]
    except OSError:
        return ""
    return hashlib.sha256(repr(sorted(st)).encode()).hexdigest()


def _remembered(memo: Path, compute) -> list[str]:
    """``compute()`` (a list of words), remembered in ``memo`` until apt's package lists change
    (each apt-cache look-up takes about a second)."""
    stamp = _apt_lists_stamp()
    try:
        saved_stamp, *words = memo.read_text().split()
        if stamp and saved_stamp == stamp and words:
            return words
    except (OSError, ValueError):
        pass
    words = list(compute())
    stamp = _apt_lists_stamp()     # apt-get update may have run
    if stamp:
        memo.write_text(" ".join([stamp, *words]) + "\n")
    return words


def _kernel_package_cached(cache: Path) -> tuple[str, str]:
    """_kernel_package(), remembered until apt's package lists change."""
    pkg, version = _remembered(cache / "kernel-package", _kernel_package)
    return pkg, version


def _agent_version_cached(cache: Path) -> str:
    """The candidate version of qemu-guest-agent, remembered until apt's package lists change."""
    def look_up() -> list[str]:
        policy = _run(["apt-cache", "policy", AGENT_PACKAGE], env=_apt_env())
        v = re.search(r"Candidate:\s*(\S+)", policy)
        if not v or v.group(1) == "(none)":
            raise ImageBuildError(f"apt knows no {AGENT_PACKAGE} package (apt-get update?)")
        return [v.group(1)]

    return _remembered(cache / "agent-package", look_up)[0]


def _unpack_package(spec: str, tmp: Path) -> Path:
    """Download ``spec`` (``name=version``) with apt into ``tmp`` and unpack it; its root."""
    # apt's sandbox user cannot write to a root-only temp dir; downloading as root is fine.
    _run(["apt-get", "download", "-q", "-o", "APT::Sandbox::User=root", spec], cwd=tmp, env=_apt_env())
    debs = list(tmp.glob("*.deb"))
    if len(debs) != 1:
        raise ImageBuildError(f"apt-get download {spec} gave {debs}")
    root = tmp / "root"
    _run(["dpkg-deb", "-x", str(debs[0]), str(root)])
    return root


def _extract_agent(dest: Path, version: str) -> None:
    """qemu-ga from Debian's package, and the shared libraries it loads, resolved on this host."""
    with tempfile.TemporaryDirectory(prefix="agent-", dir=dest.parent) as tmp:
        tmp = Path(tmp)
        binary = _unpack_package(f"{AGENT_PACKAGE}={version}", tmp) / AGENT_BINARY
        out = tmp / "out"
        (out / "libs").mkdir(parents=True)
        shutil.copyfile(binary, out / "qemu-ga")
        # "libfoo.so.1 => /lib/x86_64-linux-gnu/libfoo.so.1 (0x...)", and the loader itself.
        listing = _run([_loader(), "--list", str(binary)])
        paths = re.findall(r"=>\s*(/\S+)", listing) + re.findall(r"^\s*(/lib\S*ld-linux\S*)", listing, re.M)
        if not paths or "not found" in listing:
            raise ImageBuildError(f"cannot resolve the libraries of qemu-ga:\n{listing}")
        for path in paths:
            shutil.copyfile(os.path.realpath(path), out / "libs" / os.path.basename(path))
        (out / "libs.list").write_text("\n".join(paths) + "\n")
        os.rename(out, dest)


def _loader() -> str:
    for path in ("/lib64/ld-linux-x86-64.so.2", "/lib/ld-linux-aarch64.so.1"):
        if os.path.exists(path):
            return path
    raise ImageBuildError("no dynamic loader found to resolve qemu-ga's libraries")


def _kernel_package() -> tuple[str, str]:
    """(package, version) of the kernel image linux-image-amd64 currently depends on."""
    for attempt in range(2):
        try:
            out = _run(["apt-cache", "depends", KERNEL_META_PACKAGE], env=_apt_env())
            m = re.search(r"Depends:\s*(linux-image-\S+)", out)
            if m:
                pkg = m.group(1)
                policy = _run(["apt-cache", "policy", pkg], env=_apt_env())
                v = re.search(r"Candidate:\s*(\S+)", policy)
                if v and v.group(1) != "(none)":
                    return pkg, v.group(1)
        except ImageBuildError:
            if attempt:
                raise
        if attempt == 0 and os.geteuid() == 0:
            _run(["apt-get", "update", "-q"], env=_apt_env())   # no package lists yet
    raise ImageBuildError(f"cannot find the kernel package {KERNEL_META_PACKAGE} depends on "
                          "(apt-cache depends/policy)")


def _modinfo_depends(data: bytes) -> list[str]:
    m = re.search(rb"(?:^|\0)depends=([^\0]*)\0", data)
    if not m or not m.group(1):
        return []
    return [d.decode() for d in m.group(1).split(b",") if d]


def _read_module(path: Path) -> bytes:
    data = path.read_bytes()
    if path.name.endswith(".ko.xz"):
        return lzma.decompress(data)
    if path.name.endswith(".ko"):
        return data
    raise ImageBuildError(f"cannot decompress kernel module {path}")


def _extract_kernel(dest: Path, pkg: str, version: str) -> None:
    """Download the kernel package and keep vmlinuz plus the modules we need (deps resolved)."""
    with tempfile.TemporaryDirectory(prefix="kernel-", dir=dest.parent) as tmp:
        tmp = Path(tmp)
        root = _unpack_package(f"{pkg}={version}", tmp)
        vmlinuz = sorted((root / "boot").glob("vmlinuz-*"))
        if not vmlinuz:
            raise ImageBuildError(f"{pkg} has no boot/vmlinuz-*")
        out = tmp / "out"
        (out / "modules").mkdir(parents=True)
        shutil.copyfile(vmlinuz[0], out / "vmlinuz")

        by_name = {}
        for ko in (root / "lib" / "modules").rglob("*.ko*"):
            name = ko.name.split(".ko")[0].replace("-", "_")
            by_name[name] = ko
        order: list[str] = []

        def add(name: str) -> None:
            name = name.replace("-", "_")
            if name in order:
                return
            if name not in by_name:
                raise ImageBuildError(f"kernel module {name} not in {pkg} (built in?)")
            data = _read_module(by_name[name])
            for dep in _modinfo_depends(data):
                add(dep)
            (out / "modules" / f"{name}.ko").write_bytes(data)
            order.append(name)

        for name in MODULES:
            add(name)
        (out / "modules" / "load-order").write_text("\n".join(order) + "\n")
        order = []
        for name in AGENT_MODULES:
            add(name)
        (out / "modules" / "agent-load-order").write_text("\n".join(order) + "\n")
        (out / "package").write_text(f"{pkg}={version}\n")
        os.rename(out, dest)


# --- cpio "newc" writer (device nodes without mknod, deterministic output) ---

class _Cpio:
    def __init__(self) -> None:
        self.buf = io.BytesIO()
        self.ino = 1

    def _entry(self, name: str, mode: int, data: bytes = b"", rdev: tuple[int, int] = (0, 0)) -> None:
        nameb = name.encode() + b"\0"
        fields = [self.ino, mode, 0, 0, 1, 0, len(data), 0, 0, rdev[0], rdev[1], len(nameb), 0]
        self.ino += 1
        hdr = b"070701" + b"".join(b"%08X" % f for f in fields)
        self.buf.write(hdr + nameb)
        self.buf.write(b"\0" * (-(len(hdr) + len(nameb)) % 4))
        self.buf.write(data)
        self.buf.write(b"\0" * (-len(data) % 4))

    def dir(self, name: str, perm: int = 0o755) -> None:
        self._entry(name, 0o040000 | perm)

    def file(self, name: str, data: bytes, perm: int = 0o644) -> None:
        self._entry(name, 0o100000 | perm, data)

    def symlink(self, name: str, target: str) -> None:
        self._entry(name, 0o120777, target.encode())

    def chardev(self, name: str, major: int, minor: int, perm: int = 0o600) -> None:
        self._entry(name, 0o020000 | perm, rdev=(major, minor))

    def finish(self) -> bytes:
        self._entry("TRAILER!!!", 0)
        data = self.buf.getvalue()
        return data + b"\0" * (-len(data) % 512)


def _build_initrd(kernel_dir: Path, agent_dir: Path, busybox: bytes) -> bytes:
    c = _Cpio()
    for d in ("bin", "sbin", "dev", "proc", "sys", "tmp", "run", "fill", "lib", "lib/modules", "usr", "usr/sbin"):
        c.dir(d)
    c.chardev("dev/console", 5, 1)
    c.chardev("dev/null", 1, 3, 0o666)
    c.file("bin/busybox", busybox, 0o755)
    c.symlink("bin/sh", "busybox")
    c.symlink("sbin/hwclock", "/bin/busybox")  # where qemu-ga runs it for guest-set-time
    c.file("init", INIT_SCRIPT.encode(), 0o755)
    mods = kernel_dir / "modules"
    order = (mods / "load-order").read_text().split() + (mods / "agent-load-order").read_text().split()
    for name in ("load-order", "agent-load-order"):
        c.file(f"lib/modules/{name}", (mods / name).read_bytes())
    for name in dict.fromkeys(order):
        c.file(f"lib/modules/{name}.ko", (mods / f"{name}.ko").read_bytes())
    c.file("usr/sbin/qemu-ga", (agent_dir / "qemu-ga").read_bytes(), 0o755)
    made = {"lib"}
    for path in (agent_dir / "libs.list").read_text().split():
        parts = Path(path.lstrip("/")).parts
        for i in range(1, len(parts)):
            parent = "/".join(parts[:i])
            if parent not in made:
                c.dir(parent)
                made.add(parent)
        c.file("/".join(parts), (agent_dir / "libs" / parts[-1]).read_bytes(), 0o755)
    raw = c.finish()
    out = io.BytesIO()
    with gzip.GzipFile(fileobj=out, mode="wb", mtime=0, compresslevel=6) as gz:
        gz.write(raw)
    return out.getvalue()


_built: GuestImage | None = None


def prebuilt() -> GuestImage | None:
    """The image ``$MGSAVE_RIG_IMAGE`` names, if set; ImageBuildError if it is not there."""
    given = os.environ.get(PREBUILT_ENV)
    if not given:
        return None
    image = GuestImage(Path(given) / "vmlinuz", Path(given) / "initrd.gz", f"prebuilt {Path(given).name}")
    missing = [str(p) for p in (image.kernel, image.initrd) if not p.is_file()]
    if missing:
        raise ImageBuildError(f"{PREBUILT_ENV}={given}: no {' and no '.join(missing)}")
    return image


def ensure_image() -> GuestImage:
    """Build (or find in the cache) the guest kernel and initramfs; returns their paths.

    With ``$MGSAVE_RIG_IMAGE`` set, that image, and nothing is built."""
    global _built
    if _built and _built.kernel.exists() and _built.initrd.exists():
        return _built
    given = prebuilt()
    if given:
        _built = given
        return _built
    if not BUSYBOX.exists():
        raise ImageBuildError(f"{BUSYBOX} is missing (Debian package busybox-static)")
    cache = cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    with open(cache / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        pkg, version = _kernel_package_cached(cache)
        modules = hashlib.sha256(repr((MODULES, AGENT_MODULES)).encode()).hexdigest()[:8]
        kernel_dir = cache / f"kernel-{pkg}-{version}-{modules}"
        if not (kernel_dir / "vmlinuz").exists():
            shutil.rmtree(kernel_dir, ignore_errors=True)
            _extract_kernel(kernel_dir, pkg, version)
        agent_version = _agent_version_cached(cache)
        agent_dir = cache / f"agent-{agent_version.replace(':', '_')}"
        if not (agent_dir / "libs.list").exists():
            shutil.rmtree(agent_dir, ignore_errors=True)
            _extract_agent(agent_dir, agent_version)
        busybox = BUSYBOX.read_bytes()
        h = hashlib.sha256()
        h.update(f"format {BUILD_FORMAT}\n{pkg}={version}\n".encode())
        h.update(hashlib.sha256(busybox).digest())
        h.update(INIT_SCRIPT.encode())
        h.update((kernel_dir / "modules" / "load-order").read_bytes())
        h.update((kernel_dir / "modules" / "agent-load-order").read_bytes())
        h.update(f"{AGENT_PACKAGE}={agent_version}\n".encode())
        guest_dir = cache / f"guest-{h.hexdigest()[:16]}"
        initrd = guest_dir / "initrd.gz"
        if not initrd.exists():
            tmp = Path(tempfile.mkdtemp(prefix="guest-", dir=cache))
            os.chmod(tmp, 0o755)
            try:
                (tmp / "initrd.gz").write_bytes(_build_initrd(kernel_dir, agent_dir, busybox))
                os.link(kernel_dir / "vmlinuz", tmp / "vmlinuz")
                shutil.rmtree(guest_dir, ignore_errors=True)
                os.rename(tmp, guest_dir)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
        _built = GuestImage(guest_dir / "vmlinuz", initrd, f"{pkg}={version}")
        return _built
