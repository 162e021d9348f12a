"""A real systemd: restarting or stopping mgsave.service on a host that stays up saves nothing.

One boot of the container host (tests.rig.container, as tests/test_systemd_boot.py), mgsave
installed with ``make install``, two small guests running:

1. ``systemctl restart mgsave``: every guest still runs, none has a saved image, the unit is
   active, and the journal says at warning level that nothing was saved and how to save now.
2. ``systemctl stop mgsave``: the same, and the unit is started again (armed) once the stop is
   over, by the transient ``mgsave-rearm.service``.
3. ``systemctl poweroff``: the shutdown pass saves every guest, as always.
4. The next boot resumes them; ``systemctl isolate rescue.target`` stops
   ``virt-guest-shutdown.target`` and libvirtd (as libvirt-guests would act): the pass runs and
   saves them.
"""

from __future__ import annotations

import time

import pytest

from tests.rig.container import prepared_host, unavailable
from tests.rig.guests import domain_xml
from tests.test_systemd_boot import (POLICY, RUNNING_RESTORED, SRC, _copy_tree, _unavailable_reason, guest_states,
                                     unit_state, wait_boot_pass, wait_states)

pytestmark = [pytest.mark.systemd, pytest.mark.rig]

GUESTS = ("us-1", "us-2")
RUNNING = 1


@pytest.fixture
def container():
    reason = _unavailable_reason()
    if reason:
        unavailable(reason)
    with prepared_host("mgsave-unitstop-") as c:
        yield c


def wait_active(c, unit: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while unit_state(c, unit)["ActiveState"] != "active":
        if time.monotonic() > deadline:
            raise AssertionError(f"{unit} not active again within {timeout} s: {unit_state(c, unit)}")
        time.sleep(0.2)


def wait_message(c, since: float, wanted, priority: str = "warning", timeout: float = 60) -> None:
    """Until mgsave.service's journal since ``since`` has a message ``wanted(message)`` accepts (at
    ``priority`` or above); journald may file it a moment after the command returned."""
    deadline = time.monotonic() + timeout
    while True:
        entries = c.journal("_SYSTEMD_UNIT=mgsave.service", "-p", priority, since=since)
        found = [" ".join(str(e.get("MESSAGE", "")).split()) for e in entries]
        if any(wanted(m) for m in found):
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"not in mgsave.service's journal within {timeout} s: {found}")
        time.sleep(0.5)


def assert_nothing_saved(c) -> None:
    assert {n: s[0] for n, s in guest_states(c, GUESTS).items()} == {n: RUNNING for n in GUESTS}
    for name in GUESTS:
        assert not (c.dir("lib") / "qemu/save" / f"{name}.save").exists(), f"{name} was saved"


def test_restart_and_stop_of_mgsave_save_nothing_a_poweroff_and_rescue_mode_save_every_guest(container):
    c = container
    _copy_tree(c.root / SRC.lstrip("/"))
    c.write("/etc/mgsave/policy.yaml", POLICY)
    c.boot()
    c.run("make", "-C", SRC, "install")
    conn = c.connect()
    try:
        for name in GUESTS:
            conn.defineXML(domain_xml(name, memory_mib=160, fill_mib=16)).create()
    finally:
        conn.close()
    c.wait_ticking(GUESTS)

    # An admin's reflex after editing the policy.
    since = time.time()
    c.run("systemctl", "restart", "mgsave.service")
    assert unit_state(c, "mgsave.service")["ActiveState"] == "active"
    assert_nothing_saved(c)
    wait_message(c, since, lambda m: "mgsave.service is being stopped, but the host is not shutting down" in m
                 and "no guest was saved" in m and "run 'mgsave shutdown'" in m and "being restarted" in m)

    # A plain stop: nothing saved, and the pass is armed again once the stop is over.
    since = time.time()
    stop = c.run("systemctl", "stop", "mgsave.service", check=False)
    assert stop.returncode == 0, stop.stderr
    wait_active(c, "mgsave.service")
    assert_nothing_saved(c)
    wait_message(c, since, lambda m: "no guest was saved" in m and "armed again" in m)
    rearm = c.journal("_PID=1", since=since)
    assert any("mgsave-rearm.service" in str(e.get("MESSAGE", "")) for e in rearm)

    # The host goes down: the pass runs and saves every guest.
    since = time.time()
    c.poweroff()
    for name in GUESTS:
        assert (c.dir("lib") / "qemu/save" / f"{name}.save").is_file(), f"{name} has no managed-save image"
    wait_message(c, since, lambda m: m.startswith("running the shutdown pass:"), priority="info", timeout=0)
    for name in GUESTS:
        assert c.journal("-u", "mgsave", f"MGSAVE_GUEST={name}", "MGSAVE_ACTION=save", "MGSAVE_RESULT=ok",
                         since=since), f"no 'save ok' journal entry for {name}"

    # Boot 2: the boot pass resumes both; rescue mode is a stop of the guests, and saves them.
    c.boot()
    assert wait_boot_pass(c)["Result"] == "success"
    wait_states(c, {n: RUNNING_RESTORED for n in GUESTS})
    since = time.time()
    c.run("systemctl", "isolate", "rescue.target")
    wait_message(c, since, lambda m: m == "running the shutdown pass: virt-guest-shutdown.target is being stopped, "
                                          "and the guests with it", priority="info")
    for name in GUESTS:  # (libvirtd is stopped in rescue mode: its save directory tells)
        assert (c.dir("lib") / "qemu/save" / f"{name}.save").is_file(), f"{name} has no managed-save image"
    c.poweroff()
