"""The test rig itself: a real (TCG) guest ticks, survives a managed save, obeys ACPI or not."""

import os
import subprocess
import time

import pytest

from tests.rig import (SAVE_DIR, boots, last_tick, start_and_wait_ticking, state_reason, ticks,
                       wait_for_state, wait_for_tick_after)

pytestmark = pytest.mark.rig


def virsh(*args, check=True):
    return subprocess.run(["virsh", "-c", "qemu:///system", *args], capture_output=True,
                          text=True, check=check)


def test_guest_ticks(make_guests, rig_conn):
    [name] = make_guests(1)
    first = last_tick(name)
    assert first >= 1
    assert wait_for_tick_after(name, first + 1, timeout=60) > first + 1
    assert boots(name) == 1
    assert state_reason(rig_conn, name) == ("running", "booted")
    assert rig_conn.lookupByName(name).isPersistent()


def test_transient_guest(make_guests, rig_conn):
    [name] = make_guests(1, transient=True, memory_mib=256)
    dom = rig_conn.lookupByName(name)
    assert not dom.isPersistent()
    assert dom.maxMemory() == 256 * 1024
    assert last_tick(name) >= 1


def test_managedsave_and_start_resumes_memory_state(make_guests, rig_conn):
    [name] = make_guests(1, memory_mib=512, fill_mib=300)
    before_save = wait_for_tick_after(name, last_tick(name))

    t0 = time.monotonic()
    virsh("managedsave", name)
    save_s = time.monotonic() - t0
    assert state_reason(rig_conn, name) == ("shutoff", "saved")
    assert rig_conn.lookupByName(name).hasManagedSaveImage()
    image = os.path.join(SAVE_DIR, f"{name}.save")
    size = os.path.getsize(image)
    assert size > 300 * 2**20, "the random fill must be in the image"
    last_before = last_tick(name)
    assert last_before >= before_save

    time.sleep(2)    # a cold boot could not tell; a resumed guest ignores the gap
    t0 = time.monotonic()
    virsh("start", name)
    restore_s = time.monotonic() - t0
    assert state_reason(rig_conn, name) == ("running", "restored")
    after = wait_for_tick_after(name, last_before, timeout=60)
    assert after > last_before
    seq = ticks(name)
    assert seq == list(range(1, len(seq) + 1)), f"ticks must go on, not start again: {seq}"
    assert boots(name) == 1, "a restore must not run /init again"
    assert not os.path.exists(image)
    print(f"managedsave {save_s:.1f} s ({size / 1e6:.0f} MB), start (restore) {restore_s:.1f} s")


def test_acpi_shutdown_powers_off_unless_ignored(make_guests, rig_conn):
    [normal] = make_guests(1, prefix="acpi", start=False)
    [deaf] = make_guests(1, prefix="deaf", ignore_acpi=True, start=False)
    start_and_wait_ticking(rig_conn, [normal, deaf])     # both boot at once
    deaf_tick = last_tick(deaf)

    t0 = time.monotonic()
    rig_conn.lookupByName(normal).shutdown()
    rig_conn.lookupByName(deaf).shutdown()
    # About 2 s on an idle 2-core machine; generous for a loaded one.
    assert wait_for_state(rig_conn, normal, "shutoff", timeout=30) == ("shutoff", "shutdown")
    took = time.monotonic() - t0
    time.sleep(max(0.0, 5 - took))
    assert state_reason(rig_conn, deaf)[0] == "running"
    assert wait_for_tick_after(deaf, deaf_tick + 3, timeout=60)
    assert boots(deaf) == 1
    print(f"ACPI shutdown took {took:.1f} s")


def test_libvirtd_restart_keeps_guests(rig, make_guests):
    [name] = make_guests(1)
    rig.restart_libvirtd()
    conn = rig.connect()
    try:
        assert state_reason(conn, name)[0] == "running"
        wait_for_tick_after(name, last_tick(name))
        assert boots(name) == 1
    finally:
        conn.close()


def test_no_room_in_save_dir(rig, make_guests, rig_conn):
    [name] = make_guests(1, fill_mib=200, memory_mib=384)
    with rig.save_dir_limited(64):
        res = virsh("managedsave", name, check=False)
        assert res.returncode != 0
        assert state_reason(rig_conn, name)[0] == "running"
    tick = last_tick(name)
    assert wait_for_tick_after(name, tick) > tick


def test_rig_is_invisible_outside(rig):
    # The mount namespace the rig left (the machine's) sees none of the rig's libvirt paths.
    probe = "test -e /run/libvirt/rig-libvirtd.pid && echo visible || echo hidden"
    outside = subprocess.run(["nsenter", f"--mount={rig.host_mntns_path()}", "sh", "-c", probe],
                             capture_output=True, text=True, check=True)
    assert outside.stdout.strip() == "hidden"
    inside = subprocess.run(["sh", "-c", probe], capture_output=True, text=True, check=True)
    assert inside.stdout.strip() == "visible"
