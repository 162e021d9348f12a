"""Running the real ``mgsave`` command against the rig, as a subprocess, with a test's own policy
file and state directory; and looking at what it left (its output, its records, the save images).

    run = mgsave("shutdown")              # waits; asserts exit 0 unless expect_rc says otherwise
    pending = mgsave.start("boot")        # runs in the background: pending.proc, pending.wait()
    mgsave.outcomes("shutdown")           # {guest name: outcome} from the record
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import libvirt
import pytest

from libmgsave import state

from .daemon import SAVE_DIR

REPO = Path(__file__).resolve().parents[2]
# The environment of a service or a caller that would send output or state elsewhere.
FOREIGN_ENV = ("JOURNAL_STREAM", "INVOCATION_ID", "NOTIFY_SOCKET", "STATE_DIRECTORY", "MGSAVE_POLICY",
               "MGSAVE_STATE_DIR", "LIBVIRT_DEFAULT_URI")


class Run:
    """A finished ``mgsave`` command: exit status, stdout (the summary, or JSON with --json),
    stderr (the log)."""

    def __init__(self, args, rc: int, stdout: str, stderr: str, seconds: float):
        self.args, self.rc, self.stdout, self.stderr, self.seconds = args, rc, stdout, stderr, seconds
        try:
            self.data = json.loads(stdout) if stdout.strip() else None
        except ValueError:
            self.data = None

    def __str__(self) -> str:
        return (f"mgsave {' '.join(self.args)}: exit {self.rc} after {self.seconds:.1f} s\n"
                f"--- stderr ---\n{self.stderr[-5000:]}\n--- stdout ---\n{self.stdout[-5000:]}")

    __repr__ = __str__

    def guest(self, name: str) -> dict:
        """The guest's entry in the JSON output."""
        found = [g for g in self.data["guests"] if g["name"] == name]
        assert len(found) == 1, f"{name} not (once) in the output of {self}"
        return found[0]

    def outcomes(self) -> dict[str, str]:
        """{guest name: outcome} from the JSON output."""
        return {g["name"]: g["outcome"] for g in self.data["guests"]}


class Running:
    def __init__(self, args, proc: subprocess.Popen, out: Path, err: Path):
        self.args, self.proc, self.out, self.err = args, proc, out, err
        self.t0 = time.monotonic()

    def stderr(self) -> str:
        return self.err.read_text(errors="replace")

    def wait(self, timeout: float = 300) -> Run:
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            pytest.fail(f"mgsave {' '.join(self.args)} still running after {timeout:.0f} s:\n{self.stderr()[-5000:]}")
        return Run(self.args, rc, self.out.read_text(errors="replace"), self.stderr(), time.monotonic() - self.t0)


class Mgsave:
    """The real CLI, with this test's policy file (0644, when ``policy`` is given) and state
    directory; with ``json``, every command gets --json and must print JSON."""

    def __init__(self, tmp_path: Path, *, policy: str | None = None, json: bool = False):
        self.tmp = tmp_path
        self.state_dir = tmp_path / "state"
        self.policy = tmp_path / "policy.yaml"
        self.json = json
        self.runs = 0
        if policy is not None:
            self.write_policy(policy)

    def write_policy(self, text: str) -> None:
        if self.policy.is_dir():
            self.policy.rmdir()
        self.policy.write_text(textwrap.dedent(text))
        os.chmod(self.policy, 0o644)

    def argv(self, args) -> list[str]:
        return [sys.executable, "-m", "libmgsave", args[0], "--policy", str(self.policy),
                "--state-dir", str(self.state_dir), *(["--json"] if self.json else []), *args[1:]]

    def env(self) -> dict:
        # The rig's tests look for whole messages in the summary: give it lines wide enough that
        # none is wrapped (tests/cli/test_text_width.py holds the 80 columns).
        return {**{k: v for k, v in os.environ.items() if k not in FOREIGN_ENV}, "COLUMNS": "250"}

    def start(self, *args, preexec=None) -> Running:
        self.runs += 1
        out = self.tmp / f"run{self.runs}.out"
        err = self.tmp / f"run{self.runs}.err"
        argv = self.argv(args)
        if preexec:
            argv = preexec + argv
        proc = subprocess.Popen(argv, cwd=REPO, env=self.env(), stdout=out.open("w"), stderr=err.open("w"),
                                stdin=subprocess.DEVNULL)
        return Running(args, proc, out, err)

    def __call__(self, *args, expect_rc: int | None = 0, timeout: float = 300, preexec=None) -> Run:
        run = self.start(*args, preexec=preexec).wait(timeout)
        print(f"mgsave {' '.join(args)}: exit {run.rc}, {run.seconds:.1f} s")
        if expect_rc is not None:
            assert run.rc == expect_rc, str(run)
        if self.json:
            assert run.data is not None, f"no JSON on stdout: {run}"
        return run

    def record(self, kind: str) -> dict | None:
        """The record, read as mgsave reads it (whole, of the right kind and format); None when
        there is none."""
        return state.read_record(self.state_dir / f"last-{kind}.json", kind)

    def recorded(self, kind: str) -> dict:
        data = self.record(kind)
        assert data is not None, f"no {kind} record"
        return data

    def outcomes(self, kind: str) -> dict[str, str]:
        """{guest name: outcome} from the record."""
        return {e["name"]: e["outcome"] for e in self.recorded(kind)["guests"].values()}

    def entry(self, kind: str, name: str) -> dict:
        [entry] = [e for e in self.recorded(kind)["guests"].values() if e["name"] == name]
        return entry


def image(name: str) -> Path:
    """Where the rig's libvirt keeps the guest's managed-save image."""
    return Path(SAVE_DIR) / f"{name}.save"


def running(conn) -> list[str]:
    return sorted(d.name() for d in conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE))
