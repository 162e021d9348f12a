"""End to end on the real rig: the ``mgsave`` command, run as a subprocess, against a real libvirtd
with real (TCG) guests whose heartbeat proves their memory survived.

Every test runs ``python -m libmgsave`` with ``--json``, a policy file and a state directory in
``tmp_path``; the rig fixture has put this process (and so the subprocess) in the rig's mount
namespace, where ``qemu:///system`` is the rig's private libvirtd. Guests are small (256 MiB with
64 MiB filled) except where the size matters (progress of a save: 768 MiB with 600 MiB filled).
"""

from __future__ import annotations

import os
import re
import subprocess
import time

import pytest

from libmgsave.errors import ExitCode
from libmgsave.jsonout import epoch
from tests.rig.mgsave import Mgsave, image, running
from tests.rig import (SAVE_DIR, boots, last_tick, start_and_wait_ticking, state_reason, ticks,
                       wait_for_tick_after)

pytestmark = pytest.mark.rig

URI = "qemu:///system"
SMALL = dict(memory_mib=256, fill_mib=64)


# --- helpers ------------------------------------------------------------------------------------


@pytest.fixture
def mgsave(rig, tmp_path) -> Mgsave:
    return Mgsave(tmp_path, json=True)


def save_dir_files() -> list[str]:
    return sorted(os.listdir(SAVE_DIR))


def exists(conn, name: str) -> bool:
    return name in {d.name() for d in conn.listAllDomains()}


def assert_heartbeat_continues(name: str, before: int) -> int:
    """The guest ticks on from ``before``: its memory came back, it did not boot again."""
    after = wait_for_tick_after(name, before, timeout=60)
    seq = ticks(name)
    assert after > before
    assert all(b > a for a, b in zip(seq, seq[1:])), f"{name}: the heartbeat restarted: {seq}"
    assert boots(name) == 1, f"{name}: /init ran again (a cold boot, not a resume)"
    return after


def step(result: dict, action: str) -> dict:
    found = [s for s in result["steps"] if s["action"] == action]
    assert len(found) == 1, f"{result['name']}: no single {action} step in {result['steps']}"
    return found[0]


def max_overlap(intervals: list[tuple[float, float]]) -> int:
    """The most intervals open at one instant (touching ends do not overlap)."""
    events = sorted([(s, 1) for s, _ in intervals] + [(f, -1) for _, f in intervals],
                    key=lambda e: (e[0], e[1]))  # at a tie an end comes before a start
    now = most = 0
    for _, delta in events:
        now += delta
        most = max(most, now)
    return most


def snapshot(conn, names: list[str]) -> dict:
    """State, reason and saved image (size, mtime) of each guest that exists."""
    out = {}
    for name in names:
        if not exists(conn, name):
            out[name] = None
            continue
        st = image(name).stat() if image(name).exists() else None
        out[name] = (state_reason(conn, name), st and (st.st_size, st.st_mtime_ns))
    return out


# --- the full cycle ----------------------------------------------------------------------------


FULL_CYCLE_POLICY = """\
    version: 1
    connections: ['qemu:///system']
    limits:
      max_parallel_saves: 2
      max_parallel_starts: 2
    defaults:
      autostart: if-running
      on_shutdown: [save, shutdown, poweroff]
    guests:
      - name: name server, always up first
        match: {name: dns-1}
        autostart: always
        order: 0
      - name: application, after the name server
        match: {name: app-1}
        autostart: if-running
        order: 10
        after: [dns-1]
      - name: transient worker, after the application
        match: {name: tmp-1}
        order: 10
        after: [app-1]
      - name: batch, never started at boot
        match: {name: batch-1}
        autostart: never
      - name: idle, only if it was running
        match: {name: idle-1}
        autostart: if-running
"""


