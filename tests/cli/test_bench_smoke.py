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
    assert "| mgsave status " in out and "| mgsave status --json, after a shutdown pass " in out
    assert "50 guests" in out and "MiB" in out
    assert "## Function calls (cProfile" in out and "most called by `mgsave status`" in out


def test_startup_runs():
    out = bench("startup", "--repeat", "1", "--top", "2")
    assert "| mgsave --help " in out and "| mgsave check " in out
    assert "heaviest imports of `mgsave check`" in out
    assert "| mgsave shutdown, to its first save (policy validated before) " in out
    assert re.search(r"modules loaded by `mgsave shutdown, to its first save \(policy validated now\)`: \d+", out)


@pytest.mark.parametrize("command", ["compare", "hostcycle", "deadline", "scale", "startup", "evacuate", "power"])
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


def test_every_benchmark_is_listed():
    from bench.__main__ import COMMANDS

    listed = {path.stem for path in (REPO / "bench").glob("*.py")} - {"__init__", "__main__", "common", "platform",
                                                                       "disklimit", "compare_report", "formats"}
    assert listed == set(COMMANDS)


def test_the_disk_limit_is_measured_on_the_directory_given(tmp_path):
    from bench import disklimit

    limit = disklimit.measure(tmp_path, 5 << 20)
    assert limit.nbytes == 8 << 20  # whole 4 MiB blocks
    assert limit.write_s > 0 and limit.read_s > 0 and limit.fs_type
    assert list(tmp_path.iterdir()) == []  # its file is gone


def test_the_figures_are_given_as_shares_of_the_limit():
    from bench.disklimit import DiskLimit, share_targets, shares

    limits = [DiskLimit(400_000_000, 2.0, 1.0, "ext4")]  # 200 MB/s write, 400 MB/s read
    results = {"mgsave": [{"bytes": 100_000_000, "save": 1.0, "resume": 0.5}],
               "floor": [{"bytes": 100_000_000, "save": 0.5, "resume": 0.25}]}
    rows = {line.split("|")[1].strip(): [cell.strip() for cell in line.split("|")[2:-1]]
            for line in shares(results, limits).splitlines()[2:] if line.startswith("|")}
    assert rows == {"mgsave": ["100 MB/s", "50%", "200 MB/s", "50%"], "floor": ["200 MB/s", "100%", "400 MB/s", "100%"]}
    rows = share_targets(results, limits, big=False)
    assert rows == [["save-all mgsave / the disk's limit", "50%", ">= 70%", "MISSED"],
                    ["resume-all mgsave / the disk's limit", "50%", ">= 70%", "MISSED"]]


def test_a_big_guest_is_sized_from_free_memory_and_disk_within_the_cap():
    from bench.disklimit import big_guest_size

    gib = 1 << 30
    # 20 GiB available less a reserve of a fifth of 24 GiB (4.8 GiB), halved: 7 whole GiB
    assert big_guest_size(24 * gib, 20 * gib, 100 * gib) == (7168, 5734)
    assert big_guest_size(24 * gib, 20 * gib, 9 * gib) == (4096, 3276)  # half the free disk
    assert big_guest_size(24 * gib, 20 * gib, 100 * gib, cap_mib=1024) == (1024, 819)
    with pytest.raises(RuntimeError, match="no room for a guest of 1 GiB"):
        big_guest_size(8 * gib, 5 * gib, 100 * gib)


def test_a_discharge_counts_the_promised_guests_safe_before_the_cut():
    from bench.power import Discharge, promised, safe_before, saves_estimate

    plan = {"plans": [{"pass": "shutdown", "guests": [
        {"name": "a", "actions": ["save", "shutdown"], "save_dropped_because": None},
        {"name": "b", "actions": ["save", "shutdown"], "save_dropped_because": "past the deadline"},
        {"name": "c", "actions": ["shutdown", "poweroff"], "save_dropped_because": None}]}]}
    assert promised(plan) == ("a",)
    step = {"finished": "2026-12-06T22:00:10.000000Z"}
    result = {"guests": [{"name": "a", "outcome": "saved", "steps": [step]},
                         {"name": "c", "outcome": "shut-down", "steps": [{"finished": "2026-12-06T22:00:30.000000Z"}]}]}
    from libmgsave.jsonout import epoch

    cut = epoch("2026-12-06T22:00:20.000000Z")
    assert safe_before(result, cut) == ("a",)
    d = Discharge(False, needed=10.0, took=11.0, lead=30.0, promised=("a",), safe=("a",), flushes=(),
                  deadline=40.0, outcomes=("a saved",), estimate=5.0)
    assert round(d.error, 3) == 0.1 and d.promised_safe == 1.0 and round(d.estimate_error, 3) == 1.2
    plan["plans"][0]["guests"][0]["estimated_save_end_seconds"] = 4.5
    assert saves_estimate(plan) == 4.5


def test_compare_prints_its_tables_from_its_measurements(capsys):
    import argparse

    from bench.compare_report import print_level, print_summary
    from bench.disklimit import DiskLimit

    rounds = {"mgsave": [{"save": 2.0, "resume": 1.0, "bytes": 400_000_000, "shutdown_startup": 0.3}],
              "floor": [{"save": 1.8, "resume": 0.9, "bytes": 400_000_000}]}
    limit = DiskLimit(400_000_000, 1.0, 0.5, "ext4")
    args = argparse.Namespace(memory=512, fill=300, warm=False, guests=4, big=False, fill_kind="random")
    print_level(4, rounds, args, main=True, limits=[limit])
    print_summary({"levels": {4: rounds}, "limits": {4: [limit.to_dict()]}, "machine": {}, "foreign_qemu_at_start": 0,
                   "busy": []}, args)
    out = capsys.readouterr().out
    assert "| mgsave    | 200 MB/s        | 50%  " in out  # 400 MB in 2 s, of a 400 MB/s write
    assert "| save-all mgsave / the disk's limit   | 50%      | >= 70%  | MISSED |" in out
    assert "| resume-all mgsave / floor            | 1.11     | <= 1.05 | MISSED |" in out
