"""What libvirt does when a persistent guest's channelled managed-save image is restored with
virDomainRestoreParams (``parallel.channels``) instead of started: the evidence behind
docs/PERFORMANCE.md's "Resuming channelled images".

Runs where libvirt offers parallel save (the Debian 13 root: ``MGSAVE_DEBIAN13_TESTS=
tests/test_restore_params_rig.py``); elsewhere it is skipped for want of the API, which is the point.
"""

from __future__ import annotations

import json

import libvirt
import pytest

from libmgsave import parallelsave
from libmgsave.channels import FIRST_LIBVIRT
from tests.rig import boots, last_tick, state_reason, ticks, wait_for_tick_after
from tests.rig.mgsave import Mgsave, image

pytestmark = pytest.mark.rig

POLICY = """\
    version: 1
    defaults:
      save_channels: 2
"""
FLAGS = libvirt.VIR_DOMAIN_XML_INACTIVE | libvirt.VIR_DOMAIN_XML_SECURE


def test_restore_params_on_a_persistent_guests_managed_image(rig, make_guests, rig_conn, tmp_path):
    if rig_conn.getLibVersion() < FIRST_LIBVIRT:
        pytest.skip("libvirt before 11.2 has no virDomainRestoreParams with channels")
    mgsave = Mgsave(tmp_path, policy=POLICY, json=True)
    [name] = make_guests(1, prefix="rp", memory_mib=512, fill_mib=192)
    before = last_tick(name)
    definition = rig_conn.lookupByName(name).XMLDesc(FLAGS)
    seen = {}
    assert mgsave("shutdown").outcomes() == {name: "saved"}
    rig.restart_libvirtd()  # as at the host's next boot: libvirt marks the file a managed save
    conn = rig.connect()
    dom = conn.lookupByName(name)
    seen["marked_before"] = bool(dom.hasManagedSaveImage(0))
    parallelsave.restore(conn, str(image(name)), 2, 0)
    dom = conn.lookupByName(name)
    seen["state_after"] = state_reason(conn, name)
    seen["definition_same"] = dom.XMLDesc(FLAGS) == definition
    seen["persistent_after"] = bool(dom.isPersistent())
    seen["file_after"] = image(name).exists()
    seen["marked_after"] = bool(dom.hasManagedSaveImage(0))
    try:
        dom.managedSaveRemove(0)
        seen["remove_while_running"] = "ok"
    except libvirt.libvirtError as error:
        seen["remove_while_running"] = error.get_error_message()
    seen["file_after_remove"] = image(name).exists()
    seen["marked_after_remove"] = bool(dom.hasManagedSaveImage(0))
    wait_for_tick_after(name, before, timeout=60)
    seq = ticks(name)
    seen["memory_intact"] = all(b > a for a, b in zip(seq, seq[1:]))
    # Again, and this time the file is left where it is, as a client that dies after the restore
    # would leave it: the next plain start resumes the stale memory over the disks it has changed.
    assert mgsave("shutdown").outcomes() == {name: "saved"}
    parallelsave.restore(conn, str(image(name)), 2, 0)
    dom = conn.lookupByName(name)
    dom.destroy()
    seen["stale_file_after_stop"] = image(name).exists()
    seen["stale_marked_after_stop"] = bool(dom.hasManagedSaveImage(0))
    dom.create()
    seen["plain_start_after_stale"] = state_reason(conn, name)
    dom.destroy()
    seen["definition_same_after_stop"] = conn.lookupByName(name).XMLDesc(FLAGS) == definition
    print("restore-params evidence: " + json.dumps(seen, sort_keys=True))
    assert seen["state_after"] == ("running", "restored") and seen["memory_intact"], seen
    assert seen["definition_same"] and seen["definition_same_after_stop"] and seen["persistent_after"], seen
    conn.close()


def test_a_channelled_image_resumes_with_channels_memory_and_definition_intact(rig, make_guests, rig_conn, tmp_path):
    """mgsave's boot pass resumes a persistent guest's sparse managed image through
    virDomainRestoreParams with 2 channels: restored, heartbeat going on from where it was, its
    persistent definition byte for byte the same, and no image left where a start would resume it."""
    if rig_conn.getLibVersion() < FIRST_LIBVIRT:
        pytest.skip("libvirt before 11.2 has no virDomainRestoreParams with channels")
    mgsave = Mgsave(tmp_path, policy=POLICY, json=True)
    [name] = make_guests(1, prefix="rpm", memory_mib=512, fill_mib=192)
    definition = rig_conn.lookupByName(name).XMLDesc(FLAGS)
    before = last_tick(name)
    assert mgsave("shutdown").outcomes() == {name: "saved"}
    rig.restart_libvirtd()  # as at the host's next boot
    conn = rig.connect()
    [plan] = mgsave("plan", "boot").data["plans"]
    assert [(g["actions"], g["save_channels"]) for g in plan["guests"] if g["name"] == name] == [(["resume"], 2)]
    up = mgsave("boot")
    assert up.outcomes() == {name: "resumed"}
    dom = conn.lookupByName(name)
    seen = {"state": state_reason(conn, name), "marked": bool(dom.hasManagedSaveImage(0)),
            "file": image(name).exists(), "aside": sorted(p.name for p in image(name).parent.glob("mgsave-*/*")),
            "messages": up.guest(name)["messages"]}
    print("mgsave resume with channels: " + json.dumps(seen, sort_keys=True))
    assert seen["state"] == ("running", "restored") and not seen["file"] and not seen["aside"], seen
    assert not any("one stream" in m for m in seen["messages"]), seen
    wait_for_tick_after(name, before, timeout=60)
    seq = ticks(name)
    assert all(b > a for a, b in zip(seq, seq[1:])) and boots(name) == 1, seq
    assert dom.XMLDesc(FLAGS) == definition and dom.isPersistent()
    dom.destroy()
    assert conn.lookupByName(name).XMLDesc(FLAGS) == definition
    dom.create()  # nothing of its past is resumed again: a fresh boot
    assert state_reason(conn, name) == ("running", "booted")
    conn.close()
