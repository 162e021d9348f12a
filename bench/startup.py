"""The start-up cost of the ``mgsave`` command, and what it imports.

Times, as separate processes (median of --repeat runs, wall time and peak RSS): the bare
interpreter, ``mgsave --version``, ``mgsave --help``, ``mgsave check`` and ``mgsave plan`` (with a
policy file, on libvirt's in-process ``test:///default`` driver, so no daemon is involved), and
lists the heaviest imports of each command (``python -X importtime``).

And a pass's start-up as the issue defines it, from exec to its first libvirt call that saves or
starts a guest: ``mgsave shutdown`` on ``test:///default`` (its running guest), stopped at that
call (``os._exit`` in place of the binding's save and start methods), once with the policy
validated before (the state directory's cache) and once validated afresh; with the number of
modules loaded by then.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
from pathlib import Path

from bench.common import dump_json, machine_description, median, mgsave_command, run_timed, say, table, tempdir

URI = "test:///default"


def _commands(policy: Path, state: Path) -> dict[str, list[str]]:
    common = ["--policy", str(policy), "--connect", URI, "--state-dir", str(state)]
    return {
        "mgsave --version": ["--version"],
        "mgsave --help": ["--help"],
        "mgsave check": [*common, "check"],
        "mgsave plan": [*common, "plan"],
        "mgsave boot --dry-run": [*common, "boot", "--dry-run"],
    }


# mgsave's CLI, stopped at its first libvirt call that saves or starts a guest; "--forget" first
# removes the validated policy from the state directory (``--state-dir`` must follow it).
FIRST_CALL_PROBE = """\
import glob, os, sys
if sys.argv[1] == "--forget":
    del sys.argv[1]
    for path in glob.glob(os.path.join(sys.argv[2], "validated-policy-*.json")):
        os.unlink(path)
import libvirt

def stop(*args, **kwargs):
    sys.stderr.write("MODULES " + " ".join(sorted(sys.modules)) + "\\n")
    sys.stderr.flush()
    os._exit(0)

for cls, names in ((libvirt.virDomain, ("managedSave", "save", "saveFlags", "saveParams", "create",
                                         "createWithFlags")),
                   (libvirt.virConnect, ("restore", "restoreFlags", "restoreParams", "createXML"))):
    for name in names:
        if hasattr(cls, name):
            setattr(cls, name, stop)
from libmgsave import cli
cli.main(sys.argv[1:])
sys.exit("no guest was saved or started")
"""


def _to_first_call(policy: Path, state: Path) -> dict[str, list[str]]:
    probe = [sys.executable, "-c", FIRST_CALL_PROBE]
    tail = ["--policy", str(policy), "--connect", URI, "shutdown"]
    return {"mgsave shutdown, to its first save (policy validated before)": [*probe, "--state-dir", str(state), *tail],
            "mgsave shutdown, to its first save (policy validated now)": [*probe, "--forget", "--state-dir",
                                                                           str(state), *tail]}


def modules_at_first_call(argv: list[str], cwd: Path | None = None) -> list[str] | None:
    """The modules the probe had loaded at its first save or start (None: it never got there).
    tests/unit/test_startup_weight.py checks which."""
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=120, cwd=cwd)
    found = re.findall(r"^MODULES (.*)$", proc.stderr, re.MULTILINE)
    return found[0].split() if found else None


def imports(argv: list[str], top: int) -> list[tuple[str, float]]:
    """The top-level imports of ``python -m libmgsave argv`` with their cumulative seconds."""
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "libmgsave", *argv],
                          capture_output=True, text=True)
    found = []
    for line in proc.stderr.splitlines():
        m = re.match(r"import time:\s+\d+ \|\s+(\d+) \|( *)(\S+)", line)
        if m and len(m.group(2)) <= 1:  # imported by the program itself, not by another module
            found.append((m.group(3), int(m.group(1)) / 1e6))
    found.sort(key=lambda x: -x[1])
    return found[:top]


def run(args) -> dict:
    work = tempdir("startup")
    policy = work / "policy.yaml"
    policy.write_text("version: 1\nconnections: ['qemu:///system']\nlimits: {max_parallel_saves: auto}\n")
    state = work / "state"
    mgsave = mgsave_command()
    data = {"machine": machine_description(), "commands": {}, "imports": {}}
    rows = []
    base = [sys.executable, "-c", "pass"]
    first_calls = _to_first_call(policy, state)
    commands = [("python -c pass (the interpreter alone)", base),
                *[(k, mgsave + v) for k, v in _commands(policy, state).items()], *first_calls.items()]
    runs: dict[str, list] = {label: [] for label, _ in commands}
    for _ in range(args.repeat):  # round-robin: a busy moment hits every command alike
        for label, argv in commands:
            runs[label].append(run_timed(argv, log=work / "log", stdout_file=Path(os.devnull), check=False))
    for label, _ in commands:
        times, rss = [t for t, _ in runs[label]], [k for _, k in runs[label]]
        data["commands"][label] = {"seconds": median(times), "min": min(times), "max": max(times),
                                   "maxrss_kib": max(rss)}
        rows.append([label, f"{median(times) * 1e3:.0f} ms ({min(times) * 1e3:.0f}-{max(times) * 1e3:.0f})",
                     f"{max(rss) / 1024:.0f} MiB"])
    say(f"## Start-up cost of the mgsave command ({args.repeat} runs each)\n")
    say(table(["command", "wall time (min-max)", "peak RSS"], rows))
    for label, argv in first_calls.items():
        loaded = modules_at_first_call(argv)
        data["commands"][label]["modules"] = count = None if loaded is None else len(loaded)
        say(f"\nmodules loaded by `{label}`: {count}")
    for label, argv in _commands(policy, state).items():
        if label in ("mgsave --version",):
            continue
        found = imports(argv, args.top)
        data["imports"][label] = found
        say(f"\nheaviest imports of `{label}` (cumulative, one run): "
            + ", ".join(f"{name} {sec * 1e3:.0f} ms" for name, sec in found))
    subprocess.run(["rm", "-rf", str(work)], check=False)
    dump_json(args.json, data)
    return data


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench/run startup", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeat", type=int, default=10, help="runs per command (default 10)")
    p.add_argument("--top", type=int, default=6, help="imports listed per command (default 6)")
    p.add_argument("--json", type=Path, help="also write the results to this JSON file")
    run(p.parse_args(argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
