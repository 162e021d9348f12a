"""A Debian 13 (trixie) root filesystem with libvirt 11, built with debootstrap and cached per machine.

It is the lower layer of a ``tests.rig.container.Container``: a second, newer Debian host booted
by ``systemd-nspawn -b``. Built from Debian's packages only:

    debootstrap --variant=minbase trixie <root> <the Debian mirror apt already uses>
    chroot <root> apt-get install --no-install-recommends <PACKAGES>

While the packages are installed, a ``policy-rc.d`` that exits 101 keeps their maintainer scripts
from starting anything in the chroot; it is removed afterwards, so the booted host starts its
services as a real one does. The libvirt configuration is left as Debian ships it (the Container
sets qemu.conf for root + TCG in its own copy of /etc/libvirt).

The root is cached under ``/var/cache/mgsave-testrig/debian13-<key>``, where the key hashes the
suite, the package list and ``BUILD_FORMAT``: a change to any of them builds a new root and removes
the old ones. A root is built in a temporary directory next to it and renamed into place when
complete, under a lock, so a half-built root is never used. ``VERSIONS_FILE`` inside the root
records the versions it got. A first build takes a few minutes (download and unpack, ~350 MB).

    python3 -m tests.rig.debian_root      builds it (if needed) and prints the versions
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# Bump when the build steps change in a way the package list does not show.
BUILD_FORMAT = 1
SUITE = "trixie"
CACHE = Path("/var/cache/mgsave-testrig")
DEFAULT_MIRROR = "http://deb.debian.org/debian"
PACKAGES = (
    # booted by systemd-nspawn -b: systemd as PID 1, a system bus for logind and machined
    "systemd", "dbus", "systemd-container",
    # the hypervisor, Debian's default layout (libvirt-guests included)
    "libvirt-daemon-system", "libvirt-daemon-driver-qemu", "libvirt-clients", "qemu-system-x86",
    # what the mgsave package depends on and recommends
    "python3", "python3-libvirt", "python3-yaml", "python3-jsonschema", "python3-systemd",
    "python3-jeepney",
    # man: systemd-analyze verify checks that the units' Documentation=man: pages are installed
    "man-db",
    # the rig's own tests run inside with this root's python3 (tests/rig/inroot.py)
    "python3-pytest",
    # the programs libvirt runs for the compressed image formats (bench/formats.py measures them)
    "zstd", "lzop", "bzip2", "xz-utils",
)
# The versions recorded in the root, by what they are called in a report.
VERSIONED = {"Debian": None, "libvirt": "libvirt-daemon", "QEMU": "qemu-system-x86",
             "Python": "python3", "python3-libvirt": "python3-libvirt", "systemd": "systemd"}
VERSIONS_FILE = "etc/mgsave-testrig-versions.json"
POLICY_RC_D = "usr/sbin/policy-rc.d"


class RootBuildError(Exception):
    """The Debian 13 root could not be built (a tool is missing, the mirror is unreachable...)."""


def key() -> str:
    text = json.dumps([BUILD_FORMAT, SUITE, sorted(PACKAGES)])
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def root_path() -> Path:
    return CACHE / f"debian13-{key()}"


def versions(root: Path) -> dict[str, str]:
    """The versions a built root holds, as recorded when it was built."""
    return json.loads((root / VERSIONS_FILE).read_text())


def ensure_root(log=print) -> Path:
    """The cached Debian 13 root, built first if there is none for this package list.

    Raises RootBuildError when it cannot be built; ``log`` gets progress lines."""
    if os.geteuid() != 0:
        raise RootBuildError("building the Debian 13 root needs root")
    if not shutil.which("debootstrap"):
        raise RootBuildError("debootstrap is not installed (scripts/setup installs it)")
    CACHE.mkdir(parents=True, exist_ok=True)
    root = root_path()
    with open(CACHE / "debian13.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (root / VERSIONS_FILE).is_file():
            return root
        _remove_stale(keep=root)
        tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.", dir=CACHE))
        try:
            _build(tmp, log)
            os.rename(tmp, root)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return root


def _remove_stale(keep: Path) -> None:
    """Half-built leftovers (a build that was killed: we hold the lock), and roots of other keys
    that no mount on this machine still uses as its lower layer."""
    for path in CACHE.glob(".debian13-*"):
        shutil.rmtree(path, ignore_errors=True)
    for path in CACHE.glob("debian13-*"):
        if path != keep and path.is_dir() and not _mounted_over(path):
            shutil.rmtree(path, ignore_errors=True)
    shutil.rmtree(keep, ignore_errors=True)


def _mounted_over(path: Path) -> bool:
    """Whether any process's mount table mentions ``path`` (an overlay using it as lowerdir)."""
    for mountinfo in Path("/proc").glob("[0-9]*/mountinfo"):
        try:
            if str(path) in mountinfo.read_text(errors="replace"):
                return True
        except OSError:
            continue
    return False


