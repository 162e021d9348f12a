"""Save-all and resume-all: mgsave against libvirt-guests and against the raw floor.

On the real test rig (a private libvirtd with TCG guests; see tests/rig), with the same guests
in the same run, contenders alternate round by round:

  mgsave          ``mgsave shutdown`` / ``mgsave boot`` with a policy that saves and resumes
                  every guest (the built-in behaviour, written out), at a given parallelism
  libvirt-guests  libvirt's own ``libvirt-guests.sh stop`` / ``start`` configured for managed
                  save and resume (URIS=qemu:///system, ON_SHUTDOWN=suspend, ON_BOOT=start)
  mgsave-channels the same with ``save_channels: N`` (--channels): each save written by N
                  parallel streams in libvirt's sparse format, where libvirt (>= 11.2) offers it
  mgsave-<format> the same with ``image_format: <format>`` (--formats zstd,gzip or all; see
                  bench/formats.py): time to save, time to resume and bytes on disk of each format
  floor           ``virsh managedsave`` / ``virsh start`` of every guest, all at once

After every resume each guest must be running, restored (not booted afresh), and its serial
heartbeat must go on from where it was: no contender can win by skipping work.

--fill-kind text fills the guests' memory with compressible text instead of random bytes.

After every round, the physical limit (bench/disklimit.py): the write bandwidth of the file
system holding the images, until flushed, and its read bandwidth from a cold cache, for as many
bytes as the images took; every save and resume is also given as a share of it. --big: one guest
as large as the machine allows with room to spare.

Also: how the figures change with the number of guests (--sweep-n) and with mgsave's
parallelism limit (--sweep-parallel, at --parallel-guests guests).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from bench import disklimit, formats, platform
from bench.compare_report import CONTENDERS, print_level, print_summary
from bench.common import (URI, dump_json, foreign_guests, load_average, machine_description,
                          median, mgsave_command, note, run_parallel, run_timed, say, spread,
                          table, tempdir, write_policy)

LIBVIRT_GUESTS_SH = "/usr/lib/libvirt/libvirt-guests.sh"
LIBVIRT_GUESTS_CONF = "/etc/default/libvirt-guests"
PREFIX = "bench"


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()] if text else []


# --- the rig and its guests ---------------------------------------------------------------------


class Bench:
    def __init__(self, args):
        self.args = args
        self.work = tempdir("compare")
        self.log = self.work / "commands.log"
        self.policy_dir = self.work / "policy"
        self.state_dir = None  # set inside the rig
        self.rig = None
        self.conn = None
        self.names: list[str] = []
        self.boots: dict[str, int] = {}
        self._mounts: list[str] = []
        self.mgsave = args.mgsave.split() if args.mgsave else mgsave_command()
        self.busy: list[str] = []

    # life cycle

    def start(self, count: int) -> None:
        from tests.rig import Rig, define_guests, ensure_image, start_and_wait_ticking

        ensure_image()
        outer_ns = os.stat("/proc/self/ns/mnt").st_ino
        self.rig = Rig()
        self.rig.start()
        if os.stat("/proc/self/ns/mnt").st_ino == outer_ns:
            raise RuntimeError("the rig did not give this process a private mount namespace")
        self._configure_libvirt_guests()
        self.state_dir = Path("/var/lib/mgsave/bench")  # the rig's private state directory
        self.conn = self.rig.connect()
        if self.args.big:
            from tests.rig import SAVE_DIR
            self.args.memory, self.args.fill = disklimit.big_guest_mib(SAVE_DIR, self.args.big_cap)
        note(f"booting {count} guests ({self.args.memory} MiB, {self.args.fill} MiB filled)")
        t0 = time.monotonic()
        self.names = define_guests(self.conn, count, memory_mib=self.args.memory,
                                   fill_mib=self.args.fill, prefix=PREFIX, fill_kind=self.args.fill_kind)
        start_and_wait_ticking(self.conn, self.names, timeout=120 + 40 * count + self.args.fill / 20)
        note(f"{count} guests ticking after {time.monotonic() - t0:.0f} s")
        from tests.rig import boots
        self.boots = {n: boots(n) for n in self.names}

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            if self.conn is not None:
                self.conn.close()
        for mp in reversed(self._mounts):
            subprocess.run(["umount", "-l", mp], check=False)
        self._mounts = []
        if self.rig is not None:
            self.rig.stop()

    def _mount(self, *argv: str) -> None:
        subprocess.run(["mount", *argv], check=True)
        self._mounts.append(argv[-1])

    def _configure_libvirt_guests(self) -> None:
        """Give libvirt-guests, inside the rig's mount namespace only, a private configuration
        (managed save at stop, resume at start) and a private lock directory. The host's own
        /etc/default/libvirt-guests and /run/lock are untouched."""
        conf = self.work / "libvirt-guests"
        conf.write_text(
            "# mgsave benchmark: managed save at stop, resume at start\n"
            f"URIS={URI}\nON_BOOT=start\nON_SHUTDOWN=suspend\nSTART_DELAY=0\n"
            "BYPASS_CACHE=0\nSYNC_TIME=0\nPARALLEL_SHUTDOWN=0\nSHUTDOWN_TIMEOUT=300\n"
        )
        if os.path.isfile(LIBVIRT_GUESTS_CONF):
            self._mount("--bind", str(conf), LIBVIRT_GUESTS_CONF)
        else:  # no file to cover: cover /etc/default with a copy that has one
            copy = self.work / "etc-default"
            subprocess.run(["cp", "-a", "/etc/default", str(copy)], check=True)
            (copy / "libvirt-guests").write_text(conf.read_text())
            self._mount("--bind", str(copy), "/etc/default")
        lock_dir = os.path.realpath("/var/lock")
        if os.path.isdir(lock_dir):
            self._mount("-t", "tmpfs", "-o", "mode=1777", "mgsave-bench-lock", lock_dir)

    def keep(self, count: int) -> None:
        """Destroy and undefine guests beyond the first ``count``."""
        import libvirt

        from tests.rig import serial_log
        for name in self.names[count:]:
            dom = self.conn.lookupByName(name)
            with contextlib.suppress(libvirt.libvirtError):
                dom.destroy()
            dom.undefineFlags(libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE)
            with contextlib.suppress(FileNotFoundError):
                serial_log(name).unlink()
        self.names = self.names[:count]

    # checks

    def check_busy(self, when: str) -> None:
        others = foreign_guests()
        if others:
            self.busy.append(f"{when}: {others} other QEMU processes running (load {load_average()})")

    def check_saved(self, contender: str) -> int:
        """Every guest shut off with a managed-save image (in the format the contender asked
        for); returns the bytes the images take on disk."""
        from tests.rig import SAVE_DIR, state_reason
        for name in self.names:
            sr = state_reason(self.conn, name)
            image = os.path.join(SAVE_DIR, f"{name}.save")
            # A save with channels writes the managed-save file through virDomainSaveParams:
            # libvirt marks it as a managed-save image only when the daemon starts again.
            marked = self.conn.lookupByName(name).hasManagedSaveImage(0) or os.path.isfile(image)
            if sr != ("shutoff", "saved") or not marked:
                raise RuntimeError(f"{name}: not saved after the save phase: {sr}")
            formats.check_format(contender, image)
        return disklimit.image_bytes(self.images())

    def images(self) -> list[str]:
        from tests.rig import SAVE_DIR
        return [os.path.join(SAVE_DIR, f"{name}.save") for name in self.names]

    def disk_limit(self, nbytes: int) -> disklimit.DiskLimit:
        """The images' file system's limit for ``nbytes`` (between rounds: no image is on it)."""
        from tests.rig import SAVE_DIR
        self._settle()
        self.check_busy(f"disk limit n={len(self.names)}")
        return disklimit.measure(SAVE_DIR, nbytes)

    def check_resumed(self, before: dict[str, int]) -> None:
        """Every guest running, restored from its image, not booted afresh, heartbeat going on."""
        from tests.rig import boots, state_reason, ticks, wait_for_tick_after
        for name in self.names:
            sr = state_reason(self.conn, name)
            if sr != ("running", "restored"):
                raise RuntimeError(f"{name}: not resumed: {sr}")
        for name in self.names:
            wait_for_tick_after(name, before[name], timeout=60)
            if boots(name) != self.boots[name]:
                raise RuntimeError(f"{name}: booted afresh instead of resuming")
            tail = ticks(name)[-40:]
            if any(b <= a for a, b in zip(tail, tail[1:])):
                raise RuntimeError(f"{name}: heartbeat went backwards: {tail}")

    # contenders

    def _settle(self) -> None:
        os.sync()
        time.sleep(self.args.settle)

    def round_trip(self, contender: str, parallel: int | str = "auto") -> dict:
        """Save every guest, check, resume every guest, check; returns the timings."""
        from tests.rig import last_tick
        self._settle()
        self.check_busy(f"{contender} n={len(self.names)}")
        out: dict = {}
        save_s, extra = self._save(contender, parallel)
        out["save"] = save_s
        out.update(extra)
        out["bytes"] = self.check_saved(contender)
        before = {n: last_tick(n) for n in self.names}
        self._settle()
        if not self.args.warm:
            self._evict()
        resume_s, extra = self._resume(contender, parallel)
        out["resume"] = resume_s
        out.update(extra)
        self.check_resumed(before)
        return out

    def _evict(self) -> None:
        """Drop the save images from the page cache, as a host that rebooted has them only on disk."""
        for image in self.images():
            disklimit.drop_from_cache(image)

    def _mgsave(self, which: str, parallel, channels: int | None = None, contender: str = "mgsave") -> tuple[float, dict]:
        extra = (f"  save_channels: {channels}\n" if channels else "") + formats.policy_lines(contender)
        policy = write_policy(self.policy_dir, parallel=parallel, extra=extra,
                              name=f"policy-{parallel}-{channels or 1}-{contender}.yaml")
        stdout = self.work / f"mgsave-{which}.json"
        stdout.unlink(missing_ok=True)
        t0 = time.time()
        seconds, _rss = run_timed(self.mgsave + ["--policy", str(policy), "--state-dir", str(self.state_dir),
                                                 "--json", which], log=self.log, stdout_file=stdout)
        t_exit = t0 + seconds
        return seconds, _phases(json.loads(stdout.read_text()), t0, t_exit, which)

    def _save(self, contender: str, parallel) -> tuple[float, dict]:
        if contender == "mgsave":
            return self._mgsave("shutdown", parallel)
        if contender == "mgsave-channels":
            return self._mgsave("shutdown", parallel, self.args.channels)
        if formats.format_of(contender):
            return self._mgsave("shutdown", parallel, contender=contender)
        if contender == "libvirt-guests":
            return run_timed([self.args.libvirt_guests, "stop"], log=self.log)[0], {}
        return run_parallel([["virsh", "-q", "-c", URI, "managedsave", n] for n in self.names], log=self.log), {}

    def _resume(self, contender: str, parallel) -> tuple[float, dict]:
        if contender == "mgsave":
            return self._mgsave("boot", parallel)
        if contender == "mgsave-channels":
            return self._mgsave("boot", parallel, self.args.channels)
        if formats.format_of(contender):
            return self._mgsave("boot", parallel, contender=contender)
        if contender == "libvirt-guests":
            return run_timed([self.args.libvirt_guests, "start"], log=self.log)[0], {}
        return run_parallel([["virsh", "-q", "-c", URI, "start", n] for n in self.names], log=self.log), {}


def _phases(result: dict, t0: float, t_exit: float, which: str) -> dict:
    """Where mgsave's wall time went, from its --json result: start-up (interpreter, imports,
    policy) until the pass began, preparation (lock, connect, inventory, plan, record) until the
    first guest's step, the guests' work, and the end (record, summary, exit)."""
    from libmgsave.jsonout import epoch  # --json times are ISO 8601 strings

    steps = [s for g in result["guests"] for s in g["steps"]]
    if not steps:
        return {}
    first = min(epoch(s["started"]) for s in steps)
    last = max(epoch(s["finished"]) for s in steps)
    began = epoch(result["started"])
    return {
        f"{which}_startup": began - t0,
        f"{which}_prepare": first - began,
        f"{which}_work": last - first,
        f"{which}_finish": t_exit - last,
    }


# --- the run ----------------------------------------------------------------------------------


def _rotation(contenders: list[str], round_no: int) -> list[str]:
    k = round_no % len(contenders)
    return contenders[k:] + contenders[:k]


def run(args) -> dict:
    contenders = formats.with_formats([c for c in args.contenders.split(",") if c], args.formats)
    for c in contenders:
        if c not in CONTENDERS and not formats.format_of(c):
            raise SystemExit(f"unknown contender {c!r} (choose from {', '.join(CONTENDERS)})")
    if args.big:  # one guest, as large as the machine allows: sized once the rig runs
        args.guests, args.sweep_n, args.sweep_parallel = 1, "", ""
    sweep_n = sorted(set(_ints(args.sweep_n)) - {args.guests}, reverse=True)
    sweep_p = _ints(args.sweep_parallel)
    levels = sorted(set(sweep_n) | {args.guests} | ({args.parallel_guests} if sweep_p else set()),
                    reverse=True)
    data = {"machine": machine_description(), "args": vars(args), "levels": {}, "parallel": {}, "limits": {},
            "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    bench = Bench(args)
    data["foreign_qemu_at_start"] = foreign_guests()
    try:
        bench.start(levels[0])
        for n in levels:
            bench.keep(n)
            if sweep_p and n == args.parallel_guests:
                data["parallel"] = _parallel_sweep(bench, sweep_p, args.sweep_rounds)
            if n == args.guests or n in sweep_n:
                rounds = args.rounds if n == args.guests else args.sweep_rounds
                limits: list[disklimit.DiskLimit] = []
                data["levels"][n] = _compare(bench, contenders, rounds, limits)
                data["limits"][n] = [x.to_dict() for x in limits]
                print_level(n, data["levels"][n], args, main=(n == args.guests), limits=limits)
    except BaseException:
        note(f"commands' output kept in {bench.work}")
        raise
    finally:
        data["busy"] = bench.busy
        bench.stop()
    shutil.rmtree(bench.work, ignore_errors=True)
    data["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
    print_summary(data, args)
    dump_json(args.json, data)
    return data


def _compare(bench: Bench, contenders: list[str], rounds: int, limits: list) -> dict:
    """The contenders' rounds; after each round the disk's limit for the bytes its images took
    (appended to ``limits``)."""
    results = {c: [] for c in contenders}
    for r in range(rounds):
        for c in _rotation(contenders, r):
            note(f"n={len(bench.names)} round {r + 1}/{rounds}: {c}")
            results[c].append(bench.round_trip(c))
            last = results[c][-1]
            note(f"  save {last['save']:.2f} s, resume {last['resume']:.2f} s, {last['bytes'] / 1e6:.0f} MB")
        limits.append(bench.disk_limit(int(median([results[c][-1]["bytes"] for c in contenders]))))
        note(f"  disk: write {limits[-1].write_bps / 1e6:.0f} MB/s, cold read {limits[-1].read_bps / 1e6:.0f} MB/s")
    return results


def _parallel_sweep(bench: Bench, values: list[int], rounds: int) -> dict:
    results = {p: [] for p in values}
    for r in range(rounds):
        order = values if r % 2 == 0 else list(reversed(values))
        for p in order:
            note(f"parallelism {p}, n={len(bench.names)}, round {r + 1}/{rounds}")
            results[p].append(bench.round_trip("mgsave", parallel=p))
            last = results[p][-1]
            note(f"  save {last['save']:.2f} s, resume {last['resume']:.2f} s")
    n = len(bench.names)
    rows = []
    for p in values:
        saves = [x["save"] for x in results[p]]
        resumes = [x["resume"] for x in results[p]]
        rows.append([p, spread(saves), spread(resumes)])
    say(f"\n## mgsave's parallelism limit, {n} guests ({rounds} rounds each)\n")
    say(table(["max_parallel_saves/starts", "save-all", "resume-all"], rows))
    from libmgsave.policy import default_parallelism
    auto = default_parallelism()
    say(f"\ndefault here: auto = {auto}")
    for key in ("save", "resume"):
        medians = {p: median([x[key] for x in results[p]]) for p in values}
        best = min(medians, key=medians.get)
        if auto in medians:
            say(f"{key}-all: best at {best} ({medians[best]:.2f} s); the default {auto} takes "
                f"{medians[auto]:.2f} s ({medians[auto] / medians[best] - 1:+.0%})")
    return results


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--guests", type=int, default=4, help="guests in the main comparison (default 4)")
    p.add_argument("--memory", type=int, default=512, help="MiB of RAM per guest (default 512)")
    p.add_argument("--fill", type=int, default=300, help="MiB of random data each guest holds (default 300)")
    p.add_argument("--big", action="store_true",
                   help="one guest as large as the machine allows with room to spare (from the free "
                        "memory and disk; replaces --guests, --memory, --fill and the sweeps)")
    p.add_argument("--big-cap", type=int, metavar="MIB",
                   help="with --big, no more than this many MiB (a machine others share)")
    p.add_argument("--rounds", type=int, default=3, help="rounds per contender in the main comparison (default 3)")
    p.add_argument("--contenders", default="mgsave,libvirt-guests,floor",
                   help="comma-separated, from: " + ", ".join(CONTENDERS))
    p.add_argument("--sweep-n", default="1,2,8", metavar="N,N,...",
                   help="other guest counts to measure (default 1,2,8; '' for none)")
    p.add_argument("--sweep-parallel", default="1,2,4,8", metavar="P,P,...",
                   help="mgsave parallelism limits to measure (default 1,2,4,8; '' for none)")
    p.add_argument("--parallel-guests", type=int, default=8,
                   help="guests in the parallelism sweep (default 8)")
    p.add_argument("--sweep-rounds", type=int, default=2, help="rounds per point of the sweeps (default 2)")
    p.add_argument("--channels", type=int, default=4,
                   help="save_channels of the mgsave-channels contender (default 4)")
    p.add_argument("--formats", default="", metavar="F,F,...",
                   help="also a contender mgsave-<format> a format: " + ", ".join(formats.FORMATS) + ", or all")
    p.add_argument("--fill-kind", choices=formats.FILL_KINDS, default="random",
                   help="the guests' filled memory: random (incompressible, default) or text (compressible)")
    p.add_argument("--settle", type=float, default=1.0, help="seconds of quiet (after sync) before each timed phase")
    p.add_argument("--warm", action="store_true",
                   help="resume from images still in the page cache (default: drop them from the cache "
                        "first, as after a reboot)")
    p.add_argument("--libvirt-guests", default=LIBVIRT_GUESTS_SH, help="libvirt-guests' script")
    p.add_argument("--mgsave", metavar="COMMAND",
                   help="how to run mgsave (default: the virtualenv's mgsave entry point), e.g. "
                        "'python3 -m libmgsave' to measure the checkout in the current directory")
    p.add_argument("--json", type=Path, help="also write every measurement to this JSON file")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench/run compare", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(p)
    platform.add_arguments(p)
    args = p.parse_args(argv)
    elsewhere = platform.dispatch("compare", args, argv)
    if elsewhere is not None:
        return elsewhere
    run(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
