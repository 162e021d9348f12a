"""A connection that opens, then fails while its guests are listed, costs only its own guests.

Two connections to the rig's private libvirtd, each to the daemon's test driver (whose sample
guest "test" runs; the two share it while both are open): one straight to the daemon's socket,
one through a proxy that cuts the connection when the client asks for the list of guests, as a
daemon dying (or a socket restarting) just then would. Before, the pass ended at once with
"listing guests on ...: End of file" (exit 4): no guest of any connection was handled.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from libmgsave import state
from libmgsave.errors import ExitCode
from tests.rig.rpcproxy import REMOTE_PROC_CONNECT_LIST_ALL_DOMAINS, CutAt

DAEMON_SOCKET = "/run/libvirt/libvirt-sock"
REPO = Path(__file__).resolve().parent.parent


def test_a_connection_lost_while_listing_guests_costs_only_its_guests(rig, tmp_path):
    direct = f"test+unix:///default?socket={DAEMON_SOCKET}"
    proxy = CutAt(tmp_path / "cut.sock", DAEMON_SOCKET, REMOTE_PROC_CONNECT_LIST_ALL_DOMAINS)
    cut = f"test+unix:///default?socket={tmp_path / 'cut.sock'}"
    try:
        proc = subprocess.run([sys.executable, "-m", "libmgsave", "--connect", cut, "--connect", direct,
                               "--state-dir", str(tmp_path / "state"), "--json", "shutdown"],
                              cwd=REPO, capture_output=True, text=True, timeout=120)
    finally:
        proxy.close()
    assert proxy.cuts >= 1, "the proxy never saw the listing"
    result = json.loads(proc.stdout)
    assert [(g["connection"], g["name"], g["outcome"]) for g in result["guests"]] == [(direct, "test", "saved")], \
        proc.stderr
    assert result["unreachable"] == [cut]
    assert any(f"could not list the guests on {cut}" in w for w in result["warnings"]), result["warnings"]
    record = json.loads((tmp_path / "state" / state.SHUTDOWN_RECORD).read_text())
    assert [g["outcome"] for g in record["guests"].values()] == ["saved"]
    assert proc.returncode == ExitCode.GUEST_FAILED, proc.stderr  # a connection's guests were not handled
