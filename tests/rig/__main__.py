"""Command line for the test rig (run from the repository root, as root).

    python -m tests.rig run [--guests N --memory MiB --fill MiB --prefix P --ignore-acpi
                             --transient] -- CMD [ARGS...]
        start a private libvirtd (and optionally N ticking guests), run CMD inside the rig's
        mount namespace with MGSAVE_RIG=1 (and MGSAVE_RIG_GUESTS="names"), tear everything down;
        exits with CMD's status
    python -m tests.rig build          build (or find cached) the guest kernel + initramfs
    python -m tests.rig check          say whether this machine can run the rig
    python -m tests.rig last-tick NAME...            (inside the rig) last tick per guest
    python -m tests.rig wait-tick NAME AFTER [--timeout S]   (inside the rig)
    python -m tests.rig state NAME...                (inside the rig) "running restored" etc.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time

from . import guests as g
from .daemon import URI, Rig, RigError, unavailable_reason
from .image import ImageBuildError, cache_dir, ensure_image


def _run(args) -> int:
    cmd = args.cmd
    if cmd and cmd[0] == "--":
        cmd = cmd[1:]
    if not cmd:
        print("rig run: no command given (python -m tests.rig run -- CMD ...)", file=sys.stderr)
        return 2
    t0 = time.monotonic()
    ensure_image()
    t_img = time.monotonic() - t0
    rig = Rig()
    child = None
    forwarded = []

    def forward(sig, _frame):
        forwarded.append(sig)
        if child is not None and child.poll() is None:
            child.send_signal(sig)

    old = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    try:
        rig.start()
        print(f"rig: libvirtd up in {rig.start_seconds:.1f} s (guest image {t_img:.1f} s)",
              file=sys.stderr)
        names: list[str] = []
        if args.guests:
            conn = rig.connect()
            try:
                names = g.define_guests(conn, args.guests, memory_mib=args.memory,
                                        fill_mib=args.fill, prefix=args.prefix,
                                        ignore_acpi=args.ignore_acpi, transient=args.transient)
                boot = g.start_and_wait_ticking(conn, names)
            finally:
                conn.close()
            print(f"rig: {len(names)} guests ticking ({max(boot.values()):.1f} s)", file=sys.stderr)
        if forwarded:
            return 128 + forwarded[0]
        env = dict(os.environ, MGSAVE_RIG="1", MGSAVE_RIG_GUESTS=" ".join(names),
                   LIBVIRT_DEFAULT_URI=URI)
        child = subprocess.Popen(cmd, env=env)
        while True:
            try:
                rc = child.wait()
                break
            except InterruptedError:
                continue
        return rc if rc >= 0 else 128 - rc
    finally:
        rig.stop()
        for s, h in old.items():
            signal.signal(s, h)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tests.rig", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="what", required=True)
    r = sub.add_parser("run", help="run a command with a private libvirtd")
    r.add_argument("--guests", type=int, default=0)
    r.add_argument("--memory", type=int, default=g.DEFAULT_MEMORY_MIB, help="MiB per guest")
    r.add_argument("--fill", type=int, default=0, help="MiB of random data each guest holds")
    r.add_argument("--prefix", default="rig")
    r.add_argument("--ignore-acpi", action="store_true")
    r.add_argument("--transient", action="store_true")
    r.add_argument("cmd", nargs=argparse.REMAINDER)
    sub.add_parser("build", help="build or find the cached guest image")
    sub.add_parser("check", help="can this machine run the rig?")
    lt = sub.add_parser("last-tick")
    lt.add_argument("names", nargs="+")
    wt = sub.add_parser("wait-tick")
    wt.add_argument("name")
    wt.add_argument("after", type=int)
    wt.add_argument("--timeout", type=float, default=30.0)
    st = sub.add_parser("state")
    st.add_argument("names", nargs="+")
    args = p.parse_args(argv)

    try:
        if args.what == "run":
            return _run(args)
        if args.what == "build":
            t0 = time.monotonic()
            img = ensure_image()
            print(f"kernel {img.kernel}\ninitrd {img.initrd}\npackage {img.kernel_package}\n"
                  f"cache {cache_dir()}\nseconds {time.monotonic() - t0:.1f}")
            return 0
        if args.what == "check":
            reason = unavailable_reason()
            print(reason or "ok")
            return 1 if reason else 0
        if args.what == "last-tick":
            for n in args.names:
                print(n, g.last_tick(n))
            return 0
        if args.what == "wait-tick":
            print(g.wait_for_tick_after(args.name, args.after, args.timeout))
            return 0
        if args.what == "state":
            import libvirt
            conn = libvirt.open(URI)
            for n in args.names:
                print(n, *g.state_reason(conn, n))
            return 0
    except (RigError, ImageBuildError, TimeoutError) as exc:
        print(f"rig: {exc}", file=sys.stderr)
        return 1
    return 2


if __name__ == "__main__":
    sys.exit(main())
