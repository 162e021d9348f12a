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
    out = bench("scale", "--guests", "20,50", "--repeat", "1")
    assert "| mgsave plan " in out and "| mgsave status --json " in out and "| mgsave shutdown --dry-run " in out
    assert "50 guests" in out and "MiB" in out


def test_startup_runs():
    out = bench("startup", "--repeat", "1", "--top", "2")
    assert "| mgsave --help " in out and "| mgsave check " in out
    assert "heaviest imports of `mgsave check`" in out
    assert "| mgsave shutdown, to its first save (policy validated before) " in out
    assert re.search(r"modules loaded by `mgsave shutdown, to its first save \(policy validated now\)`: \d+", out)


@pytest.mark.parametrize("command", ["compare", "hostcycle", "deadline", "scale", "startup", "evacuate"])
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


@pytest.mark.parametrize("command", ["compare", "hostcycle"])
def test_compare_and_hostcycle_measure_each_image_format_on_random_or_compressible_memory(command):
    out = " ".join(bench(command, "--help").split())
    assert "--formats F,F,..." in out and "raw, sparse, zstd, lzop, gzip, bzip2, xz, or all" in out
    assert "--fill-kind {random,text}" in out


def test_a_format_contender_asks_for_its_format_and_fails_on_images_in_another(tmp_path):
    import struct

    from bench import formats
    from bench.common import write_policy
    from libmgsave.policy import ImageFormat
    from libmgsave.policyfile import load_policy

    contenders = formats.with_formats(["mgsave", "floor"], "all")
    assert contenders[:2] == ["mgsave", "floor"] and "mgsave-zstd" in contenders and "mgsave-sparse" in contenders
    assert formats.with_formats(["mgsave"], "gzip,xz") == ["mgsave", "mgsave-gzip", "mgsave-xz"]
    with pytest.raises(SystemExit, match="unknown image formats"):
        formats.with_formats([], "lz4")
    policy = load_policy(write_policy(tmp_path, extra=formats.policy_lines("mgsave-zstd")))
    assert policy.defaults["image_format"] is ImageFormat.ZSTD
    assert formats.policy_lines("mgsave") == "" and formats.format_of("mgsave-channels") is None

    image = tmp_path / "g.save"  # a save image's header, format 5 (zstd), then room with a hole
    with open(image, "wb") as f:
        f.write(b"LibvirtQemudSave" + struct.pack("<5I", 2, 4096, 1, 5, 0))
        f.truncate(64 * 2**20)
    formats.check_format("mgsave-zstd", image)
    formats.check_format("mgsave", image)  # asks for none
    with pytest.raises(RuntimeError, match="is in format zstd, not gzip"):
        formats.check_format("mgsave-gzip", image)
    assert formats.bytes_on_disk(image) < 64 * 2**20
