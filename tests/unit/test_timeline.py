"""The timeline of the last passes, from records: its phases, the 80-column chart and the SVG."""

import xml.etree.ElementTree as ET

from libmgsave.timeline import from_record
from libmgsave import texttable
from libmgsave.timeline import svg, text

T0 = 1_800_000_000.0
SVG = "{http://www.w3.org/2000/svg}"


def _entry(name, outcome="saved", steps=(), waits=()):
    return {"connection": "qemu:///system", "name": name, "uuid": f"uuid-{name}", "outcome": outcome,
            "steps": [{"action": a, "ok": ok, "started": T0 + s, "finished": T0 + e, "error": None if ok else "no"}
                      for a, s, e, ok in steps],
            "waits": [{"kind": k, "started": T0 + s, "finished": T0 + e} for k, s, e in waits]}


def _record(*entries, finished=10.0):
    return {"started": T0, "finished": T0 + finished, "interrupted": None,
            "guests": {f"qemu:///system uuid-{e['name']}": e for e in entries}}


def test_phases_come_from_steps_and_waits_in_time_order():
    record = _record(_entry("db", steps=[("save", 2, 6, True)], waits=[("slot", 0.5, 2)]),
                     _entry("web", outcome="shut-down", steps=[("save", 0, 1, False), ("shutdown", 1, 4, True)]))
    timeline = from_record(record, "shutdown")
    rows = {r.name: r for r in timeline.rows}
    assert [(p.kind, p.ok) for p in rows["db"].phases] == [("slot", True), ("save", True)]
    assert [(p.kind, p.ok) for p in rows["web"].phases] == [("save", False), ("shutdown", True)]
    assert [r.name for r in timeline.rows] == ["web", "db"], "rows by their first phase"
    assert timeline.seconds == 10.0


def test_peak_in_slots_counts_overlapping_saves_only():
    record = _record(_entry("a", steps=[("save", 0, 5, True)]), _entry("b", steps=[("save", 1, 3, True)]),
                     _entry("c", steps=[("save", 2, 6, True)]), _entry("d", steps=[("shutdown", 0, 9, True)]))
    assert from_record(record, "shutdown").peak_in_slots == 3  # a, b and c at 2 to 3 s; d is no save
    record = _record(_entry("a", steps=[("save", 0, 1, True)]), _entry("b", steps=[("save", 1, 2, True)]))
    assert from_record(record, "shutdown").peak_in_slots == 1


def test_idle_and_carried_over_guests_are_left_out_and_pending_ones_kept():
    record = _record(_entry("idle", outcome="skipped"),
                     _entry("earlier", steps=[("save", -3600, -3500, True)]),
                     _entry("never-reached", outcome="pending"),
                     _entry("db", steps=[("save", 0, 1, True)]))
    assert [r.name for r in from_record(record, "shutdown").rows] == ["db", "never-reached"]


def test_no_record_no_timeline():
    assert from_record(None, "boot") is None


def test_the_chart_of_twenty_guests_fits_80_columns_and_draws_each_phase_where_it_was():
    entries = [_entry(f"guest-with-a-rather-long-name-{i:02d}", outcome="saved-to-file",
                      steps=[("save-to-file", i * 0.4, i * 0.4 + 2, True)], waits=[("slot", 0, i * 0.4)])
               for i in range(20)]
    record = _record(*entries, finished=10.0)
    chart = text.render_all([from_record(record, "shutdown")], shorten=True)  # as on a terminal
    assert max(len(line) for line in chart.splitlines()) <= 80, chart
    lines = chart.splitlines()
    cut = "guest-with-a-ra" + texttable.ellipsis()  # the one ellipsis, as the tables cut
    rows = [line for line in lines if line.startswith(cut) and line.endswith("saved-to-file")]
    assert len(rows) == 20
    last = rows[-1]  # guest 19: waited 7.6 s of the 10, then saved
    bar = last[text.NAME_WIDTH + 1:text.NAME_WIDTH + 1 + 49]
    assert bar.lstrip("-").startswith("F"), "the slot wait, then the save"
    assert bar.index("F") >= 0.7 * 49, bar


def test_a_failed_step_is_marked():
    record = _record(_entry("web", outcome="powered-off", steps=[("save", 0, 5, False), ("poweroff", 5, 10, True)]))
    (row_line,) = [line for line in text.render(from_record(record, "shutdown")).splitlines() if line.startswith("web")]
    assert "x" in row_line and "P" in row_line and row_line.index("x") < row_line.index("P")


def test_the_svg_is_well_formed_with_a_bar_per_phase_in_its_colour():
    record = _record(_entry("db", steps=[("save", 2, 6, True)], waits=[("slot", 0, 2)]),
                     _entry("web", outcome="failed", steps=[("save", 0, 1, False)]))
    boot = _record(_entry("db", outcome="resumed", steps=[("resume", 0, 1, True)], waits=[("ready", 1, 3)]))
    picture = svg.render([from_record(record, "shutdown"), from_record(boot, "boot")])
    root = ET.fromstring(picture.encode())
    bars = [r for r in root.iter(f"{SVG}rect") if r.find(f"{SVG}title") is not None]
    fills = sorted(r.get("fill") for r in bars)
    assert fills == sorted([svg.COLOURS["slot"], svg.COLOURS["save"], svg.FAILED, svg.COLOURS["resume"],
                            svg.COLOURS["ready"]])
    tips = [r.find(f"{SVG}title").text for r in bars]
    assert "web: save 1.0 s (failed: no)" in tips
    save = next(r for r in bars if r.get("fill") == svg.COLOURS["save"])
    slot = next(r for r in bars if r.get("fill") == svg.COLOURS["slot"])
    assert float(save.get("x")) > float(slot.get("x"))
    assert abs(float(save.get("width")) - 2 * float(slot.get("width"))) < 0.5, "4 s of save, 2 s of waiting"


def test_the_report_shows_the_ups_runtime_at_each_decision_of_the_pass():
    record = _record(_entry("high-1", steps=[("save", 2, 6, True)]), _entry("low-1", outcome="shut-down",
                                                                            steps=[("shutdown", 2, 4, True)]))
    record["battery"] = [
        {"step": "deadline", "at": T0, "runtime_seconds": 900, "seconds_left": 885, "why": "w", "moved": []},
        {"step": "moved", "at": T0 + 1.5, "runtime_seconds": 43, "seconds_left": 28, "why": "w", "moved": []},
        {"step": "replanned", "at": T0 + 1.5, "runtime_seconds": 43, "seconds_left": 28, "why": "w",
         "moved": ["low-1"]}]
    timeline = from_record(record, "shutdown")
    chart = text.render(timeline, shorten=True)
    assert chart.splitlines()[-4:] == [
        "UPS runtime at each decision:",
        "  +0.0 s    deadline   runtime 15 min 00 s, 14 min 45 s left",
        "  +1.5 s    moved      runtime 43 s, 28 s left",
        "  +1.5 s    replanned  runtime 43 s, 28 s left: moved to cheaper steps: low-1"]
    assert [d["step"] for d in timeline.to_dict()["battery"]] == ["deadline", "moved", "replanned"]
    assert "UPS runtime" not in text.render(from_record(_record(_entry("a")), "shutdown"), shorten=True)