def _build(root: Path, log) -> None:
    started = time.monotonic()
    mirror = debian_mirror()
    log(f"debian13 root: debootstrap --variant=minbase {SUITE} from {mirror} (a minute or so)")
    # In a private mount namespace: a killed debootstrap leaves nothing mounted.
    _run(["unshare", "--mount", "--propagation", "private",
          "debootstrap", "--variant=minbase", SUITE, str(root), mirror], "debootstrap")
    log(f"debian13 root: installing {len(PACKAGES)} packages and their dependencies "
        f"({time.monotonic() - started:.0f} s so far)")
    policy = root / POLICY_RC_D
    policy.write_text("#!/bin/sh\n# Nothing starts while the root is built in a chroot.\nexit 101\n")
    policy.chmod(0o755)
    _chroot(root, "apt-get update -q && apt-get install -y -q --no-install-recommends "
            + " ".join(PACKAGES) + " && apt-get clean")
    policy.unlink()
    # systemd-nspawn --uuid= gives each container its own machine ID, written at first boot.
    (root / "etc/machine-id").write_text("")
    (root / "var/lib/dbus/machine-id").unlink(missing_ok=True)
    got = _query_versions(root)
    (root / VERSIONS_FILE).write_text(json.dumps(got, indent=1) + "\n")
    log(f"debian13 root: built in {time.monotonic() - started:.0f} s: {format_versions(got)}")


def _chroot(root: Path, script: str) -> None:
    """Run a shell script in the root, with /proc and /dev mounted in a private mount namespace
    (so nothing stays mounted on the cached root, even when the build is killed)."""
    mounts = (f"mount -t proc proc {root}/proc && mount --rbind /dev {root}/dev && "
              f"mount -t sysfs sysfs {root}/sys")
    command = ["unshare", "--mount", "--propagation", "private", "sh", "-c",
               f'{mounts} && exec chroot {root} /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin '
               f'DEBIAN_FRONTEND=noninteractive LANG=C.UTF-8 sh -c "$0"', script]
    _run(command, "apt-get install in the chroot")


def _query_versions(root: Path) -> dict[str, str]:
    packages = [p for p in VERSIONED.values() if p]
    out = subprocess.run(["dpkg-query", f"--admindir={root}/var/lib/dpkg", "-W", "-f", "${Package} ${Version}\n",
                          *packages], capture_output=True, text=True, check=True).stdout
    by_package = dict(line.split(" ", 1) for line in out.splitlines())
    got = {"Debian": (root / "etc/debian_version").read_text().strip()}
    got.update({name: by_package[p] for name, p in VERSIONED.items() if p})
    python = subprocess.run(["chroot", str(root), "python3", "--version"], capture_output=True, text=True)
    if python.returncode == 0:
        got["Python"] = python.stdout.split()[-1]
    return got


def format_versions(got: dict[str, str]) -> str:
    return ", ".join(f"{name} {version}" for name, version in got.items())


def debian_mirror() -> str:
    """The Debian mirror this machine's apt uses (its first ``.../debian`` URI), or deb.debian.org."""
    texts = []
    for path in [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*"))]:
        if path.suffix in (".list", ".sources") and path.is_file():
            texts.append(path.read_text(errors="replace"))
    uri = re.compile(r"^\s*(?:deb\s+(?:\[[^\]]*\]\s+)?|URIs:\s*)(\S+/debian)/?(?:\s|$)", re.M)
    for text in texts:
        for match in uri.finditer(text):
            return match.group(1)
    return DEFAULT_MIRROR


def _run(command: list[str], what: str) -> None:
    out = subprocess.run(command, stdin=subprocess.DEVNULL, capture_output=True, text=True)
    if out.returncode != 0:
        tail = (out.stdout + out.stderr).strip()[-2000:]
        raise RootBuildError(f"{what} exited {out.returncode}:\n{tail}")


if __name__ == "__main__":
    try:
        built = ensure_root(log=lambda line: print(line, file=sys.stderr, flush=True))
    except RootBuildError as error:
        sys.exit(f"error: {error}")
    print(built)
    print(format_versions(versions(built)))