def test_full_cycle_shutdown_then_boot(mgsave, make_guests, rig_conn):
    """shutdown saves every running guest; boot resumes exactly those the policy says, in order,
    each one's heartbeat going on; never stays off with its image; a second boot changes nothing.
    The dry runs of both passes change nothing."""
    t_test = time.monotonic()
    [dns] = make_guests(1, prefix="dns", start=False, **SMALL)
    [app] = make_guests(1, prefix="app", start=False, **SMALL)
    [batch] = make_guests(1, prefix="batch", start=False, **SMALL)
    [idle] = make_guests(1, prefix="idle", start=False, **SMALL)          # never started
    [tmp] = make_guests(1, prefix="tmp", start=False, transient=True, **SMALL)  # createXML: running
    live = [dns, app, batch, tmp]
    boot_s = start_and_wait_ticking(rig_conn, live)
    uuids = {n: rig_conn.lookupByName(n).UUIDString() for n in live + [idle]}
    assert not rig_conn.lookupByName(tmp).isPersistent()
    mgsave.write_policy(FULL_CYCLE_POLICY)
    t_ready = time.monotonic()

    # --- shutdown --dry-run changes nothing ---
    before = snapshot(rig_conn, live + [idle])
    ticks_before = {n: last_tick(n) for n in live}
    dry = mgsave("shutdown", "--dry-run")
    assert dry.data["dry_run"] is True
    assert dry.outcomes() == {dns: "planned", app: "planned", batch: "planned", tmp: "planned",
                              idle: "skipped"}
    assert snapshot(rig_conn, live + [idle]) == before
    assert running(rig_conn) == sorted(live)
    assert save_dir_files() == []
    assert mgsave.record("shutdown") is None and mgsave.record("boot") is None
    assert not (mgsave.state_dir / "images").exists()
    for n in live:
        assert_heartbeat_continues(n, ticks_before[n])

    # --- shutdown ---
    down = mgsave("shutdown")
    assert down.data["ok"] is True and down.data["dry_run"] is False
    assert down.outcomes() == {dns: "saved", app: "saved", batch: "saved", tmp: "saved-to-file",
                               idle: "skipped"}
    assert running(rig_conn) == []
    for n in (dns, app, batch):
        assert state_reason(rig_conn, n) == ("shutoff", "saved")
        assert rig_conn.lookupByName(n).hasManagedSaveImage(0)
        assert image(n).stat().st_size > 64 * 2**20, "the filled memory must be in the image"
        assert down.guest(n)["written_bytes"] == image(n).stat().st_size
    tmp_image = mgsave.state_dir / "images" / f"{uuids[tmp]}.save"
    assert not exists(rig_conn, tmp), "a saved transient guest is gone from libvirt"
    assert tmp_image.stat().st_size > 64 * 2**20
    assert down.guest(tmp)["written_bytes"] == tmp_image.stat().st_size
    assert state_reason(rig_conn, idle)[0] == "shutoff" and not image(idle).exists()
    # Each image, managed or transient, was flushed to disk before the guest counted as saved.
    flushed = re.findall(r"^.*: (\S+): image flushed to disk in ([0-9.]+) s$", down.stderr, re.MULTILINE)
    assert sorted(name for name, _s in flushed) == sorted(live), down.stderr
    assert "not yet known to be on disk" not in down.stderr
    # The record lists exactly the guests that were running, each saved.
    record = mgsave.record("shutdown")
    assert record["kind"] == "shutdown" and record["finished"] and record["ok"] is True
    by_name = {e["name"]: e for e in record["guests"].values()}
    assert {n: e["outcome"] for n, e in by_name.items()} == {
        dns: "saved", app: "saved", batch: "saved", tmp: "saved-to-file"}
    assert all(by_name[n]["uuid"] == uuids[n] for n in by_name)
    assert by_name[tmp]["image"] == str(tmp_image) and by_name[tmp]["persistent"] is False
    # Order at shutdown: order 10 (app, tmp) before order 0 (dns, batch); tmp, which is after
    # app, goes down before it.
    saves = {n: step(down.guest(n), "save-to-file" if n == tmp else "save") for n in live}
    assert saves[tmp]["finished"] <= saves[app]["started"]
    assert max(saves[n]["finished"] for n in (app, tmp)) <= min(saves[n]["started"] for n in (dns, batch))
    last_before = {n: last_tick(n) for n in live}

    # --- boot --dry-run changes nothing ---
    saved_state = snapshot(rig_conn, [dns, app, batch, idle])
    shutdown_record = (mgsave.state_dir / "last-shutdown.json").read_bytes()
    dry = mgsave("boot", "--dry-run")
    assert dry.data["dry_run"] is True
    assert dry.outcomes() == {dns: "planned", app: "planned", tmp: "planned", batch: "skipped",
                              idle: "skipped"}
    assert [g["action"] for g in dry.data["guests"] if g["outcome"] == "planned"] == ["resume", "resume", "restore"]
    assert running(rig_conn) == [] and not exists(rig_conn, tmp)
    assert snapshot(rig_conn, [dns, app, batch, idle]) == saved_state
    assert tmp_image.exists()
    assert mgsave.record("boot") is None
    assert (mgsave.state_dir / "last-shutdown.json").read_bytes() == shutdown_record

    # --- boot ---
    up = mgsave("boot")
    assert up.data["ok"] is True
    assert up.outcomes() == {dns: "resumed", app: "resumed", tmp: "restored", batch: "skipped",
                             idle: "skipped"}
    assert running(rig_conn) == sorted([dns, app, tmp])
    for n in (dns, app, tmp):
        assert state_reason(rig_conn, n) == ("running", "restored")
    assert not rig_conn.lookupByName(tmp).isPersistent()
    assert not tmp_image.exists(), "a restored transient guest's file is used once only"
    # In order: dns (order 0), then app (order 10, after dns), then tmp (after app).
    g = {n: up.guest(n) for n in (dns, app, tmp)}
    assert g[dns]["finished"] <= g[app]["started"] <= g[app]["finished"] <= g[tmp]["started"]
    assert step(g[dns], "resume")["finished"] <= step(g[app], "resume")["started"]
    assert step(g[app], "resume")["finished"] <= step(g[tmp], "restore")["started"]
    # never: off, its saved state kept; idle (if-running, was not running): off, nothing saved.
    assert state_reason(rig_conn, batch) == ("shutoff", "saved")
    assert rig_conn.lookupByName(batch).hasManagedSaveImage(0) and image(batch).exists()
    assert state_reason(rig_conn, idle)[0] == "shutoff" and not image(idle).exists()
    assert boots(idle) == 0
    assert save_dir_files() == [f"{batch}.save"]
    boot_record = mgsave.record("boot")
    assert {e["name"]: e["outcome"] for e in boot_record["guests"].values()} == up.outcomes()
    after = {n: assert_heartbeat_continues(n, last_before[n]) for n in (dns, app, tmp)}
    assert last_tick(batch) == last_before[batch]

    # --- a second boot changes nothing ---
    again = mgsave("boot")
    assert set(again.outcomes().values()) == {"skipped"}, again.outcomes()
    assert running(rig_conn) == sorted([dns, app, tmp])
    for n in (dns, app, tmp):
        assert state_reason(rig_conn, n) == ("running", "restored")
        assert_heartbeat_continues(n, after[n])
    assert state_reason(rig_conn, batch) == ("shutoff", "saved") and image(batch).exists()
    assert state_reason(rig_conn, idle)[0] == "shutoff" and boots(idle) == 0

    save_times = ", ".join(f"{n} {s['duration_seconds']:.1f} s" for n, s in saves.items())
    resume_times = ", ".join(f"{n} {r['duration_seconds']:.1f} s" for n, r in g.items())
    print(f"boot of 4 guests {max(boot_s.values()):.1f} s; shutdown {down.seconds:.1f} s (saves: {save_times}); "
          f"boot {up.seconds:.1f} s ({resume_times}); mgsave part {time.monotonic() - t_ready:.1f} s, "
          f"test {time.monotonic() - t_test:.1f} s")


