"""``mgsave report`` after real passes on libvirt's test driver: what the records hold, the chart,
and the SVG as a real browser (Debian's chromium, headless) draws it."""

import json
import os
import re
import shutil
import subprocess
import tempfile
import threading
import xml.etree.ElementTree as ET

import pytest

from libmgsave import state
from libmgsave.errors import ExitCode
from libmgsave.timeline import svg
from tests.cli.conftest import policy_runner
from tests.cli.terminal import terminal
from tests.pngcheck import colours
from tests.testdriver import define, hv  # noqa: F401

# One save at a time, so that guests wait for a slot; db is ready a moment after it resumes,
# and web1 is after db (it stops before db, and starts once db is ready).
POLICY = """\
version: 1
limits: {max_parallel_saves: 1, max_parallel_starts: 1}
guests:
  - match: {name: db}
    ready: 0.3s
  - match: {name: web1}
    after: [db]
"""
SVG = "{http://www.w3.org/2000/svg}"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync"]


@pytest.fixture
def mgsave(tmp_path, capsys):
    return policy_runner(tmp_path, capsys, POLICY, stderr=True)


def _cycle(hv, mgsave):
    define(hv, "db", "web1", "app")
    assert mgsave("shutdown")[0] == ExitCode.OK
    assert mgsave("boot")[0] == ExitCode.OK


def test_the_records_hold_every_phase(hv, mgsave):
    _cycle(hv, mgsave)
    shutdown = json.loads((mgsave.state_dir / state.SHUTDOWN_RECORD).read_text())["guests"]
    boot = json.loads((mgsave.state_dir / state.BOOT_RECORD).read_text())["guests"]
    by_name = lambda record: {e["name"]: e for e in record.values()}  # noqa: E731
    shutdown, boot = by_name(shutdown), by_name(boot)
    assert {w["kind"] for w in shutdown["db"]["waits"]} == {"after", "slot"}, "db stops after web1"
    assert all("slot" in {w["kind"] for w in e["waits"]} for e in shutdown.values())
    ready = [w for w in boot["db"]["waits"] if w["kind"] == "ready"]
    assert len(ready) == 1 and ready[0]["finished"] - ready[0]["started"] >= 0.3
    assert [s["action"] for s in boot["db"]["steps"]] == ["resume"]
    web_after = [w for w in boot["web1"]["waits"] if w["kind"] == "after"]
    assert web_after and web_after[0]["finished"] >= ready[0]["finished"], "web1 waited for db to be ready"


def test_report_draws_both_passes_in_80_columns(hv, mgsave):
    _cycle(hv, mgsave)
    code, out, _err = mgsave("report")
    assert code == ExitCode.OK
    assert max(len(line) for line in out.splitlines()) <= 80, out
    assert out.startswith("shutdown pass, ") and "\nboot pass, " in out
    assert "at most 1 save at once" in out and "at most 1 start at once" in out
    rows = {line.split()[0]: line for line in out.splitlines() if line.split() and line.split()[0] in ("db", "web1")}
    assert "R" in rows["db"] and "r" in rows["db"]  # the boot chart's db: resumed, then its readiness check
    code, out, _err = mgsave("--json", "report")
    passes = json.loads(out)["passes"]
    assert [p["pass"] for p in passes] == ["shutdown", "boot"]
    assert {g["name"] for g in passes[0]["guests"]} == {"db", "web1", "app"}


def test_report_without_records_says_so(mgsave):
    code, out, err = mgsave("report")
    assert code == ExitCode.OK
    assert out.strip() == "" and "no pass recorded" in err


@pytest.mark.skipif(shutil.which("chromium") is None, reason="needs Debian's chromium (scripts/setup installs it)")
def test_the_svg_is_drawn_by_a_real_browser(hv, mgsave, tmp_path):
    _cycle(hv, mgsave)
    picture = tmp_path / "timeline.svg"
    assert mgsave("report", "--svg", str(picture))[0] == ExitCode.OK
    screenshot = tmp_path / "timeline.png"
    with tempfile.TemporaryDirectory() as profile:
        done = subprocess.run(["chromium", *CHROMIUM_FLAGS, f"--user-data-dir={profile}",
                               f"--screenshot={screenshot}", "--window-size=960,600", picture.as_uri()],
                              capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and screenshot.exists(), done.stderr[-2000:]
    counts = colours(screenshot.read_bytes())
    total = sum(counts.values())
    assert counts[(255, 255, 255)] < total * 0.99, "a blank page"
    for kind in ("save", "resume", "slot", "ready"):
        rgb = tuple(int(svg.COLOURS[kind][i:i + 2], 16) for i in (1, 3, 5))
        assert counts[rgb] > 20, f"no {kind} bar drawn ({counts[rgb]} pixels of {svg.COLOURS[kind]})"
    shutil.copy(screenshot, os.environ.get("MGSAVE_KEEP_SCREENSHOT", os.devnull))


def test_the_svg_is_never_written_through_a_link_nor_into_a_fifo(hv, mgsave, tmp_path):
    _cycle(hv, mgsave)
    victim = tmp_path / "victim"
    victim.write_text("root's file\n")
    link = tmp_path / "timeline.svg"
    link.symlink_to(victim)
    code, _out, err = mgsave("report", "--svg", str(link))
    assert code == ExitCode.BAD_INPUT and "symbolic link" in err
    assert victim.read_text() == "root's file\n" and link.is_symlink()
    fifo = tmp_path / "fifo.svg"
    os.mkfifo(fifo)
    box = {}
    thread = threading.Thread(target=lambda: box.setdefault("run", mgsave("report", "--svg", str(fifo))), daemon=True)
    thread.start()
    thread.join(60)
    if thread.is_alive():  # blocked opening the FIFO: a reader lets it go, so the test ends
        os.close(os.open(fifo, os.O_RDONLY | os.O_NONBLOCK))
        thread.join(60)
        pytest.fail("report --svg hung on a FIFO")
    code, _out, err = box["run"]
    assert code == ExitCode.BAD_INPUT and "FIFO" in err
    picture = tmp_path / "picture.svg"
    picture.write_text("an older picture")
    assert mgsave("report", "--svg", str(picture))[0] == ExitCode.OK
    assert picture.read_text().startswith("<svg") or picture.read_text().startswith("<?xml")
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".picture.svg")], "no temporary file left"


