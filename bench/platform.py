"""Run a benchmark on the other platform: inside the Debian 13 root (libvirt 11, QEMU 10, Python
3.13) that the test rig keeps cached per machine (tests/rig/debian_root.py).

``bench/run compare --on debian13 ...`` re-runs the same command, with the same options, inside
that root (``tests.rig.inroot``: an overlay of the root, systemd-nspawn, this checkout bound
read-only), with the root's own python3, python3-libvirt, libvirtd, virsh and libvirt-guests;
mgsave is run as ``python3 -m libmgsave`` from the checkout. The inner run's tables come back on
stdout and its JSON (``--json``) is copied out.

The inner run has its own PID namespace, so it cannot see QEMU processes of this machine: the
check for a busy machine is made here, before and after.
"""

from __future__ import annotations

import json
import shlex
import sys
import tempfile
from pathlib import Path

from bench.common import foreign_guests, note

PLATFORMS = ("debian12", "debian13")
INSIDE_FLAG = "--inside-root"   # set on the inner command, so it does not recurse


def strip_option(argv: list[str], option: str) -> list[str]:
    """``argv`` without ``option VALUE`` / ``option=VALUE``."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
            continue
        if arg == option:
            skip = True
            continue
        if arg.startswith(option + "="):
            continue
        out.append(arg)
    return out


def run_on_debian13(command: str, argv: list[str], json_path: Path | None) -> int:
    """``python3 -m bench <command> <argv>`` inside the Debian 13 root; returns its exit status."""
    from tests.rig.debian_root import RootBuildError, ensure_root
    from tests.rig.inroot import InrootError, run_inside

    inner = strip_option(strip_option(argv, "--on"), "--json")
    inner = strip_option(inner, "--mgsave")
    inner += ["--mgsave", "python3 -m libmgsave", INSIDE_FLAG]
    if json_path:
        inner += ["--json", "{out}/bench.json"]
    shell = "exec python3 -m bench " + " ".join(shlex.quote(a) for a in [command, *inner])
    # run_inside fills in {out}, quoted or not.
    others = foreign_guests()
    if others:
        note(f"warning: {others} QEMU processes of this machine run now: the figures will be noisy")
    try:
        root = ensure_root(log=note)
    except RootBuildError as error:
        note(f"error: cannot build the Debian 13 root: {error}")
        return 2
    with tempfile.TemporaryDirectory(prefix="mgsave-bench-out-") as kept:
        try:
            run = run_inside(root, shell, timeout=4 * 3600, log=lambda line: print(line, flush=True),
                             keep_out=Path(kept))
        except InrootError as error:
            note(f"error: {error}")
            return 2
        note(f"inside the Debian 13 root: exit {run.returncode} after {run.seconds:.0f} s; "
             f"{json.dumps(run.versions)}")
        after = foreign_guests()
        if after:
            note(f"warning: {after} QEMU processes of this machine ran when the inner run ended")
        if json_path and (Path(kept) / "bench.json").exists():
            data = json.loads((Path(kept) / "bench.json").read_text())
            data["platform"] = {"name": "debian13", **run.versions}
            json_path.write_text(json.dumps(data, indent=1) + "\n")
    return run.returncode


def add_arguments(p) -> None:
    p.add_argument("--on", choices=PLATFORMS, default="debian12",
                   help="debian12: this machine's libvirt (default); debian13: inside the cached "
                        "Debian 13 root (libvirt 11; built on first use, a few minutes)")
    p.add_argument(INSIDE_FLAG, action="store_true", help=__import__("argparse").SUPPRESS)


def dispatch(command: str, args, argv: list[str]) -> int | None:
    """Run the command on the other platform when asked to; None: run it here."""
    if args.on == "debian13" and not args.inside_root:
        return run_on_debian13(command, list(argv if argv is not None else sys.argv[2:]), args.json)
    return None
