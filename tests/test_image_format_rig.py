"""``image_format`` on the real rig: a shutdown pass and a boot pass with formats asked for.

On libvirt 11.2 or later (the Debian 13 root: ``tests.rig.inroot`` runs this file there) the
persistent guest asking for gzip is saved to its managed-save file in gzip, and comes back with
its heartbeat going on; the guest asking for zstd, whose program the test hides there (its
execute bits taken away: the root is a throw-away overlay), is refused by libvirt and
saved in libvirt's own format instead, still saved. On older libvirt
(Debian 12: 9.0) plan and check say that no format can be asked per save, and both guests are
saved in libvirt's own format (raw).
"""

from __future__ import annotations

import contextlib
import os
import shutil

import pytest

from libmgsave.channels import FIRST_LIBVIRT
from libmgsave.saveimages import image_format_of
from tests.rig import boots, last_tick, ticks, wait_for_tick_after
from tests.rig.inroot import THROWAWAY_ENV
from tests.rig.mgsave import Mgsave, image

pytestmark = pytest.mark.rig

POLICY = """\
    version: 1
    guests:
      - name: gzipped
        match: {name: "fmtg*"}
        image_format: gzip
      - name: zstd
        match: {name: "fmtz*"}
        image_format: zstd
"""


def test_formats_where_libvirt_takes_them_and_libvirts_own_elsewhere(rig, make_guests, rig_conn, tmp_path):
    mgsave = Mgsave(tmp_path, policy=POLICY, json=True)
    [gzipped] = make_guests(1, prefix="fmtg", memory_mib=384, fill_mib=128)
    [zstd] = make_guests(1, prefix="fmtz", memory_mib=384, fill_mib=128)
    per_call = rig_conn.getLibVersion() >= FIRST_LIBVIRT
    [plan] = mgsave("plan", "shutdown").data["plans"]
    planned = {g["name"]: g for g in plan["guests"]}
    assert planned[gzipped]["image_format"] == ("gzip" if per_call else "libvirt"), planned[gzipped]
    assert ("per-call image format" in planned[gzipped]["image_format_why"]) is not per_call
    check = mgsave("check")
    assert any("per-call image format" in w["message"] for w in check.data["warnings"]) is not per_call, check.data

    before = {n: last_tick(n) for n in (gzipped, zstd)}
    hide = per_call and os.environ.get(THROWAWAY_ENV) == "1"
    with program_hidden("zstd") if hide else contextlib.nullcontext():
        down = mgsave("shutdown")
    assert down.outcomes() == {gzipped: "saved", zstd: "saved"}
    assert image_format_of(str(image(gzipped))) == ("gzip" if per_call else "raw")
    # libvirt runs the program of the root it runs in
    zstd_here = per_call and not hide and shutil.which("zstd") is not None
    assert image_format_of(str(image(zstd))) == ("zstd" if zstd_here else "raw")
    refused = [m for m in down.guest(zstd)["messages"] if "libvirt refused image_format zstd" in m]
    assert bool(refused) is (per_call and not zstd_here), down.guest(zstd)
    up = mgsave("boot")
    assert up.outcomes() == {gzipped: "resumed", zstd: "resumed"}
    for name in (gzipped, zstd):
        wait_for_tick_after(name, before[name], timeout=60)
        seq = ticks(name)
        assert all(b > a for a, b in zip(seq, seq[1:])) and boots(name) == 1, f"{name}: {seq}"
        assert not image(name).exists()


@contextlib.contextmanager
def program_hidden(name: str):
    """The program ``name`` unrunnable while the block runs (its execute bits taken away), so
    libvirt finds no program to run. A change of the file, not a mount: the rig's daemon runs in
    a mount namespace of its own. Only in the rig's throw-away root."""
    path = os.path.realpath(shutil.which(name) or f"/usr/bin/{name}")
    mode = os.stat(path).st_mode
    os.chmod(path, mode & ~0o111)
    try:
        yield
    finally:
        os.chmod(path, mode)
