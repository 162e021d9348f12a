"""The shutdown deadline runs short on the real rig: the guests saved must be the ones the policy
ranks first; the others are shut down or powered off. (The order saves begin in, on libvirt's
test driver: tests/cli/test_deadline.py.)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.rig
def test_fault_deadline_runs_short(make_guests, rig_conn, tmp_path):
    """Four guests, one save at a time, a deadline that leaves room for about two saves. The
    guests saved are the highest-priority ones; the others are shut down or powered off; none
    is left running; the summary says which saves the deadline cut."""
    from tests.rig import state_reason

    names = make_guests(4, prefix="prio", memory_mib=256, fill_mib=32)
    rank = {name: i for i, name in enumerate(names)}  # prio-1 is the most important
    rules = "".join(f"  - match: {{name: {n}}}\n    priority: {10 - i}\n" for n, i in rank.items())
    policy = tmp_path / "policy.yaml"
    # 10 s of the deadline are kept in reserve for the fallback steps; 13 s leave about 3 s of saving
    policy.write_text("version: 1\nconnections: ['qemu:///system']\nlimits:\n  max_parallel_saves: 1\n"
                      "  shutdown_deadline: 13\ndefaults:\n  shutdown_timeout: 2\n"
                      f"guests:\n{rules}")
    os.chmod(policy, 0o644)
    proc = subprocess.run([sys.executable, "-m", "libmgsave", "shutdown", "--policy", str(policy), "--state-dir",
                           str(tmp_path / "state"), "--json"], cwd=REPO, capture_output=True, text=True, timeout=120)
    result = json.loads(proc.stdout)
    outcomes = {g["name"]: g["outcome"] for g in result["guests"]}
    saved = sorted((n for n, o in outcomes.items() if o == "saved"), key=rank.get)
    print(f"deadline 13 s, pass {result['duration_seconds']} s: {outcomes}")
    assert saved and saved == names[:len(saved)], f"not the top priorities saved: {outcomes}\n{proc.stderr}"
    assert len(saved) < len(names), "the deadline was meant to cut some saves"
    assert set(outcomes.values()) <= {"saved", "shut-down", "powered-off"}, f"{outcomes}\n{proc.stderr}"
    for name in names:
        assert state_reason(rig_conn, name)[0] == "shutoff"
        if outcomes[name] != "saved":
            guest = [g for g in result["guests"] if g["name"] == name][0]
            assert any("save skipped" in m or "deadline" in m for m in guest["messages"]) or \
                any(s["action"] == "save" and not s["ok"] for s in guest["steps"]), guest
