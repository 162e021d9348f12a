"""A guest's fallback chain at shutdown, run against a stand-in guest whose timing is exact."""

from __future__ import annotations

import os
import time


def test_a_guest_that_shuts_down_just_after_its_timeout_is_shut_down_not_vanished(tmp_path, monkeypatch):
    """Its shutdown request times out, and by the time the next step (poweroff) looks, the guest
    has gone off: that is the shutdown it was asked for, arriving late, not someone else's doing.
    (Seen on the rig under load, where it was reported 'vanished'.) A stand-in guest makes the
    timing exact: it is still running when the wait gives up, and off when poweroff looks."""
    from libmgsave import policyfile
    from libmgsave.budget import Budget
    from libmgsave.execute import ShutdownPass, shutdown
    from libmgsave.hypervisor import Connections
    from libmgsave.inventory import GuestInfo, GuestState
    from libmgsave.plan import plan_shutdown

    monkeypatch.setattr(shutdown, "SHUTDOWN_POLL", 0.02)
    policy_file = tmp_path / "policy.yaml"
    policy_file.write_text("version: 1\ndefaults:\n  on_shutdown: [shutdown, poweroff]\n  shutdown_timeout: 0.3\n")
    os.chmod(policy_file, 0o644)
    policy = policyfile.load_policy(str(policy_file))
    info = GuestInfo("qemu:///system", "slow", "6b3c0f5e-0000-4000-8000-000000000001", GuestState.RUNNING,
                     memory_kib=262144)

    class SlowGuest:
        """Keeps running while mgsave waits for it to shut down, and is off once its shutdown
        request has timed out: every step looks its guest up afresh, so it goes off when the
        next step (poweroff) looks it up."""

        name, uuid = info.name, info.uuid
        asked = off = powered_off = False

        def request_shutdown(self):
            self.asked = True

        def is_active(self):
            return not self.off

        def has_saved_state(self):
            return False

        def power_off(self):
            self.powered_off = True

    guest = SlowGuest()

    class OneGuest(Connections):
        def __init__(self):
            super().__init__({}, give_up_at=time.monotonic() + 60)
            self.lookups = 0

        def guest(self, uri, uuid):
            self.lookups += 1
            if self.lookups > 1 and guest.asked:
                guest.off = True  # the shutdown it was asked for, arriving late
            return guest

    plan = plan_shutdown([info], policy, state_dir=tmp_path)
    [result] = ShutdownPass(plan, OneGuest(), record=None, budget=Budget.starting_now(60)).run()
    assert [(s.action, s.ok) for s in result.steps] == [("shutdown", False)]
    assert not guest.powered_off
    assert result.outcome == "shut-down" and result.ok, result.messages
    assert any("shut down after its shutdown request had timed out" in m for m in result.messages)
