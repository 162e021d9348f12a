"""QEMU's guest agent, for real: ``ready: agent`` and ``sync_time`` on the rig.

The rig's guest runs Debian's ``qemu-ga`` on a virtio-serial channel when defined with
``agent=True`` (see tests/rig/image.py); guests without it have no agent at all, so a readiness
check on them can only time out.
"""

from __future__ import annotations

import json
import threading
import time

import libvirt
import libvirt_qemu
import pytest

from libmgsave.jsonout import epoch
from tests.rig import define_guests, last_tick, serial_text, start_and_wait_ticking, wait_for_tick_after
from tests.test_e2e_rig import mgsave  # noqa: F401  (the fixture)

pytestmark = pytest.mark.rig
libvirt.registerErrorHandler(lambda _ctx, _error: None, None)  # the polls below fail by design

SMALL = dict(memory_mib=256, fill_mib=16)


def agent_time_offset(dom) -> float:
    """The guest's clock minus the host's, in seconds, read through the agent."""
    reply = libvirt_qemu.qemuAgentCommand(dom, '{"execute":"guest-get-time"}', 10, 0)
    return json.loads(reply)["return"] / 1e9 - time.time()


def wait_agent(dom, timeout: float = 300) -> float:
    """Wall-clock time at which the agent first answered a ping. Each ping may take 5 s, as
    mgsave's own do: under TCG on a loaded machine the agent can take over a second to answer."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            libvirt_qemu.qemuAgentCommand(dom, '{"execute":"guest-ping"}', 5, 0)
            return time.time()
        except libvirt.libvirtError:
            time.sleep(0.2)
    raise AssertionError(f"{dom.name()}: the guest agent did not answer within {timeout} s")


AGENT_UP = "rig: agent up"  # the guest's init prints it as it launches qemu-ga


def watch_agent_launch(name: str, seen: dict, timeout: float = 300) -> None:
    """Note in ``seen[name]`` the wall-clock time the guest's console first says it launched its
    agent: no ping can be answered before then. The console is the guest's own witness; a ping
    of ours would queue behind mgsave's on the agent and see the answer late."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if AGENT_UP in serial_text(name):
            seen[name] = time.time()
            return
        time.sleep(0.05)


def test_a_dependent_starts_only_once_the_agent_of_its_after_guest_answers(rig_conn, mgsave):
    """Cold boots (autostart always, no saved state): 'db' has an agent that comes up some
    seconds into its boot, 'app' is after it; 'slow' has no agent and a 6 s readiness timeout,
    'web' is after it and starts once the timeout is over."""
    define_guests(rig_conn, 1, prefix="db", agent=True, **SMALL)
    define_guests(rig_conn, 1, prefix="app", **SMALL)
    define_guests(rig_conn, 1, prefix="slow", **SMALL)
    define_guests(rig_conn, 1, prefix="web", **SMALL)
    mgsave.write_policy("""
        version: 1
        defaults: {autostart: always}
        guests:
          - match: {name: db-1}
            ready: {agent: 120}
          - match: {name: app-1}
            after: [db-1]
          - match: {name: slow-1}
            ready: {agent: 6}
          - match: {name: web-1}
            after: [slow-1]
        """)
    assert AGENT_UP not in serial_text("db-1")
    launched: dict[str, float] = {}
    watcher = threading.Thread(target=watch_agent_launch, args=("db-1", launched), daemon=True)
    watcher.start()
    run = mgsave("boot")
    watcher.join(300)
    started = {g["name"]: epoch(g["steps"][0]["started"]) for g in run.data["guests"]}
    assert run.outcomes() == {"db-1": "started", "app-1": "started", "slow-1": "started", "web-1": "started"}
    assert "db-1" in launched, f"db-1's console never said {AGENT_UP!r}:\n{serial_text('db-1')[-2000:]}"
    wait_agent(rig_conn.lookupByName("db-1"))  # and the agent does answer
    # app waited for db's agent (which needs a few seconds of boot to come up under TCG): it
    # started no earlier than the agent was launched (less the console's polling and flushing).
    assert started["app-1"] >= launched["db-1"] - 1.0, (started, launched)
    assert started["app-1"] - started["db-1"] >= 3.0
    # web waited for slow's readiness check to time out, and no longer than that.
    waited = started["web-1"] - started["slow-1"]
    assert 6.0 <= waited < 6.0 + 15.0, waited
    slow = run.guest("slow-1")
    assert any("did not answer within 6 s" in m for m in slow["messages"]), slow["messages"]
    assert not any("did not answer" in m for m in run.guest("db-1")["messages"])


def test_sync_time_sets_the_clock_of_a_guest_resumed_after_a_long_save(rig_conn, mgsave):
    """Two agent guests saved together and resumed 20 s later: with sync_time the clock is the
    host's again; without, it is behind by about the time it spent saved."""
    synced = define_guests(rig_conn, 1, prefix="synced", agent=True, **SMALL)[0]
    left = define_guests(rig_conn, 1, prefix="left", agent=True, **SMALL)[0]
    start_and_wait_ticking(rig_conn, [synced, left])
    for name in (synced, left):
        wait_agent(rig_conn.lookupByName(name))
        assert abs(agent_time_offset(rig_conn.lookupByName(name))) < 2.0
    mgsave.write_policy(f"""
        version: 1
        guests:
          - match: {{name: {synced}}}
            sync_time: true
        """)
    before = {name: last_tick(name) for name in (synced, left)}
    assert mgsave("shutdown").outcomes() == {synced: "saved", left: "saved"}
    time.sleep(20)
    run = mgsave("boot")
    assert run.outcomes() == {synced: "resumed", left: "resumed"}
    assert not any("clock not synced" in m for m in run.guest(synced)["messages"]), run.guest(synced)
    for name in (synced, left):
        wait_for_tick_after(name, before[name])
    synced_offset = agent_time_offset(rig_conn.lookupByName(synced))
    left_offset = agent_time_offset(rig_conn.lookupByName(left))
    print(f"clock offsets after a 20 s save: synced {synced_offset:+.2f} s, not synced {left_offset:+.2f} s")
    assert abs(synced_offset) < 2.0
    assert left_offset < -15.0  # the control: the clock really was behind
