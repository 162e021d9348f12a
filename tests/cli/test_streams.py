"""Standard output and error that cannot be written never stop a pass.

At shutdown the console or the journal's stream may be gone, and ``mgsave shutdown > file`` may
fill a disk. Each test runs the real command in a subprocess (its own ``test:///default``, whose
sample guest "test" runs) with its output on /dev/full or on a pipe whose reader is gone.
Before, the first print (the plan) raised, the pass died with an internal error (exit 70)
before touching any guest, and wrote no record.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from libmgsave import state
from libmgsave.errors import ExitCode

REPO = Path(__file__).resolve().parents[2]


def closed_pipe() -> int:
    """The write end of a pipe nobody reads: writing to it fails with EPIPE."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    return write_end


def run_with(stdout, stderr, state_dir: Path, *args: str) -> int:
    proc = subprocess.run([sys.executable, "-m", "libmgsave", "--connect", "test:///default", "--state-dir",
                           str(state_dir), *args], stdout=stdout, stderr=stderr, cwd=REPO, timeout=120)
    return proc.returncode


@pytest.mark.parametrize("json_output", [False, True], ids=["text", "json"])
@pytest.mark.parametrize("where", ["stdout-full-stderr-closed", "stdout-closed-stderr-full"])
def test_a_pass_whose_output_cannot_be_written_still_saves_and_records(tmp_path, where, json_output):
    state_dir = tmp_path / "state"
    pipe = closed_pipe()
    try:
        with open("/dev/full", "w") as full:
            out, err = (full, pipe) if where == "stdout-full-stderr-closed" else (pipe, full)
            code = run_with(out, err, state_dir, *(["--json"] if json_output else []), "shutdown")
    finally:
        os.close(pipe)
    record = json.loads((state_dir / state.SHUTDOWN_RECORD).read_text())
    assert [g["outcome"] for g in record["guests"].values()] == ["saved"], record
    assert record["finished"] is not None
    # what the pass did decides the exit code, not the printing (never 70, nor Python's 120)
    assert code == ExitCode.OK


def test_the_loss_of_standard_output_is_said_on_standard_error(tmp_path):
    err = tmp_path / "stderr"
    with open("/dev/full", "w") as full, open(err, "w") as err_file:
        code = run_with(full, err_file, tmp_path / "state", "shutdown")
    text = err.read_text()
    assert "standard output cannot be written (No space left on device): carrying on without it" in text, text
    assert text.count("standard output cannot be written") == 1, text
    assert "internal error" not in text and "Traceback" not in text, text
    assert code == ExitCode.OK
