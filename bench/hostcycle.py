"""A whole host's shutdown and boot, as an admin lives them: mgsave against libvirt's own
daemon-side auto-shutdown (libvirt >= 11.2), libvirt-guests and the raw floor.

The host is a container booted with systemd as PID 1 (tests/rig/container.py) over a Debian root:
the cached Debian 13 root (``--on debian13``, the default: libvirt 11, where the daemon can save
guests itself) or this machine's own root (``--on debian12``). mgsave is installed there from its
Debian package (``make deb``, or ``--deb FILE``). Every round is one real ``systemctl poweroff``
and one real boot of that host, with one contender configured and the others off:

  mgsave          the package's units: mgsave.service (shutdown pass), mgsave-early.service
                  (starts it on logind's PrepareForShutdown) and mgsave-boot.service, with the
                  installed policy (the built-in defaults)
  mgsave-channels the same with ``save_channels: N`` (--channels) in the policy
  mgsave-<format> the same with ``image_format: <format>`` (--formats zstd,gzip or all); the
                  images' bytes on disk are measured while the host is off
  libvirt-auto    qemu.conf: auto_shutdown_try_save = "persistent", auto_shutdown_restore = 1;
                  logind's PrepareForShutdown (sent when the poweroff starts) makes the daemon save
                  every guest, one at a time; at its next start it restores them (autostart once)
  libvirt-guests  /etc/default/libvirt-guests: ON_SHUTDOWN=suspend, ON_BOOT=start, in parallel
  floor           ``virsh managedsave`` of every guest at once (then the poweroff, not timed),
                  and ``virsh start`` of every guest at once as soon as the daemon answers

save-all    from the moment ``systemctl poweroff`` is called (floor: the managedsaves started)
            until the last guest's QEMU process has exited
resume-all  from the start of the libvirt daemon's process at the boot until every guest is
            ``running (restored)``, polled through the daemon's socket every 50 ms

After each boot every guest must be restored (not booted afresh) with its heartbeat going on,
or the run fails; except that a guest found running but not restored (booted afresh: the
contender lost its saved state) is counted as such ("saved states lost"), filled again, and the
rounds go on. Contenders alternate round by round.

After every round, the physical limit (bench/disklimit.py): the write bandwidth, until flushed,
of the file system holding the host's images and its cold-cache read bandwidth, for as many bytes
as the images took; every save-all and resume-all is also given as a share of it. --big: one
guest as large as the machine allows with room to spare.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench import disklimit, formats
from bench.common import dump_json, foreign_guests, median, note, say, spread, table

CONTENDERS = ("mgsave", "mgsave-channels", "libvirt-auto", "libvirt-guests", "floor")
POLICY = "/etc/mgsave/policy.yaml"
PACKAGE_IN_HOST = "/var/cache/mgsave-bench/mgsave.deb"
DROPIN_DIR = "/run/systemd/system/{unit}.d"
NO_STOP = "[Service]\nExecStop=\nExecStop=/bin/true\n"
LIBVIRT_GUESTS_CONF = ("URIS=qemu:///system\nON_BOOT=start\nON_SHUTDOWN=suspend\nPARALLEL_SHUTDOWN=0\n"
                       "START_DELAY=0\nBYPASS_CACHE=0\nSYNC_TIME=0\nSHUTDOWN_TIMEOUT=300\n")
AUTO_SHUTDOWN = 'auto_shutdown_try_save = "persistent"\nauto_shutdown_restore = 1\n'
RUNNING_RESTORED = (1, 3)
RUNNING = 1
PREFIX = "host"


class Host:
    """The booted host and its guests, seen from outside."""

    def __init__(self, container, args):
        self.c = container
        self.args = args
        self.names = [f"{PREFIX}-{i}" for i in range(1, args.guests + 1)]
        self.boots: dict[str, int] = {}
        self.qemu_conf = (container.dir("etc") / "qemu.conf").read_text()

    # -- set-up --

    def install(self, deb: Path) -> None:
        target = self.c.root / PACKAGE_IN_HOST.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(deb, target)
        self.c.run("dpkg", "-i", PACKAGE_IN_HOST)
        # Debian enables libvirt-guests; every contender but one must not have it run.
        self.c.run("systemctl", "disable", "libvirt-guests.service", check=False)
        self.without_stop("libvirt-guests.service")
        self.c.write("/etc/default/libvirt-guests", LIBVIRT_GUESTS_CONF)

    def start_guests(self) -> None:
        from tests.rig.guests import domain_xml
        conn = self.c.connect()
        try:
            for name in self.names:
                conn.defineXML(domain_xml(name, memory_mib=self.args.memory, fill_mib=self.args.fill,
                                          fill_kind=self.args.fill_kind))
                conn.lookupByName(name).create()
        finally:
            conn.close()
        note(f"{len(self.names)} guests ({self.args.memory} MiB, {self.args.fill} MiB filled) booting")
        self.c.wait_ticking(self.names, timeout=300 + 60 * len(self.names) + self.args.fill / 10)
        self.wait_filled(self.names)

    def wait_filled(self, names: list[str], timeout: float = 1800) -> None:
        """Until each of ``names`` has filled its memory in its latest boot (each boot fills it
        once); then their boots are the ones to resume."""
        deadline = time.monotonic() + timeout
        while not all(self.c.serial(n).count(b"rig: filled") >= self.c.guest_boots(n) for n in names):
            if time.monotonic() > deadline:
                raise RuntimeError(f"{names}: did not finish filling their memory")
            time.sleep(1)
        self.boots.update({n: self.c.guest_boots(n) for n in names})

    def without_stop(self, unit: str) -> None:
        """Stop ``unit`` without running its ExecStop (which would save or stop the guests)."""
        if self.c.run("systemctl", "is-active", unit, check=False).stdout.strip() != "active":
            return
        directory = DROPIN_DIR.format(unit=unit)
        self.c.run("mkdir", "-p", directory)
        self.c.run("sh", "-c", f"printf '%s' '{NO_STOP}' > {directory}/no-stop.conf")
        self.c.run("systemctl", "daemon-reload")
        self.c.run("systemctl", "stop", unit)
        self.c.run("rm", "-r", directory)
        self.c.run("systemctl", "daemon-reload")

    # -- one contender's configuration, while the host runs --

    def configure(self, contender: str) -> None:
        """Arm ``contender`` for the next poweroff and the boot after it; disarm the others."""
        run = self.c.run
        mgsave = contender.startswith("mgsave")
        run("systemctl", "enable" if mgsave else "disable", "mgsave.service", "mgsave-boot.service",
            "mgsave-early.service")
        if mgsave:
            channels = f"  save_channels: {self.args.channels}\n" if contender == "mgsave-channels" else ""
            defaults = channels + formats.policy_lines(contender)
            self.c.write(POLICY, "version: 1\n" + (f"defaults:\n{defaults}" if defaults else ""))
            run("systemctl", "start", "mgsave.service", "mgsave-early.service")
        else:
            self.without_stop("mgsave.service")
            run("systemctl", "stop", "mgsave-early.service")
        lg = contender == "libvirt-guests"
        run("systemctl", "enable" if lg else "disable", "libvirt-guests.service")
        if lg:
            run("systemctl", "start", "libvirt-guests.service")
        else:
            self.without_stop("libvirt-guests.service")
        conf = self.qemu_conf + (AUTO_SHUTDOWN if contender == "libvirt-auto" else "")
        path = self.c.dir("etc") / "qemu.conf"
        if path.read_text() != conf:
            path.write_text(conf)
            # A restart is a plain SIGTERM (no PrepareForShutdown): the guests keep running.
            run("systemctl", "restart", "libvirtd.service")

    # -- measurements --

    def qemu_pids(self) -> list[int]:
        from tests.rig.container import children, comm
        return [p for p in children(self.c.pid1) if comm(p).startswith("qemu-system")]

    def save_all(self, contender: str) -> dict:
        pids = self.qemu_pids()
        if len(pids) != len(self.names):
            raise RuntimeError(f"{len(pids)} QEMU processes before the save, expected {len(self.names)}")
        os.sync()
        time.sleep(self.args.settle)
        started = time.monotonic()
        if contender == "floor":
            self.parallel([["virsh", "-q", "managedsave", n] for n in self.names])
            saved = time.monotonic() - started
            poweroff = self.c.poweroff()
            return {"save": saved, "poweroff": poweroff}
        self.c.run("systemctl", "poweroff", check=False)
        while any(_alive(p) for p in pids):
            if time.monotonic() - started > self.args.timeout:
                raise RuntimeError(f"{contender}: guests still running {self.args.timeout} s after the poweroff")
            time.sleep(0.02)
        saved = time.monotonic() - started
        self.c.nspawn.wait(timeout=self.args.timeout)
        total = time.monotonic() - started
        self.c.nspawn = self.c.pid1 = None
        return {"save": saved, "poweroff": total, "bytes": self.images_on_disk(contender)}

    def images_on_disk(self, contender: str) -> int:
        """The bytes the save images take, the host off (each in the contender's format)."""
        images = sorted((self.c.dir("lib") / "qemu" / "save").glob("*.save"))
        for image in images:
            formats.check_format(contender, image)
        return sum(formats.bytes_on_disk(image) for image in images)

    def resume_all(self, contender: str) -> dict:
        self.evict()
        self.c.boot(wait=False)
        daemon = self.daemon_started()
        if contender == "floor":
            self.c.connect().close()   # as soon as the daemon answers
            self.parallel([["virsh", "-q", "start", n] for n in self.names])
        done, lost = self.wait_restored()
        self.c.run("systemctl", "is-system-running", "--wait", check=False, timeout=self.args.timeout)
        return {"resume": done - daemon, "lost": lost}

    def daemon_started(self) -> float:
        """CLOCK_BOOTTIME seconds at which the host's libvirtd process started."""
        from tests.rig.container import children, comm
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            for pid in children(self.c.pid1):
                if comm(pid) == "libvirtd":
                    with open(f"/proc/{pid}/stat") as f:
                        fields = f.read().rsplit(")", 1)[1].split()
                    return int(fields[19]) / os.sysconf("SC_CLK_TCK")
            time.sleep(0.02)
        raise RuntimeError("no libvirtd in the host after its boot")

    def wait_restored(self) -> tuple[float, list[str]]:
        """When every guest was running again, and the guests running but not restored: booted
        afresh, their saved state lost (they will never be restored, so no use waiting)."""
        deadline = time.monotonic() + self.args.timeout
        conn = self.c.connect()
        try:
            while True:
                states = {n: tuple(conn.lookupByName(n).state()) for n in self.names}
                lost = sorted(n for n, s in states.items() if s[0] == RUNNING and s != RUNNING_RESTORED)
                if all(s[0] == RUNNING for s in states.values()):
                    return time.clock_gettime(time.CLOCK_BOOTTIME), lost
                if time.monotonic() > deadline:
                    raise RuntimeError(f"guests not all restored after the boot: {states}")
                time.sleep(0.05)
        finally:
            conn.close()

    def check_resumed(self, before: dict[str, int], lost: list[str]) -> None:
        kept = [n for n in self.names if n not in lost]
        self.c.wait_ticking(kept, after=before, timeout=60)
        fresh = [n for n in kept if self.c.guest_boots(n) != self.boots[n]]
        if fresh:
            raise RuntimeError(f"booted afresh instead of resumed: {fresh}")

    @property
    def save_dir(self) -> Path:
        """The host's libvirt save directory, seen from outside (the same file system)."""
        return self.c.dir("lib") / "qemu" / "save"

    def evict(self) -> None:
        """Drop the save images from the page cache, as after a real reboot."""
        for path in self.save_dir.glob("*.save"):
            disklimit.drop_from_cache(path)

    def parallel(self, commands: list[list[str]]) -> None:
        from tests.rig.container import CONTAINER_ENV
        procs = [subprocess.Popen(["nsenter", "-t", str(self.c.pid1), "-a", *CONTAINER_ENV, *cmd],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) for cmd in commands]
        bad = [(cmd, p.communicate()[1]) for cmd, p in zip(commands, procs) if p.wait() != 0]
        if bad:
            raise RuntimeError(f"failed: {bad}")

    def round_trip(self, contender: str) -> dict:
        self.configure(contender)
        if foreign_guests() > len(self.names):
            note("warning: other QEMU processes run on this machine")
        out = self.save_all(contender)
        out.setdefault("bytes", disklimit.image_bytes(self.save_dir.glob("*.save")))  # the floor's
        before = {n: (self.c.ticks(n) or [0])[-1] for n in self.names}
        out.update(self.resume_all(contender))
        self.check_resumed(before, out["lost"])
        if out["lost"]:
            note(f"  {contender} lost the saved state of {', '.join(out['lost'])}: booted afresh")
            self.c.wait_ticking(out["lost"], timeout=300 + self.args.fill / 10)
            self.wait_filled(out["lost"])  # booted afresh: filled again before the next round
        return out


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _rotation(contenders: list[str], round_no: int) -> list[str]:
    k = round_no % len(contenders)
    return contenders[k:] + contenders[:k]


def run(args) -> dict:
    from tests.rig.container import prepared_host
    from tests.rig.deb import build_deb

    contenders = formats.with_formats([c for c in args.contenders.split(",") if c], args.formats)
    unknown = {c for c in contenders if not formats.format_of(c)} - set(CONTENDERS)
    if unknown:
        raise SystemExit(f"unknown contenders {sorted(unknown)} (choose from {', '.join(CONTENDERS)})")
    lower = Path("/")
    versions = {}
    if args.on == "debian13":
        from tests.rig.debian_root import ensure_root, versions as root_versions
        lower = ensure_root(log=note)
        versions = root_versions(lower)
    elif "libvirt-auto" in contenders:
        note("libvirt-auto needs libvirt >= 11.2: left out on debian12")
        contenders.remove("libvirt-auto")
    with tempfile.TemporaryDirectory(prefix="mgsave-bench-deb-") as scratch:
        deb = args.deb or build_deb(Path(scratch))
        with prepared_host("mgsave-bench-host-", lower=lower) as container:
            host = Host(container, args)
            note(f"boot 1 of the {args.on} host: {container.boot():.1f} s")
            host.install(deb)
            if args.big:
                args.memory, args.fill = disklimit.big_guest_mib(host.save_dir, args.big_cap)
            host.start_guests()
            results, limits = _rounds(host, contenders, args)
            container.poweroff()
    data = {"platform": args.on, "versions": versions, "args": {k: str(v) for k, v in vars(args).items()},
            "results": results, "limits": [x.to_dict() for x in limits]}
    _print(data, args, limits)
    dump_json(args.json, data)
    return data


def _rounds(host: Host, contenders: list[str], args) -> tuple[dict, list]:
    """The contenders' rounds; after each, with the guests running again and no image on the
    disk, the disk's limit for the bytes that round's images took."""
    results: dict = {c: [] for c in contenders}
    limits = []
    for r in range(args.rounds):
        for contender in _rotation(contenders, r):
            note(f"round {r + 1}/{args.rounds}: {contender}")
            results[contender].append(host.round_trip(contender))
            last = results[contender][-1]
            note(f"  save-all {last['save']:.2f} s (poweroff {last['poweroff']:.1f} s), "
                 f"resume-all {last['resume']:.2f} s, {last['bytes'] / 1e6:.0f} MB")
        os.sync()
        time.sleep(args.settle)
        limits.append(disklimit.measure(host.save_dir, int(median([results[c][-1]["bytes"] for c in contenders]))))
        note(f"  disk: write {limits[-1].write_bps / 1e6:.0f} MB/s, cold read {limits[-1].read_bps / 1e6:.0f} MB/s")
    return results, limits


def _print(data: dict, args, limits: list) -> None:
    results = data["results"]
    say(f"\n## A host's shutdown and boot on {args.on}: {args.guests} guests x {args.memory} MiB "
        f"({args.fill} MiB filled with {args.fill_kind} data), {args.rounds} rounds\n")
    if data["versions"]:
        say(", ".join(f"{k} {v}" for k, v in data["versions"].items()) + "\n")
    rows = [[c, spread([x["save"] for x in rs]), spread([x["resume"] for x in rs]),
             spread([x["poweroff"] for x in rs], digits=1),
             f"{median([x['bytes'] for x in rs]) / 1e6:.0f} MB" if all("bytes" in x for x in rs) else "-",
             f"{sum(len(x.get('lost', ())) for x in rs)} of {len(rs) * args.guests}"]
            for c, rs in results.items()]
    say(table(["contender", "save-all median (min-max)", "resume-all median (min-max)",
               "poweroff until the host is off", "images on disk", "saved states lost"], rows))
    say("\n(a round that lost a guest's state counts its resume-all until every guest ran again)")
    say(f"\n{disklimit.describe(limits)}:\n")
    say(disklimit.shares(results, limits))
    targets = disklimit.share_targets(results, limits, big=args.big)
    if targets:
        say("")
        say(table(["share of the limit (medians)", "measured", "target", ""], targets))
    rows = []
    for ours in (c for c in results if c.startswith("mgsave")):
        m = results[ours]
        for other in (c for c in results if not c.startswith("mgsave")):
            o = results[other]
            rows.append([f"{ours} / {other}",
                         f"{median([x['save'] for x in m]) / median([x['save'] for x in o]):.2f}",
                         f"{median([x['resume'] for x in m]) / median([x['resume'] for x in o]):.2f}"])
    if rows:
        say("")
        say(table(["ratio (medians)", "save-all", "resume-all"], rows))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench/run hostcycle", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--on", choices=("debian13", "debian12"), default="debian13",
                   help="the host's root: the cached Debian 13 root (default) or this machine's")
    p.add_argument("--guests", type=int, default=4, help="guests (default 4)")
    p.add_argument("--memory", type=int, default=512, help="MiB of RAM per guest (default 512)")
    p.add_argument("--fill", type=int, default=300, help="MiB of random data each guest holds (default 300)")
    p.add_argument("--big", action="store_true",
                   help="one guest as large as the machine allows with room to spare (from the free "
                        "memory and disk; replaces --guests, --memory and --fill)")
    p.add_argument("--big-cap", type=int, metavar="MIB",
                   help="with --big, no more than this many MiB (a machine others share)")
    p.add_argument("--rounds", type=int, default=3, help="rounds per contender (default 3)")
    p.add_argument("--contenders", default="mgsave,libvirt-auto,libvirt-guests,floor", help="comma-separated, from: " + ", ".join(CONTENDERS))
    p.add_argument("--channels", type=int, default=4, help="save_channels of mgsave-channels (default 4)")
    p.add_argument("--formats", default="", metavar="F,F,...",
                   help="also a contender mgsave-<format> a format: " + ", ".join(formats.FORMATS) + ", or all")
    p.add_argument("--fill-kind", choices=formats.FILL_KINDS, default="random",
                   help="the guests' filled memory: random (incompressible, default) or text (compressible)")
    p.add_argument("--deb", type=Path, help="mgsave's package to install (default: make deb in a copy of this tree)")
    p.add_argument("--settle", type=float, default=1.0, help="seconds of quiet (after sync) before each save-all")
    p.add_argument("--timeout", type=float, default=900, help="give up on a phase after this long (default 900 s)")
    p.add_argument("--json", type=Path, help="also write every measurement to this JSON file")
    args = p.parse_args(argv)
    if args.big:
        args.guests = 1
    if os.geteuid() != 0:
        raise SystemExit("bench/run hostcycle: needs root (it boots a container)")
    with contextlib.suppress(KeyboardInterrupt):
        run(args)
        return 0
    return 130


if __name__ == "__main__":
    sys.exit(main())
