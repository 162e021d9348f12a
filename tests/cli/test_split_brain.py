"""A guest the last shutdown migrated to a peer, but defined here again and shut off (the daemon
died in the migration's last step, configuration management defined it again): the boot pass
starts it only when the peer answers and says it does not live there.

The peers are libvirt test drivers of their own (``test:///<file>``: each connection gets a
host as the file describes it), or a socket nobody listens on; the real thing, with a guest
running on the other host of the two-host rig, is in tests/test_migrate_rig.py."""

import json
import os

import pytest

from libmgsave import cli
from libmgsave.errors import ExitCode
from tests.testdriver import MIGRATED_UUID, URI, hv, migrated_record  # noqa: F401

DEAD_PEER = "qemu+unix:///system?socket=/nonexistent/libvirt-sock"


def guest_xml(name="gone1", uuid=MIGRATED_UUID) -> str:
    return (f"<domain type='test'><name>{name}</name><uuid>{uuid}</uuid><memory>2048</memory>"
            f"<os><type>hvm</type></os></domain>")


@pytest.fixture
def peers(tmp_path):
    """A peer where the guest runs, and one where it is not defined."""
    runs, empty = tmp_path / "runs" / "host", tmp_path / "empty" / "host"  # a URI's path ends in a word
    for path, text in ((runs, f"<node>{guest_xml()}</node>"), (empty, "<node/>")):
        path.parent.mkdir()
        path.write_text(text)
    return f"test://{runs}", f"test://{empty}"


def boot(tmp_path, capsys, peer, *args, listed=None, come_back=False):
    """``mgsave boot`` with a record placing gone1 on ``peer``, which the policy lists (or ``listed``)."""
    migrated_record(tmp_path / "state", peer)
    listed = listed or peer
    back = f', come_back: true, home: "{URI}"' if come_back else ""
    policy = tmp_path / "policy.yaml"
    policy.write_text(f'version: 1\ndefaults:\n  migrate: {{peers: ["{listed}"]{back}}}\n')
    os.chmod(policy, 0o644)
    capsys.readouterr()
    code = cli.main(["--connect", URI, "--state-dir", str(tmp_path / "state"), "--policy", str(policy), "--json",
                     "boot", *args])
    out, err = capsys.readouterr()
    [result] = [g for g in json.loads(out)["guests"] if g["name"] == "gone1"]
    return code, result, err


@pytest.fixture
def defined_here_again(hv):  # noqa: F811
    dom = hv.defineXML(guest_xml())
    yield dom
    if dom.isActive():
        dom.destroy()


def test_it_is_not_started_while_it_runs_on_its_peer(defined_here_again, peers, tmp_path, capsys):
    code, result, err = boot(tmp_path, capsys, peers[0])
    assert code == ExitCode.OK, err
    assert result["outcome"] == "skipped" and not defined_here_again.isActive(), result
    assert "it lives on" in result["messages"][0] and "(running)" in result["messages"][0], result


def test_it_is_left_off_degraded_when_its_peer_cannot_be_asked(defined_here_again, tmp_path, capsys):
    code, result, err = boot(tmp_path, capsys, DEAD_PEER)
    assert code == ExitCode.GUEST_DEGRADED, err
    assert result["outcome"] == "left-off" and result["severity"] == "degraded", result
    assert result["first_choice"] == "start" and result["peer"] == DEAD_PEER, result
    assert "could not be asked" in result["messages"][0] and "not started here" in result["messages"][0]
    assert not defined_here_again.isActive()
    assert "gone1: recorded as migrated to" in err  # logged, for the journal


def test_it_is_left_off_when_its_policy_no_longer_lists_the_peer(defined_here_again, peers, tmp_path, capsys):
    code, result, err = boot(tmp_path, capsys, peers[0], listed=peers[1])
    assert code == ExitCode.GUEST_DEGRADED, err
    assert result["outcome"] == "left-off" and "does not list" in result["messages"][0], result
    assert not defined_here_again.isActive()


def test_it_starts_when_its_peer_says_it_is_not_there(defined_here_again, peers, tmp_path, capsys):
    code, result, err = boot(tmp_path, capsys, peers[1])
    assert code == ExitCode.OK, err
    assert result["outcome"] == "started" and defined_here_again.isActive(), result
    assert any("says it does not run there (not defined)" in m for m in result["messages"]), result


def test_with_come_back_it_is_brought_home_not_started(defined_here_again, peers, tmp_path, capsys):
    """The test driver cannot migrate: the return fails and the guest stays on its peer, off here."""
    code, result, err = boot(tmp_path, capsys, peers[0], come_back=True)
    assert code == ExitCode.GUEST_DEGRADED, err
    assert result["action"] == "return" and result["outcome"] == "on-peer", result
    assert not defined_here_again.isActive()


def test_the_plan_says_so_before_the_pass(defined_here_again, peers, tmp_path, capsys):
    code, result, err = boot(tmp_path, capsys, DEAD_PEER, "--dry-run")
    assert code == ExitCode.GUEST_DEGRADED and result["outcome"] == "left-off", result
    assert not defined_here_again.isActive()
