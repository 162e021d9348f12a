"""The benchmark scripts run, in a tiny configuration. No figure is checked: CI asserts no times."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def bench(*args: str, timeout: float = 120) -> str:
    proc = subprocess.run([sys.executable, "-m", "bench", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def test_scale_runs_with_50_guests():
    out = bench("scale", "--guests", "20,50", "--repeat", "1", "--profile", "3")
    assert "| mgsave plan " in out and "| mgsave status --json " in out and "| mgsave shutdown --dry-run " in out
    assert "| mgsave status " in out
    assert "50 guests" in out and "MiB" in out
    assert "## Function calls (cProfile" in out and "most called by `mgsave status`" in out


def test_startup_runs():
    out = bench("startup", "--repeat", "1", "--top", "2")
    assert "| mgsave --help " in out and "| mgsave check " in out
    assert "heaviest imports of `mgsave check`" in out
    assert "| mgsave shutdown, to its first save (policy validated before) " in out
    assert re.search(r"modules loaded by `mgsave shutdown, to its first save \(policy validated now\)`: \d+", out)


@pytest.mark.parametrize("command", ["compare", "deadline", "scale", "startup", "evacuate"])
def test_every_benchmark_has_help(command):
    assert "usage:" in bench(command, "--help")


def test_node_file_holds_the_guests_asked_for():
    import libvirt

    from bench.scale import node_xml

    path = Path(__import__("tempfile").mkdtemp()) / "node.xml"
    path.write_text(node_xml(40))
    conn = libvirt.open(f"test://{path}")
    try:
        domains = conn.listAllDomains(0)
        assert len(domains) == 40
        running = [d for d in domains if d.isActive()]
        assert len(running) == 32
        assert sum(1 for d in domains if d.hasManagedSaveImage(0)) == 4
        assert sum(1 for d in running if not d.isPersistent()) == 2
    finally:
        conn.close()
