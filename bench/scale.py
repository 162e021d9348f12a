"""mgsave with thousands of guests, on libvirt's test driver.

Generates test-driver node files (``test:///<file>``) with N guests (default 1,000 and 10,000:
80% running, 5% of them transient; 10% shut off with a managed-save image; 10% shut off), then
times, as separate processes, each run --repeat times:

    mgsave plan                 (--connect test:///<file>, --state-dir in a temporary directory)
    mgsave status
    mgsave status --json
    mgsave shutdown --dry-run
    mgsave status --json        (with the record of a shutdown pass that handled every guest)

and reports the median wall time and the peak resident memory of the process (getrusage of the
child). libvirt's test driver parses the node file inside the mgsave process when it connects;
that parse is timed on its own (a process that only imports libvirt and connects) so mgsave's
own share can be told apart.

--profile also runs each command once more under cProfile at the largest size and prints what
it called most and the Python function calls per guest: counts, which a busy machine does not
change, where the timings above it does.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import uuid
from pathlib import Path

from bench.common import (dump_json, machine_description, median, mgsave_command, note, run_timed,
                          say, table, tempdir)

COMMANDS = {
    "plan": ["plan"],
    "status": ["status"],
    "status --json": ["--json", "status"],
    "shutdown --dry-run": ["shutdown", "--dry-run"],
}


def node_xml(n: int) -> str:
    """A test-driver node with ``n`` guests of 512 MiB..8 GiB: 80% running (one in twenty of them
    transient), 10% shut off with a managed-save image, 10% shut off without."""
    parts = ["<node>\n",
             "  <cpu><nodes>1</nodes><sockets>1</sockets><cores>64</cores><threads>1</threads>"
             "<active>64</active><mhz>2000</mhz><model>x86_64</model></cpu>\n",
             "  <memory>1073741824</memory>\n"]
    ns = "xmlns:test='http://libvirt.org/schemas/domain/test/1.0'"
    for i in range(n):
        mib = 512 << (i % 5)
        state = ""
        if i % 10 == 8:
            state = "<test:runstate>5</test:runstate><test:hasmanagedsave>yes</test:hasmanagedsave>"
        elif i % 10 == 9:
            state = "<test:runstate>5</test:runstate>"
        elif i % 20 == 7:
            state = "<test:transient/>"
        parts.append(
            f"  <domain type='test' {ns}><name>guest-{i:05d}</name><uuid>{uuid.UUID(int=i + 1)}</uuid>"
            f"<memory unit='MiB'>{mib}</memory><currentMemory unit='MiB'>{mib}</currentMemory>"
            f"<vcpu>1</vcpu><os><type>hvm</type></os>{state}</domain>\n")
    parts.append("</node>\n")
    return "".join(parts)


def _commands(mgsave: list[str], uri: str, state: Path, work: Path) -> dict[str, list[str]]:
    """What is timed: libvirt's connect alone, and each mgsave command; ``status --json`` also
    with the record of a shutdown pass that handled every guest (made here, untimed), which it
    reads and validates."""
    commands = {"libvirt connect only":
                [sys.executable, "-c", f"import libvirt; c = libvirt.open({uri!r}); c.listAllDomains(0)"]}
    for label, argv in COMMANDS.items():
        commands[f"mgsave {label}"] = mgsave + ["--state-dir", str(state), *argv]
    recorded = state.with_name(state.name + "-recorded")
    run_timed(mgsave + ["--state-dir", str(recorded), "shutdown"], log=work / "scale.log", check=False)
    commands["mgsave status --json, after a shutdown pass"] = mgsave + ["--state-dir", str(recorded), "--json",
                                                                        "status"]
    return commands


def run(args) -> dict:
    sizes = [int(x) for x in args.guests.split(",") if x]
    work = tempdir("scale")
    mgsave = mgsave_command()
    policy = work / "policy.yaml"
    policy.write_text("version: 1\nconnections: ['qemu:///system']\n")
    data = {"machine": machine_description(), "sizes": {}}
    try:
        for n in sizes:
            path = work / f"node-{n}.xml"
            path.write_text(node_xml(n))
            uri = f"test://{path}"
            state = work / f"state-{n}"
            commands = _commands(mgsave + ["--policy", str(policy), "--connect", uri], uri, state, work)
            # Round-robin, so that a busy moment of the machine hits every command alike.
            runs: dict[str, list] = {label: [] for label in commands}
            for _ in range(args.repeat):
                for label, cmd in commands.items():
                    # 10: some guests would be degraded (the node's thousands of guests of up to
                    # 8 GiB do not fit the deadline); the dry run still plans every one
                    runs[label].append(run_timed(cmd, log=work / "scale.log", stdout_file=Path(os.devnull),
                                                 ok=(0, 10) if "--dry-run" in label else (0,)))
            shutil.rmtree(state, ignore_errors=True)
            shutil.rmtree(state.with_name(state.name + "-recorded"), ignore_errors=True)
            row = {label: {"seconds": median([t for t, _ in r]), "min": min(t for t, _ in r),
                           "max": max(t for t, _ in r), "maxrss_kib": max(k for _, k in r)}
                   for label, r in runs.items()}
            data["sizes"][n] = row
            if args.profile and n in (min(sizes), max(sizes)):
                data.setdefault("profile", {})[n] = _profile(commands, work, args.profile)
            note(f"{n} guests: " + ", ".join(f"{k} {v['seconds']:.2f} s" for k, v in row.items()))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    _print(data, args)
    dump_json(args.json, data)
    return data


def _profile(commands: dict[str, list[str]], work: Path, top: int) -> dict:
    """Each mgsave command once under cProfile: its function calls in all, and the ``top``
    Python functions and libvirt calls (the binding's C functions) it called most."""
    import pstats

    out = {}
    prefix = len(mgsave_command())
    for label, argv in commands.items():
        if not label.startswith("mgsave"):
            continue
        stats_file = work / "profile.out"
        profiled = [sys.executable, "-m", "cProfile", "-o", str(stats_file), "-m", "libmgsave", *argv[prefix:]]
        run_timed(profiled, log=work / "scale.log", stdout_file=Path(os.devnull))
        stats = pstats.Stats(str(stats_file)).stats
        by_calls = sorted(((k, v) for k, v in stats.items() if k[0] != "~" or "libvirtmod" in k[2]),
                          key=lambda item: -item[1][1])[:top]
        out[label] = {"calls": sum(v[1] for v in stats.values()),
                      "top": [[f"{Path(f).name}:{line}({name})", v[1]] for (f, line, name), v in by_calls]}
    return out


def _print_profile(profile: dict) -> None:
    few, n = min(profile), max(profile)
    say(f"\n## Function calls (cProfile; counts, not times): at {n} guests, and per guest "
        f"(the difference to {few} guests)\n")
    rows = [[label, f"{p['calls']:,}", f"{(p['calls'] - profile[few][label]['calls']) / max(n - few, 1):.0f}"]
            for label, p in profile[n].items()]
    say(table(["command", f"function calls, {n} guests", "per guest"], rows))
    for label, p in profile[n].items():
        say(f"\nmost called by `{label}`:\n")
        say(table(["function", "calls"], [[f, f"{c:,}"] for f, c in p["top"]]))


def _print(data: dict, args) -> None:
    sizes = sorted(data["sizes"])
    labels = list(next(iter(data["sizes"].values())))
    say(f"## Scale: libvirt's test driver, {args.repeat} runs each (wall time median, min-max; peak RSS)\n")
    headers = ["command"] + [f"{n} guests" for n in sizes]
    rows = []
    for label in labels:
        row = [label]
        for n in sizes:
            m = data["sizes"][n][label]
            row.append(f"{m['seconds']:.2f} s ({m['min']:.2f}-{m['max']:.2f}); {m['maxrss_kib'] / 1024:.0f} MiB")
        rows.append(row)
    if len(sizes) > 1:
        headers.append(f"ratio of fastest runs {sizes[-1]}/{sizes[0]} (guests x{sizes[-1] / sizes[0]:g})")
        for row, label in zip(rows, labels):
            a, b = data["sizes"][sizes[0]][label]["min"], data["sizes"][sizes[-1]][label]["min"]
            row.append(f"{b / a:.1f}")
    say(table(headers, rows))
    say("\nmgsave's own share (fastest run of the command minus the fastest 'libvirt connect only', "
        "which is the interpreter, importing libvirt, and the test driver parsing the node file):\n")
    rows = []
    for label in labels[1:]:
        row = [label]
        for n in sizes:
            own = data["sizes"][n][label]["min"] - data["sizes"][n]["libvirt connect only"]["min"]
            row.append(f"{own:.2f} s ({own / n * 1e3:.2f} ms/guest)")
        rows.append(row)
    say(table(["command"] + [f"{n} guests" for n in sizes], rows))
    if "profile" in data:
        _print_profile(data["profile"])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench/run scale", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--guests", default="1000,10000", help="comma-separated guest counts (default 1000,10000)")
    p.add_argument("--repeat", type=int, default=3, help="runs per command (default 3)")
    p.add_argument("--profile", type=int, default=0, metavar="TOP",
                   help="also count each command's function calls at the largest size (cProfile) and "
                        "list the TOP most called")
    p.add_argument("--json", type=Path, help="also write the results to this JSON file")
    args = p.parse_args(argv)
    run(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
