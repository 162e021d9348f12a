"""Every connection to a peer is given up after the peer bound (``hypervisor.PEER_TIMEOUT``),
whoever makes it: the boot pass asking where a guest runs, ``return`` bringing one home,
``check`` looking at the peers. The peer here is a real socket that takes the connection and
never answers (as a hung daemon, or a host whose packets start being dropped once connected);
libvirt's own client would wait for it for ever. The bound is cut to 2 s for the test; the
two-host rig (tests/test_migrate_rig.py) shows the real 15 s against a peer that drops packets."""

import json
import os
import socket
import threading
import time

import pytest

from libmgsave import cli
from libmgsave.hypervisor import peer as hypervisor_peer
from libmgsave.errors import ExitCode
from tests.testdriver import MIGRATED_UUID, URI, hv, migrated_record  # noqa: F401

BOUND = 2.0
MARGIN = 20.0  # a loaded machine: the pass's own work besides the peer


@pytest.fixture(autouse=True)
def short_bound(monkeypatch):
    monkeypatch.setattr(hypervisor_peer, "PEER_TIMEOUT", BOUND)


@pytest.fixture
def silent_peer():
    """A listening socket that never accepts: the kernel completes the connect, nobody answers."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    yield f"qemu+tcp://127.0.0.1:{server.getsockname()[1]}/system"
    server.close()


def mgsave(tmp_path, capsys, peer, *args, come_back=True):
    """The command, in a thread: it must end within the bound and a margin (a test of the old
    code would otherwise hang)."""
    path = tmp_path / "policy.yaml"
    back = f', come_back: true, home: "{URI}"' if come_back else ""
    path.write_text(f'version: 1\ndefaults:\n  on_shutdown: [migrate, save]\n  migrate: {{peers: ["{peer}"]{back}}}\n')
    os.chmod(path, 0o644)
    capsys.readouterr()
    done: list = []
    argv = ["--connect", URI, "--state-dir", str(tmp_path / "state"), "--policy", str(path), "--json", *args]
    started = time.monotonic()
    worker = threading.Thread(target=lambda: done.append(cli.main(argv)), daemon=True)
    worker.start()
    worker.join(BOUND + MARGIN)
    assert done, f"mgsave {' '.join(args)} still waits for the peer after {BOUND + MARGIN:g} s"
    out, err = capsys.readouterr()
    return done[0], json.loads(out), err, time.monotonic() - started


def test_return_gives_up_on_a_peer_that_never_answers(hv, silent_peer, tmp_path, capsys):  # noqa: F811
    migrated_record(tmp_path / "state", silent_peer)
    code, data, err, _seconds = mgsave(tmp_path, capsys, silent_peer, "return")
    [result] = data["guests"]
    assert code == ExitCode.GUEST_DEGRADED and result["outcome"] == "on-peer", err
    assert any(f"no answer within {BOUND:g} s" in m for m in result["messages"]), result


def test_boot_gives_up_asking_where_a_guest_defined_here_again_runs(hv, silent_peer, tmp_path, capsys):  # noqa: F811
    dom = hv.defineXML(f"<domain type='test'><name>gone1</name><uuid>{MIGRATED_UUID}</uuid><memory>2048</memory>"
                       f"<os><type>hvm</type></os></domain>")
    migrated_record(tmp_path / "state", silent_peer)
    code, data, err, _seconds = mgsave(tmp_path, capsys, silent_peer, "boot", come_back=False)
    [result] = data["guests"]
    assert code == ExitCode.GUEST_DEGRADED and result["outcome"] == "left-off", err
    assert f"no answer within {BOUND:g} s" in result["messages"][0], result
    assert not dom.isActive()


def test_check_and_the_shutdown_plan_give_up_on_it(hv, silent_peer, tmp_path, capsys):  # noqa: F811
    hv.defineXML("<domain type='test'><name>web1</name><memory>2048</memory><os><type>hvm</type></os>"
                 "</domain>").create()
    code, data, err, seconds = mgsave(tmp_path, capsys, silent_peer, "check")
    assert code == ExitCode.OK and seconds < BOUND + MARGIN, err
    assert any(f"no answer within {BOUND:g} s" in w["message"] for w in data["warnings"]), data
    code, data, err, seconds = mgsave(tmp_path, capsys, silent_peer, "plan", "shutdown")
    assert data["plans"][0]["peers"][silent_peer]["reachable"] is False, data