ORDERED = """\
version: 1
guests:
  - match: {name: dns}
    order: 0
    ready: 0.3s
  - match: {name: db}
    order: 10
    after: [dns]
  - match: {name: scratch}
    autostart: never
"""
LONG_NAME = "build-runner-with-a-really-long-descriptive-name"


@pytest.fixture
def ordered(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("NO_COLOR", "1")
    return policy_runner(tmp_path, capsys, ORDERED, stderr=True, name="ordered.yaml")


def _ordered_cycle(hv, ordered):
    define(hv, "dns", "db", "scratch", LONG_NAME)
    assert ordered("shutdown")[0] == ExitCode.OK
    code, out, err = ordered("boot")
    assert code in (ExitCode.OK, ExitCode.GUEST_DEGRADED), err
    return out


def test_report_draws_the_wait_for_an_earlier_order_group(hv, ordered):
    """db (order 10) is after dns (order 0): at boot it waits for dns's group, readiness
    included. That wait is recorded and drawn, and the legend says what it is."""
    _ordered_cycle(hv, ordered)
    code, out, err = ordered("--json", "report")
    boot = json.loads(out)["passes"][1]
    db = next(g for g in boot["guests"] if g["name"] == "db")
    order = [p for p in db["phases"] if p["kind"] == "order"]
    assert order, db["phases"]
    code, out, err = ordered("report")
    chart = out[out.index("boot pass"):].splitlines()
    row = next(line for line in chart if line.startswith("db "))
    bar = row[row.index(" ") + 1:].strip()
    assert bar.startswith(":") and "R" in bar and bar.index(":") < bar.index("R"), row
    assert ": waiting for an earlier order group" in " ".join(out.split())


def test_report_counts_and_spells_as_the_summary_does(hv, ordered):
    summary = _ordered_cycle(hv, ordered)
    code, out, err = ordered("report")
    assert code == ExitCode.OK, err
    boot_head = " ".join(out[out.index("boot pass"):].split("GUEST")[0].split())
    assert "4 guests (1 with nothing to do, not drawn)" in boot_head, boot_head
    verdict = " ".join(summary[summary.index("Summary of the boot pass"):].split())
    assert "all 4 guests" in verdict or " of 4 guests" in verdict, verdict  # the summary's count
    seconds = boot_head.split(" UTC: ", 1)[1].split(",")[0]  # "0.31 s": as units.duration spells it
    axis = next(line for line in out[out.index("boot pass"):].splitlines() if line.startswith("GUEST"))
    assert f" {seconds} OUTCOME" in axis, (seconds, axis)
    assert re.fullmatch(r"\d+\.\d\d? s", seconds) and float(seconds.split()[0]) >= 0.3, seconds  # never "0.0 s"
    with terminal(80) as lines:  # on a terminal a long name is cut with the one ellipsis
        assert ordered("report")[0] == ExitCode.OK
    assert any(line.startswith("build-runner-wi\u2026") for line in lines), lines
    assert not any("~" in line.split()[0] for line in lines if line.split()), lines
    assert any(line.startswith(LONG_NAME + " ") for line in out.splitlines()), "in a pipe, whole"


def test_the_svg_colours_tell_every_kind_and_outcome_apart(hv, ordered, tmp_path):
    from libmgsave.outcomes import Severity

    _ordered_cycle(hv, ordered)
    picture = tmp_path / "timeline.svg"
    assert ordered("report", "--svg", str(picture))[0] == ExitCode.OK
    root = ET.fromstring(picture.read_bytes())
    texts = {t.text: t.get("fill") for t in root.iter(f"{SVG}text")}
    assert texts["resumed"] == svg.SEVERITY_COLOURS[Severity.OK]
    fills = {**svg.COLOURS, "failed": svg.FAILED}
    rgb = {kind: tuple(int(colour[i:i + 2], 16) for i in (1, 3, 5)) for kind, colour in fills.items()}

    def distance(a, b):
        return sum((x - y) ** 2 for x, y in zip(rgb[a], rgb[b], strict=True)) ** 0.5

    close = [(a, b) for a in rgb for b in rgb if a < b and distance(a, b) < 65]
    assert not close, close
    assert distance("resume", "restore") > 100 and distance("save", "save-to-file") > 100
    left_off = svg.outcome_colour("left-off")
    assert left_off == svg.SEVERITY_COLOURS[Severity.DEGRADED] and left_off != svg.UNKNOWN
