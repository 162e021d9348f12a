"""Evacuating guests to a peer: ``mgsave evacuate`` with migrations in parallel, one at a time,
and, for comparison, ``mgsave shutdown`` saving the same guests instead.

On the two-host rig (tests/rig/peers.py: two private libvirtds in their own network
namespaces, root, after scripts/setup). Each round times one contender, then puts the guests
back on host A running (``mgsave return``, or a start of the saved guests), untimed. Prints the
median and min-max of each contender's wall time.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import textwrap
import time

from bench.common import say, spread, table

CONTENDERS = ("evacuate-parallel", "evacuate-serial", "save-all")


def _policy(peer: str, home: str, parallel: int, chain: str) -> str:
    return textwrap.dedent(f"""\
        version: 1
        limits: {{max_parallel_migrations: {parallel}, max_parallel_saves: {parallel}}}
        defaults:
          on_shutdown: {chain}
          migrate: {{peers: ["{peer}"], come_back: true, home: "{home}"}}
        """)


class _Mgsave:
    def __init__(self, host, workdir):
        self.host, self.dir = host, workdir
        self.dir.mkdir(mode=0o755, exist_ok=True)
        self.policy = self.dir / "policy.yaml"

    def __call__(self, command: str, policy: str) -> float:
        self.policy.write_text(policy)
        os.chmod(self.policy, 0o644)
        argv = [sys.executable, "-m", "libmgsave", command, "--policy", str(self.policy),
                "--state-dir", str(self.dir / "state"), "--json"]
        started = time.monotonic()
        out = self.host.run(argv, capture_output=True, text=True, timeout=1800)
        seconds = time.monotonic() - started
        if out.returncode not in (0, 10):
            raise SystemExit(f"mgsave {command} failed ({out.returncode}):\n{out.stderr[-3000:]}")
        bad = [g["name"] for g in json.loads(out.stdout)["guests"] if not g["ok"]]
        if bad:
            print(f"  warning: mgsave {command}: not their first choice: {', '.join(bad)}", file=sys.stderr)
        return seconds


def run(args) -> dict:
    from tests.rig import domain_xml, unavailable_reason
    from tests.rig.peers import HostPair

    reason = unavailable_reason()
    if reason:
        raise SystemExit(f"bench evacuate: {reason}")
    times: dict[str, list[float]] = {c: [] for c in CONTENDERS}
    with HostPair() as (a, b):
        conn = a.connect()
        names = [f"evac-{i}" for i in range(args.guests)]
        for name in names:
            dom = conn.defineXML(domain_xml(name, memory_mib=args.memory, fill_mib=args.fill,
                                            serial=a.workdir.parent / "serial" / f"{name}.log"))
            dom.create()
        time.sleep(args.settle + 5)  # the guests fill their memory
        mgsave = _Mgsave(a, a.workdir.parent / "bench")
        for round_ in range(args.rounds):
            for contender in CONTENDERS:
                parallel = 1 if contender == "evacuate-serial" else args.guests
                if contender == "save-all":
                    times[contender].append(mgsave("shutdown", _policy(b.tcp_uri, a.tcp_uri, parallel, "[save]")))
                    for name in names:  # back, untimed
                        conn.lookupByName(name).create()
                else:
                    times[contender].append(mgsave("evacuate", _policy(b.tcp_uri, a.tcp_uri, parallel, "[migrate]")))
                    mgsave("return", _policy(b.tcp_uri, a.tcp_uri, args.guests, "[migrate]"))
                print(f"round {round_ + 1}: {contender}: {times[contender][-1]:.1f} s", file=sys.stderr, flush=True)
                time.sleep(args.settle)
        conn.close()
    return times


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="bench evacuate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--guests", type=int, default=4, help="guests on host A (default 4)")
    p.add_argument("--memory", type=int, default=256, help="MiB of RAM per guest (default 256)")
    p.add_argument("--fill", type=int, default=64, help="MiB of random data each guest holds (default 64)")
    p.add_argument("--rounds", type=int, default=3, help="rounds per contender (default 3)")
    p.add_argument("--settle", type=float, default=1.0, help="seconds of quiet between two timed runs")
    args = p.parse_args(argv)
    times = run(args)
    say(f"{args.guests} guests of {args.memory} MiB ({args.fill} MiB filled), {args.rounds} rounds; "
        f"median (min-max) wall time of the mgsave command:")
    say(table(["contender", "time"], [[c, spread(times[c])] for c in CONTENDERS]))
    return 0