# --- the fallback chain ------------------------------------------------------------------------


FALLBACK_POLICY = """\
    version: 1
    defaults:
      on_shutdown: [save, shutdown, poweroff]
      shutdown_timeout: 5
"""


def mount_save_dir_without_inodes():
    """A tmpfs with plenty of space but no free inode over the managed-save directory: mgsave's
    free-space check passes, and the save itself fails with ENOSPC, as on a full disk."""
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2g,nr_inodes=1,mode=0711", "mgsave-e2e-noinodes",
                    SAVE_DIR], check=True, capture_output=True, text=True)


def unmount_save_dir() -> None:
    subprocess.run(["umount", SAVE_DIR], check=True, capture_output=True, text=True)


def test_fallback_chain_save_fails_then_shutdown_then_poweroff(rig, mgsave, make_guests, rig_conn):
    """A guest whose save fails is shut down; one that ignores the power button as well is
    powered off after shutdown_timeout. Nothing is left running and no partial image remains."""
    [polite] = make_guests(1, prefix="polite", start=False, **SMALL)
    [deaf] = make_guests(1, prefix="deaf", start=False, ignore_acpi=True, **SMALL)
    start_and_wait_ticking(rig_conn, [polite, deaf])
    mgsave.write_policy(FALLBACK_POLICY)

    # Not enough room (a 64 MiB save directory for 256 MiB guests): the plan skips the save up front.
    with rig.save_dir_limited(64):
        plan = mgsave("plan", "shutdown")
    [shutdown_plan] = plan.data["plans"]
    for g in shutdown_plan["guests"]:
        assert g["actions"] == ["shutdown", "poweroff"], g
        assert any(note.startswith("save skipped") for note in g["notes"]), g

    # Room enough on paper, but the save hits ENOSPC: the chain goes on, for real.
    mount_save_dir_without_inodes()
    try:
        down = mgsave("shutdown", expect_rc=ExitCode.GUEST_DEGRADED)  # neither got its first choice
        assert save_dir_files() == [], "no partial image may be left"
    finally:
        unmount_save_dir()
    assert save_dir_files() == []
    assert running(rig_conn) == [], "nothing may be left running"
    assert down.data["ok"] is False and down.data["severity"] == "degraded"
    assert down.outcomes() == {polite: "shut-down", deaf: "powered-off"}
    for name in (polite, deaf):
        result = down.guest(name)
        actions = [s["action"] for s in result["steps"]]
        if actions[0] == "save":        # tried and failed (or skipped up front: no save step)
            assert result["steps"][0]["ok"] is False
            assert str(image(name)) in result["steps"][0]["error"], result["steps"][0]  # ENOSPC creating it
            actions = actions[1:]
        else:
            assert any(m.startswith("save skipped") for m in result["messages"]), result
        assert not rig_conn.lookupByName(name).hasManagedSaveImage(0)
    assert [s["action"] for s in down.guest(polite)["steps"]][-1:] == ["shutdown"]
    assert step(down.guest(polite), "shutdown")["ok"] is True
    shutdown = step(down.guest(deaf), "shutdown")
    assert shutdown["ok"] is False and shutdown["duration_seconds"] >= 4.5, shutdown
    assert "still running" in shutdown["error"]
    assert step(down.guest(deaf), "poweroff")["ok"] is True
    assert state_reason(rig_conn, polite) == ("shutoff", "shutdown")
    assert state_reason(rig_conn, deaf) == ("shutoff", "destroyed")
    record = mgsave.record("shutdown")
    assert {e["name"]: e["outcome"] for e in record["guests"].values()} == down.outcomes()
    print(f"fallback pass {down.seconds:.1f} s: " + "; ".join(
        f"{g['name']}: " + " -> ".join(f"{s['action']} {'ok' if s['ok'] else 'failed'} {s['duration_seconds']:.1f} s"
                                       for s in g["steps"]) for g in down.data["guests"]))


