"""Load: a shutdown and a boot pass over many guests, every guest accounted for.

On libvirt's test driver (instant saves) with hundreds of guests, in-process, and on the real rig
with as many small TCG guests as two cores carry in reasonable time.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import libvirt
import pytest

from libmgsave import cli, state
from libmgsave.errors import ExitCode

URI = "test:///default"
REPO = Path(__file__).resolve().parent.parent


def domain_xml(name: str, memory_kib: int = 131072) -> str:
    return (f"<domain type='test'><name>{name}</name><memory>{memory_kib}</memory>"
            f"<os><type>hvm</type></os></domain>")


def test_load_hundreds_of_guests_on_the_test_driver(tmp_path, capsys):
    conn = libvirt.open(URI)  # held open: test:///default lives as long as a connection to it
    try:
        for dom in conn.listAllDomains():
            if dom.isActive():
                dom.destroy()
            dom.undefine()
        running = [f"run-{i:03d}" for i in range(300)]
        stopped = [f"off-{i:03d}" for i in range(40)]
        transient = [f"tr-{i:03d}" for i in range(20)]
        for name in running + stopped:
            dom = conn.defineXML(domain_xml(name))
            if name in running:
                dom.create()
        for name in transient:
            conn.createXML(domain_xml(name), 0)
        state_dir = tmp_path / "state"
        policy = tmp_path / "policy.yaml"
        policy.write_text(f"version: 1\nconnections: ['{URI}']\nlimits:\n  max_parallel_saves: 8\n")

        def run(command):
            capsys.readouterr()
            t0 = time.monotonic()
            code = cli.main([command, "--state-dir", str(state_dir), "--policy", str(policy), "--json"])
            seconds = time.monotonic() - t0
            out, err = capsys.readouterr()
            return code, json.loads(out), err, seconds

        code, result, err, shutdown_s = run("shutdown")
        assert code == ExitCode.OK, err[-3000:]
        got = {g["name"]: g["outcome"] for g in result["guests"]}
        assert len(got) == len(running) + len(stopped) + len(transient)
        assert {n for n, o in got.items() if o == "saved"} == set(running)
        assert {n for n, o in got.items() if o == "saved-to-file"} == set(transient)
        assert {n for n, o in got.items() if o == "skipped"} == set(stopped)
        assert conn.numOfDomains() == 0, "a guest is still running after the shutdown pass"
        record = state.read_record(state_dir / state.SHUTDOWN_RECORD, "shutdown")
        recorded = {g["name"]: g["outcome"] for g in record["guests"].values()}
        assert recorded == {n: o for n, o in got.items() if o != "skipped"}, "the record lost or garbled a guest"
        assert record["finished"] is not None

        code, result, err, boot_s = run("boot")
        assert code == ExitCode.OK, err[-3000:]
        got = {g["name"]: g["outcome"] for g in result["guests"]}
        assert {n for n, o in got.items() if o == "resumed"} == set(running)
        assert {n for n, o in got.items() if o == "restored"} == set(transient)
        assert {n for n, o in got.items() if o == "skipped"} == set(stopped)
        active = {d.name() for d in conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE)}
        assert active == set(running) | set(transient)
        assert not any(conn.lookupByName(n).hasManagedSaveImage() for n in running)
        assert not list((state_dir / "images").glob("*.save"))
        boot_record = state.read_record(state_dir / state.BOOT_RECORD, "boot")
        assert len(boot_record["guests"]) == len(running) + len(stopped) + len(transient)
        print(f"{len(running) + len(transient)} guests: shutdown pass {shutdown_s:.1f} s, boot pass {boot_s:.1f} s")
        assert shutdown_s < 60 and boot_s < 60
    finally:
        conn.close()


# --- the real rig -----------------------------------------------------------------------------

RIG_GUESTS = 8


@pytest.mark.rig
def test_load_many_small_guests_on_the_rig(make_guests, rig_conn, tmp_path):
    from tests.rig import SAVE_DIR, boots, last_tick, state_reason, wait_for_tick_after

    names = make_guests(RIG_GUESTS, memory_mib=128, fill_mib=32, prefix="load")
    state_dir = tmp_path / "state"
    policy = tmp_path / "policy.yaml"
    policy.write_text("version: 1\nconnections: ['qemu:///system']\n")
    os.chmod(policy, 0o644)

    def run(command):
        t0 = time.monotonic()
        proc = subprocess.run([sys.executable, "-m", "libmgsave", command, "--state-dir", str(state_dir),
                               "--policy", str(policy), "--json"], cwd=REPO, capture_output=True, text=True,
                              timeout=600)
        return proc, time.monotonic() - t0

    proc, shutdown_s = run("shutdown")
    assert proc.returncode == ExitCode.OK, proc.stderr[-3000:]
    result = json.loads(proc.stdout)
    assert {g["name"]: g["outcome"] for g in result["guests"]} == dict.fromkeys(names, "saved")
    for name in names:
        assert state_reason(rig_conn, name) == ("shutoff", "saved")
        assert os.path.getsize(f"{SAVE_DIR}/{name}.save") > 32 * 2**20
    record = state.read_record(state_dir / state.SHUTDOWN_RECORD, "shutdown")
    assert {g["name"]: g["outcome"] for g in record["guests"].values()} == dict.fromkeys(names, "saved")
    before = {name: last_tick(name) for name in names}

    proc, boot_s = run("boot")
    assert proc.returncode == ExitCode.OK, proc.stderr[-3000:]
    result = json.loads(proc.stdout)
    assert {g["name"]: g["outcome"] for g in result["guests"]} == dict.fromkeys(names, "resumed")
    for name in names:
        assert state_reason(rig_conn, name) == ("running", "restored")
        # resumed where it was: the heartbeat goes on from its last tick, /init never ran again
        assert wait_for_tick_after(name, before[name], timeout=60) <= before[name] + 10
        assert boots(name) == 1
    print(f"{RIG_GUESTS} x 128 MiB guests: shutdown pass {shutdown_s:.1f} s, boot pass {boot_s:.1f} s")
