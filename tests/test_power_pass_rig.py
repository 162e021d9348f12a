"""The UPS's runtime falls while the shutdown pass runs: the pass's deadline moves down and a step
under way gives up by it. Real QEMU guests (the rig) and a real NUT (tests/nutrig.py: upsd and
dummy-ups on loopback, its values driven by rewriting the .dev file). The slow step is real: a
guest that ignores the ACPI shutdown request, whose chain is [shutdown, poweroff] with a
10-minute shutdown_timeout. The test waits on the pass's log lines, never a fixed sleep."""

from __future__ import annotations

import time

import pytest

from libmgsave.errors import ExitCode
from tests import nutrig
from tests.rig import state_reason
from tests.rig.mgsave import Mgsave

pytestmark = pytest.mark.rig

TINY = dict(memory_mib=256, fill_mib=32)
WAIT = 120.0  # seconds: generous, on a loaded machine


@pytest.fixture
def nut(rig, tmp_path):
    nutrig.require()
    workdir = tmp_path / "nut"
    workdir.mkdir(mode=0o700)
    with nutrig.NutRig(workdir, {"ups1": {"ups.status": "OB DISCHRG", "battery.runtime": "900"}}) as rig_nut:
        yield rig_nut


def wait_for_line(running, text: str) -> None:
    deadline = time.monotonic() + WAIT
    while text not in running.stderr():
        if running.proc.poll() is not None or time.monotonic() > deadline:
            pytest.fail(f"the pass never said {text!r}:\n{running.stderr()[-5000:]}")
        time.sleep(0.1)


def test_a_runtime_falling_mid_pass_moves_the_deadline_down(rig, nut, make_guests, rig_conn, tmp_path):
    [deaf] = make_guests(1, prefix="deaf", ignore_acpi=True, **TINY)
    mgsave = Mgsave(tmp_path, json=True, policy=f"""\
        version: 1
        connections: ['qemu:///system']
        limits:
          shutdown_deadline: 15min
        defaults:
          on_shutdown: [shutdown, poweroff]
          shutdown_timeout: 10min
        power:
          ups: ups1@127.0.0.1:{nut.port}
          margin: 10s
          poll: 1s
        """)
    running = mgsave.start("shutdown")
    # 900 s of runtime less the 10 s margin and 5 s of final flush
    wait_for_line(running, "shutdown deadline 14 min 45 s: the UPS ups1@127.0.0.1")
    nut.set("ups1", {"battery.runtime": "40"})  # 40 - 10 - 5: 25 s left, 15 s of them for steps
    run = running.wait(WAIT)
    assert run.rc == ExitCode.GUEST_DEGRADED, run
    [move] = run.data["battery"]["moves"]
    assert move["runtime_seconds"] == 40 and move["seconds_left"] == 25
    assert "the UPS's runtime fell to 40 s: the shutdown deadline moved down to 25 s from then" in run.stderr
    assert any("the shutdown deadline moved down" in w for w in run.data["warnings"])
    entry = run.guest(deaf)
    assert entry["outcome"] == "powered-off"
    [shutdown, poweroff] = entry["steps"]
    assert (shutdown["action"], shutdown["ok"], poweroff["action"], poweroff["ok"]) == (
        "shutdown", False, "poweroff", True)
    assert shutdown["duration_seconds"] < 60, entry  # cut short by the moved deadline, not its 10 min
    assert state_reason(rig_conn, deaf) == ("shutoff", "destroyed")


BIG = dict(memory_mib=2048, fill_mib=32)  # planned at the default 200 MB/s: about 10.7 s a save


def test_a_runtime_dropping_sharply_mid_pass_moves_the_lowest_priority_off_its_save(rig, nut, make_guests,
                                                                                      rig_conn, tmp_path):
    """'deaf' (first, order 10) ignores its shutdown request for 10 s: the window in which the
    runtime drops. Re-planned against 18 s for the steps, the save of 'high' (priority 9, about
    10.7 s planned) still fits, the save of 'low' (priority 0) after it does not: 'low' is shut
    down (or powered off) at once, 'high' is saved."""
    [deaf] = make_guests(1, prefix="deaf", ignore_acpi=True, **TINY)
    [high] = make_guests(1, prefix="high", **BIG)
    [low] = make_guests(1, prefix="low", **BIG)
    mgsave = Mgsave(tmp_path, json=True, policy=f"""\
        version: 1
        connections: ['qemu:///system']
        limits:
          shutdown_deadline: 15min
        guests:
          - match: {{name: {deaf}}}
            order: 10
            on_shutdown: [shutdown, poweroff]
            shutdown_timeout: 10s
          - match: {{name: {high}}}
            priority: 9
          - match: {{name: {low}}}
            priority: 0
        power:
          ups: ups1@127.0.0.1:{nut.port}
          margin: 10s
          poll: 1s
        """)
    running = mgsave.start("shutdown")
    wait_for_line(running, "shutdown deadline 14 min 45 s: the UPS ups1@127.0.0.1")
    nut.set("ups1", {"battery.runtime": "43"})  # 43 - 10 - 5: 28 s left, 18 s of them for steps
    run = running.wait(WAIT)
    assert run.rc == ExitCode.GUEST_DEGRADED, run
    [replanned] = run.data["battery"]["replans"]
    assert replanned["runtime_seconds"] == 43, replanned
    assert [m["name"] for m in replanned["moved"]] == [low], replanned
    assert "re-planned the guests not yet begun (the UPS's runtime fell to 43 s" in run.stderr
    assert run.guest(high)["outcome"] == "saved", run.guest(high)
    assert state_reason(rig_conn, high) == ("shutoff", "saved")
    moved = run.guest(low)
    assert moved["outcome"] in ("shut-down", "powered-off"), moved
    assert "save" not in [s["action"] for s in moved["steps"]], moved
    assert any("re-planned" in m and "priority 0" in m for m in moved["messages"]), moved
    assert state_reason(rig_conn, low)[0] == "shutoff"
    # the record keeps the runtime at each decision, and mgsave report shows it
    assert [(d["step"], d["runtime_seconds"], d["moved"]) for d in mgsave.record("shutdown")["battery"]] == [
        ("deadline", 900, []), ("moved", 43, []), ("replanned", 43, [low])]
    report = mgsave("report")
    assert [d["step"] for d in report.data["passes"][0]["battery"]] == ["deadline", "moved", "replanned"]
    shown = Mgsave(tmp_path)("report").stdout
    assert "UPS runtime at each decision:" in shown and f"runtime 43 s, 28 s left: moved to cheaper steps: {low}" in shown