# --- parallel saves, and progress while a save runs --------------------------------------------


# Big enough that each save outlasts the progress watcher's first look (1-2 s into a save) on
# QEMU 10 too, which saves about twice as fast as Debian 12's QEMU 7.2 (1.3-1.9 s for 300 MiB here).
PARALLEL_MEMORY_MIB, PARALLEL_FILL_MIB = 768, 600
PARALLEL_POLICY = """\
    version: 1
    limits:
      max_parallel_saves: 2
      max_parallel_starts: 2
"""


def test_parallel_saves_overlap_and_report_progress(mgsave, make_guests, rig_conn):
    """With max_parallel_saves: 2, four saves run two at a time (never three); while they run,
    mgsave logs their progress ("saving NN%"). Then boot resumes them, two at a time."""
    names = make_guests(4, prefix="par", memory_mib=PARALLEL_MEMORY_MIB, fill_mib=PARALLEL_FILL_MIB)
    mgsave.write_policy(PARALLEL_POLICY)

    down = mgsave("shutdown", "--debug")  # the progress lines are debug lines: never in the journal
    assert down.outcomes() == dict.fromkeys(names, "saved")
    assert running(rig_conn) == []
    saves = [step(down.guest(n), "save") for n in names]
    assert all(s["ok"] for s in saves)
    overlap = max_overlap([(s["started"], s["finished"]) for s in saves])
    t0 = epoch(down.data["started"])  # --json times are ISO 8601 strings
    timeline = "; ".join(f"{n} {epoch(s['started']) - t0:.2f}-{epoch(s['finished']) - t0:.2f} s"
                         for n, s in zip(names, saves))
    assert overlap == 2, f"saves overlapped {overlap} at most (want exactly 2): {timeline}"
    for n in names:
        assert image(n).stat().st_size > PARALLEL_FILL_MIB * 2**20

    # Progress: the watcher's first line for a save comes 1-2 s after it began, then one every 3 s
    # (at debug level; without --debug the log has one line per event).
    longest = max(s["duration_seconds"] for s in saves)
    progress = [line for line in down.stderr.splitlines()
                if any(f"{n}: saving " in line and "%" in line for n in names)]
    intermediate = [line for line in progress if "saving 100%" not in line and "saving ?" not in line]
    assert intermediate, (f"no intermediate 'saving NN%' line in stderr (the longest save took {longest:.1f} s; "
                          f"saves: {timeline}):\n{down.stderr}")

    last_before = {n: last_tick(n) for n in names}
    up = mgsave("boot")
    assert up.outcomes() == dict.fromkeys(names, "resumed")
    starts = [step(up.guest(n), "resume") for n in names]
    assert max_overlap([(s["started"], s["finished"]) for s in starts]) <= 2
    for n in names:
        assert state_reason(rig_conn, n) == ("running", "restored")
        assert_heartbeat_continues(n, last_before[n])
    print(f"4 x {PARALLEL_MEMORY_MIB} MiB ({PARALLEL_FILL_MIB} MiB filled): shutdown {down.seconds:.1f} s, saves {timeline}; "
          f"progress lines: {len(progress)}; boot {up.seconds:.1f} s, resumes "
          + ", ".join(f"{s['duration_seconds']:.1f} s" for s in starts))
