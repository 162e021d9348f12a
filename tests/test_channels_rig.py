"""``save_channels`` on the real rig: a shutdown pass and a boot pass with two channels asked for.

On libvirt 11.2 or later (the Debian 13 root: ``tests.rig.inroot`` runs this file there) the
persistent guest's managed-save file and the transient guest's save file are written in the
sparse format by two channels, and both come back with their heartbeat going on. libvirt does
not mark the persistent guest's image as a managed save until its daemon restarts (the test
restarts it, as the host's next boot would, and looks). On older libvirt
(this Debian 12 machine: 9.0) plan and check say why the setting is not available, and the
pass saves and resumes both guests in one stream.
"""

from __future__ import annotations

import pytest

from libmgsave.channels import FIRST_LIBVIRT, version_text
from libmgsave.saveimages import is_sparse_image
from tests.rig import boots, last_tick, state_reason, ticks, wait_for_tick_after
from tests.rig.mgsave import Mgsave, image

pytestmark = pytest.mark.rig

POLICY = """\
    version: 1
    defaults:
      save_channels: 2
"""


def test_two_channels_where_libvirt_offers_them_and_one_stream_elsewhere(rig, make_guests, rig_conn, tmp_path):
    mgsave = Mgsave(tmp_path, policy=POLICY, json=True)
    [persistent] = make_guests(1, prefix="chan", memory_mib=512, fill_mib=192)
    [transient] = make_guests(1, prefix="chant", transient=True, memory_mib=384, fill_mib=128)
    uuid = rig_conn.lookupByName(transient).UUIDString()
    parallel = rig_conn.getLibVersion() >= FIRST_LIBVIRT
    version = version_text(rig_conn.getLibVersion())

    [plan] = mgsave("plan", "shutdown").data["plans"]
    planned = {g["name"]: g for g in plan["guests"]}
    for name in (persistent, transient):
        assert planned[name]["save_channels"] == (2 if parallel else 1), planned[name]
    refused = (f"save_channels 2 not available: libvirt {version} has no parallel save (needs 11.2); "
               f"saved in one stream")
    assert (refused in planned[persistent]["notes"]) is not parallel
    check = mgsave("check")
    assert any(refused in w["message"] for w in check.data["warnings"]) is not parallel, check.data

    before = {n: last_tick(n) for n in (persistent, transient)}
    down = mgsave("shutdown")
    assert down.outcomes() == {persistent: "saved", transient: "saved-to-file"}
    for name in (persistent, transient):
        assert not any("libvirt refused" in m for m in down.guest(name)["messages"]), down.guest(name)
    saved_file = mgsave.state_dir / "images" / f"{uuid}.save"
    assert state_reason(rig_conn, persistent) == ("shutoff", "saved")
    assert is_sparse_image(str(image(persistent))) is parallel
    assert is_sparse_image(str(saved_file)) is parallel
    # libvirt's own mark: set by a managed save, and by the daemon's start for a file it finds
    conn = rig_conn
    assert bool(conn.lookupByName(persistent).hasManagedSaveImage(0)) is not parallel
    if parallel:  # as at the host's next boot
        rig.restart_libvirtd()
        conn = rig.connect()
        assert conn.lookupByName(persistent).hasManagedSaveImage(0)

    [boot_plan] = mgsave("plan", "boot").data["plans"]
    planned = {g["name"]: g for g in boot_plan["guests"]}
    assert planned[persistent]["actions"] == ["resume"] and planned[transient]["actions"] == ["restore"]
    assert planned[transient]["save_channels"] == (2 if parallel else 1)
    up = mgsave("boot")
    assert up.outcomes() == {persistent: "resumed", transient: "restored"}
    for name in (persistent, transient):
        assert state_reason(conn, name) == ("running", "restored")
        wait_for_tick_after(name, before[name], timeout=60)
        seq = ticks(name)
        assert all(b > a for a, b in zip(seq, seq[1:])) and boots(name) == 1, f"{name}: {seq}"
    assert not image(persistent).exists() and not saved_file.exists()
    if conn is not rig_conn:
        conn.close()
    save = {n: [s for s in down.guest(n)["steps"] if s["action"].startswith("save")][0] for n in (persistent, transient)}
    print(f"libvirt {version}, {'2 channels' if parallel else 'one stream'}: saves "
          + ", ".join(f"{n} {s['duration_seconds']:.1f} s" for n, s in save.items()))
