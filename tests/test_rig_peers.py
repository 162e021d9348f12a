"""The two-host rig itself: two private libvirtd "hosts" in their own network namespaces, and a
real live migration between them that the guest's heartbeat survives."""

from __future__ import annotations

import re
import time

import libvirt
import pytest

from tests.rig import domain_xml, unavailable_reason
from tests.rig.peers import HostPair

pytestmark = pytest.mark.rig
_TICK = re.compile(rb"^tick (\d+)\r?$", re.M)
LIVE_P2P = (libvirt.VIR_MIGRATE_LIVE | libvirt.VIR_MIGRATE_PEER2PEER | libvirt.VIR_MIGRATE_PERSIST_DEST
            | libvirt.VIR_MIGRATE_UNDEFINE_SOURCE)


def ticks(path) -> list[int]:
    try:
        return [int(t) for t in _TICK.findall(path.read_bytes())]
    except FileNotFoundError:
        return []


def wait_tick(path, after: int, timeout: float = 120) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        seen = ticks(path)
        if seen and seen[-1] > after:
            return seen[-1]
        time.sleep(0.2)
    raise AssertionError(f"no tick after {after} in {path} within {timeout} s")


@pytest.fixture
def pair():
    reason = unavailable_reason()
    if reason:
        pytest.skip(reason)
    with HostPair() as hosts:
        yield hosts


def test_a_guest_migrates_live_from_one_host_to_the_other(pair):
    a, b = pair
    serial = a.workdir.parent / "serial" / "mover.log"
    conn_a, conn_b = a.connect(), b.connect()
    try:
        dom = conn_a.defineXML(domain_xml("mover", memory_mib=256, fill_mib=16, serial=serial))
        dom.create()
        before = wait_tick(serial, 2)
        started = time.monotonic()
        dom.migrateToURI3(b.tcp_uri, {}, LIVE_P2P)
        seconds = time.monotonic() - started
        moved = conn_b.lookupByName("mover")
        assert moved.isActive() and moved.isPersistent()
        assert "mover" not in {d.name() for d in conn_a.listAllDomains()}  # no copy left on A
        after = wait_tick(serial, before + 1)
        seen = ticks(serial)
        assert all(y == x + 1 for x, y in zip(seen, seen[1:])), f"the heartbeat restarted or skipped: {seen}"
        assert seen.count(1) == 1
        print(f"live migration of a 256 MiB guest: {seconds:.1f} s; ticks {before} -> {after}")
    finally:
        conn_a.close()
        conn_b.close()


def test_commands_run_on_a_host_reach_the_other_over_the_link(pair):
    a, b = pair
    out = a.run(["virsh", "-c", b.tcp_uri, "uri"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == b.tcp_uri
    # ... and this process's own network namespace has no route to either address.
    import subprocess

    ping = subprocess.run(["ip", "route", "get", b.address], capture_output=True, text=True)
    assert "mgs-" not in ping.stdout
