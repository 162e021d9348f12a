"""A held saved image that the installed QEMU cannot resume, on the real rig: reported before
anything is tried, and planned as such at boot (its image kept, its ``on_resume_failure``
applied), never tried and failed.

An upgrade that drops a machine type is simulated by the other side of the same mismatch: the
image's embedded definition names a machine type this QEMU does not offer. libvirt's own
``managedsave-define`` refuses to change a machine type (its ABI stability check), so the test
rewrites the definition in the image's header in place, same length, where
``save-image-define`` writes it (libvirt pads it with NULs and keeps no checksum of it).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from libmgsave.errors import ExitCode
from tests.rig import start_and_wait_ticking, state_reason
from tests.rig.mgsave import Mgsave, image
from tests.test_faults import assert_cold_booted, kept_images

pytestmark = pytest.mark.rig

TINY = dict(memory_mib=256, fill_mib=32)
POLICY = """\
    version: 1
    connections: ['qemu:///system']
    guests:
      - match: {name: "off-*"}
        on_resume_failure: leave-off
"""
HEADER_BYTES = 1 << 20  # the save image's header and embedded definition lie well within it


def name_a_machine_type_nobody_offers(path: Path) -> tuple[str, str]:
    """Rewrite the machine type in the image's embedded definition (``pc-i440fx-7.2``, the
    expansion of the rig's ``pc``) as a same-length one no QEMU has offered (``pc-i440fx-0.0``);
    returns (old, new)."""
    with open(path, "r+b") as image_file:
        head = image_file.read(HEADER_BYTES)
        [old] = set(re.findall(rb"machine='(pc-i440fx-[0-9.]+)'", head))
        new = b"pc-i440fx-" + re.sub(rb"[0-9]", b"0", old[len(b"pc-i440fx-"):])
        image_file.seek(0)
        image_file.write(head.replace(b"machine='" + old + b"'", b"machine='" + new + b"'"))
    return old.decode(), new.decode()


def test_an_image_this_qemu_cannot_resume_is_reported_and_planned_not_tried(rig_conn, make_guests, tmp_path):
    mgsave = Mgsave(tmp_path, policy=POLICY)
    [fresh] = make_guests(1, prefix="fresh", start=False, **TINY)
    [off] = make_guests(1, prefix="off", start=False, **TINY)
    start_and_wait_ticking(rig_conn, [fresh, off])
    mgsave("shutdown")
    assert mgsave.outcomes("shutdown") == {fresh: "saved", off: "saved"}
    needs = mgsave.entry("shutdown", fresh)["needs"]
    version = rig_conn.getVersion()
    assert needs["qemu_version"] == version and needs["libvirt_version"] == rig_conn.getLibVersion()
    assert needs["machine"].startswith("pc-i440fx-"), needs

    for name in (fresh, off):
        old, new = name_a_machine_type_nobody_offers(image(name))
        assert f"machine='{new}'" in rig_conn.lookupByName(name).managedSaveGetXMLDesc(0), "libvirt reads the edit"
    off_bytes = image(off).read_bytes()
    words = f"will not resume: machine type {new} is not offered by this QEMU"

    status = mgsave("status")
    for name in (fresh, off):
        assert f"saved image: {name}: {words}" in status.stdout, status
    rows = {g["name"]: g for g in json.loads(mgsave("status", "--json").stdout)["guests"]}
    assert rows[fresh]["resume"]["verdict"] == "will-not-resume" and words in rows[fresh]["resume"]["why"]
    assert "boot with the QEMU that saved it" in rows[fresh]["resume"]["advice"]

    plan = mgsave("plan", "boot")
    assert f"warning: {fresh}: {words}" in plan.stdout and f"warning: {off}: {words}" in plan.stdout, plan
    guests = {g["name"]: g for g in json.loads(mgsave("plan", "boot", "--json").stdout)["plans"][0]["guests"]}
    assert guests[fresh]["actions"] == ["start"] and guests[fresh]["first_choice"] == "resume"
    assert guests[off]["actions"] == ["skip"] and words in guests[off]["will_not_resume"]

    check = mgsave("check")
    assert f"saved image: {fresh}: {words}" in check.stdout, check
    assert mgsave("check", "--strict", expect_rc=ExitCode.BAD_INPUT)

    boot = mgsave("boot", expect_rc=ExitCode.GUEST_DEGRADED)
    assert mgsave.outcomes("boot") == {fresh: "booted-fresh", off: "left-off"}, boot
    # never tried: no resume step, no failed one
    assert [s["action"] for s in mgsave.entry("boot", fresh)["steps"]] == ["start"]
    assert mgsave.entry("boot", off).get("steps", []) == []
    assert f"{fresh}: {words}" in boot.stderr and f"{fresh}: resum" not in boot.stderr, boot
    # fresh: its image kept (a link beside libvirt's), then booted fresh
    [kept] = [p for p in kept_images(mgsave) if p.name.startswith(fresh + "-")]
    assert f"machine='{new}'".encode() in kept.read_bytes()[:HEADER_BYTES]
    assert_cold_booted(rig_conn, fresh)
    assert not rig_conn.lookupByName(fresh).hasManagedSaveImage(0)
    # off: left off, its image untouched in libvirt's slot
    assert state_reason(rig_conn, off)[0] == "shutoff"
    assert rig_conn.lookupByName(off).hasManagedSaveImage(0) and image(off).read_bytes() == off_bytes
    assert [p for p in kept_images(mgsave) if p.name.startswith(off + "-")] == []
