"""How long ``mgsave check`` takes on policy files of growing size, every rule with mistakes.

A pass reads the policy too (and falls back to the built-in defaults when it is broken), so this
time is spent inside a shutdown. The check must grow linearly with the file: the table shows the
seconds per 1,000 rules for each size, which stay about the same when it does.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

from bench.common import REPO, median, note, spread, table, tempdir

# Three mistakes a rule: a misspelled key, a wrong type, a misspelled step.
RULE = """\
  - match: {{name: 'g{i}-*'}}
    autostrat: always
    order: x{i}
    on_shutdown: [save, shutdwn]
"""


def write(directory: Path, rules: int) -> Path:
    path = directory / f"policy-{rules}.yaml"
    path.write_text("version: 1\nguests:\n" + "".join(RULE.format(i=i) for i in range(rules)))
    os.chmod(path, 0o644)
    return path


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="bench/run policy", description=__doc__)
    parser.add_argument("--sizes", default="250,500,1000,2000,4000", help="numbers of rules (default: %(default)s)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per size (default: %(default)s)")
    args = parser.parse_args(argv)
    directory = tempdir("mgsave-bench-policy-")
    os.chmod(directory, 0o755)
    rows = []
    for rules in [int(n) for n in args.sizes.split(",") if n]:
        path = write(directory, rules)
        times = []
        for _ in range(args.repeat):
            started = time.perf_counter()
            # This checkout's code, whatever is installed: python -m from the repository root.
            code = subprocess.run([sys.executable, "-m", "libmgsave", "--policy", str(path), "check"], cwd=REPO,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode
            times.append(time.perf_counter() - started)
            if code != 2:
                raise SystemExit(f"mgsave check exited {code} on {path}, not 2 (problems found)")
        note(f"{rules} rules: {spread(times)}")
        rows.append([rules, rules * 3, f"{median(times):.2f}", spread(times), f"{median(times) / rules * 1000:.2f}"])
    print(table(["rules", "mistakes", "median s", "min-max", "s per 1,000 rules"], rows))
    return 0
