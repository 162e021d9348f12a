"""The state records: atomic writes, and records that cannot be trusted.

A record written by another mgsave (older or newer format), damaged on disk, or edited by hand
must be detected and reported, never trusted blindly. The boot pass then falls back to what
libvirt itself reports: a guest with a managed-save image was running when it was saved.

Everything here runs on real files; the passes run through the real CLI in-process against
libvirt's ``test:///default`` driver, whose guests live only while a connection to it is open in
this process (the ``hv`` fixture holds one).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import libvirt
import pytest

from libmgsave import cli, state
from libmgsave.errors import ExitCode
from tests.testdriver import URI, define, domain_xml, has_image, hv, running  # noqa: F401

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def run(tmp_path, capsys):
    """Run the real CLI in-process: returns (exit code, --json output or None, stderr)."""
    state_dir = tmp_path / "state"
    policy = tmp_path / "policy.yaml"
    policy.write_text(f"version: 1\nconnections: ['{URI}']\n")
    os.chmod(policy, 0o644)

    def run_mgsave(*args):
        capsys.readouterr()
        code = cli.main([args[0], "--state-dir", str(state_dir), "--policy", str(policy), "--json", *args[1:]])
        out, err = capsys.readouterr()
        return code, (json.loads(out) if out.strip() else None), err

    run_mgsave.state_dir = state_dir
    run_mgsave.policy = policy
    return run_mgsave


def outcomes(result) -> dict[str, str]:
    return {g["name"]: g["outcome"] for g in result["guests"]}


def shutdown_record(run) -> Path:
    return run.state_dir / state.SHUTDOWN_RECORD


# --- atomic writes --------------------------------------------------------------------------


def test_atomic_write_leaves_the_whole_file_and_no_temporary(tmp_path):
    path = tmp_path / "sub" / "record.json"
    state.write_json_atomic(path, {"a": 1, "guests": {"x": [1, 2]}})
    assert json.loads(path.read_text()) == {"a": 1, "guests": {"x": [1, 2]}}
    assert sorted(p.name for p in path.parent.iterdir()) == ["record.json"]


def test_a_write_that_fails_half_way_keeps_the_old_file(tmp_path):
    path = tmp_path / "record.json"
    state.write_json_atomic(path, {"generation": 1})
    with pytest.raises(TypeError):
        # json.dump has written part of the new file when it meets the unserialisable value
        state.write_json_atomic(path, {"generation": 2, "big": "x" * 100000, "z": object()})
    assert json.loads(path.read_text()) == {"generation": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["record.json"], "the temporary file is left over"


def test_readers_never_see_a_partial_record(tmp_path):
    path = tmp_path / "record.json"
    state.write_json_atomic(path, {"generation": 0, "pad": ""})
    stop = threading.Event()
    seen, bad = set(), []

    def reader():
        while not stop.is_set():
            try:
                seen.add(json.loads(path.read_text())["generation"])
            except ValueError as error:
                bad.append(error)

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for generation in range(1, 150):
            state.write_json_atomic(path, {"generation": generation, "pad": "x" * (generation * 3000)})
    finally:
        stop.set()
        thread.join()
    assert not bad, f"a reader saw a partial file: {bad[0]}"
    assert len(seen) > 1


WRITER = """
import sys
from pathlib import Path
from libmgsave import state
path = Path(sys.argv[1])
generation = 0
print("ready", flush=True)
while True:
    generation += 1
    state.write_json_atomic(path, {"generation": generation, "pad": "x" * 400000})
"""


def test_a_writer_killed_mid_write_leaves_a_whole_record(tmp_path):
    """SIGKILL (as good as a power cut for the file's contents) at random points of many writes."""
    path = tmp_path / "record.json"
    for attempt in range(5):
        proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], cwd=REPO,
                                stdout=subprocess.PIPE, text=True)
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(0.05 + attempt * 0.037)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        proc.stdout.close()
        if path.exists():
            data = json.loads(path.read_text())  # whole, never half of one
            assert data["pad"] == "x" * 400000
    assert path.exists()


# --- records that cannot be trusted ---------------------------------------------------------


def _good_record(kind: str = "shutdown") -> dict:
    return {
        "format": state.RECORD_FORMAT, "kind": kind, "version": state.RECORD_VERSION,
        "mgsave_version": "0.1.0", "started": 1700000000.0, "finished": 1700000010.0,
        "guests": {
            f"{URI} 0a9f8d3c-1111-2222-3333-444455556666": {
                "connection": URI, "name": "a", "uuid": "0a9f8d3c-1111-2222-3333-444455556666",
                "outcome": "saved", "persistent": True, "memory_kib": 262144, "image": None,
            }
        },
    }


def _with(**changes) -> dict:
    data = _good_record()
    data.update(changes)
    return data


def _entry_with(**changes) -> dict:
    data = _good_record()
    (entry,) = data["guests"].values()
    entry.update(changes)
    return data


# (label, file contents, a word the error must contain)
UNTRUSTED = [
    ("empty file", b"", "not valid JSON"),
    ("truncated", json.dumps(_good_record()).encode()[:150], "not valid JSON"),
    ("binary garbage", bytes(range(256)) * 4, "not valid JSON"),
    ("zeroed by a crash", b"\0" * 4096, "not valid JSON"),
    ("nested too deep", b"[" * 100000, "not valid JSON"),
    ("a JSON list", b"[1, 2, 3]", "not an mgsave shutdown record"),
    ("another program's file", json.dumps({"format": "other", "guests": {}}).encode(), "not an mgsave"),
    ("a boot record in its place", json.dumps(_good_record("boot")).encode(), "not an mgsave shutdown record"),
    ("written by a newer mgsave", json.dumps(_with(version=2, mgsave_version="9.9")).encode(), "9.9"),
    ("written by an older mgsave", json.dumps(_with(version=0, mgsave_version="0.0.1")).encode(), "format 0"),
    ("no version", json.dumps({k: v for k, v in _good_record().items() if k != "version"}).encode(), "None"),
    ("no guest list", json.dumps(_with(guests=[])).encode(), "no guest list"),
    ("a guest entry cut short", json.dumps(_with(guests={"k": {"name": "a"}})).encode(), "incomplete"),
    ("a guest entry that is not an object", json.dumps(_with(guests={"k": "saved"})).encode(), "incomplete"),
    ("a start time that is not a time", json.dumps(_with(started="yesterday")).encode(), "started"),
    ("a throughput that is not a number", json.dumps(_with(measured_throughput="fast")).encode(),
     "measured_throughput"),
    ("a negative throughput", json.dumps(_with(measured_throughput=-5)).encode(), "measured_throughput"),
    ("a guest name that is not a string", json.dumps(_entry_with(name=42)).encode(), "name"),
    ("a connection that is not a string", json.dumps(_entry_with(connection=["x"])).encode(), "connection"),
    ("a memory size that is not a number", json.dumps(_entry_with(memory_kib="lots")).encode(), "memory_kib"),
    ("an image path that is not a string", json.dumps(_entry_with(image=7)).encode(), "image"),
    ("an entry filed under another guest's key",
     json.dumps(_with(guests={f"{URI} ffffffff-0000-0000-0000-000000000000":
                              _good_record()["guests"][f"{URI} 0a9f8d3c-1111-2222-3333-444455556666"]})).encode(),
     "key"),
]


@pytest.mark.parametrize("label,content,word", UNTRUSTED, ids=[u[0] for u in UNTRUSTED])
def test_an_untrustworthy_record_is_detected(tmp_path, label, content, word):
    path = tmp_path / state.SHUTDOWN_RECORD
    path.write_bytes(content)
    with pytest.raises(state.RecordError) as caught:
        state.read_record(path, "shutdown")
    message = str(caught.value)
    assert str(path) in message, "the error must name the file"
    assert word in message


def test_a_good_record_is_read_and_a_missing_one_is_none(tmp_path):
    path = tmp_path / state.SHUTDOWN_RECORD
    assert state.read_record(path, "shutdown") is None
    path.write_text(json.dumps(_good_record()))
    assert state.read_record(path, "shutdown")["guests"]
    # optional fields may be absent or null
    data = _good_record()
    (entry,) = data["guests"].values()
    for key in ("persistent", "memory_kib", "image"):
        del entry[key]
    data["finished"] = None
    path.write_text(json.dumps(data))
    assert state.read_record(path, "shutdown")["guests"]


def test_an_unreadable_record_is_detected(tmp_path):
    path = tmp_path / state.SHUTDOWN_RECORD
    path.mkdir()  # root reads anything; a directory in the record's place cannot be read
    with pytest.raises(state.RecordError, match="cannot read"):
        state.read_record(path, "shutdown")


# --- the passes with an untrustworthy record ------------------------------------------------


def _saved_pair(hv, run):
    """a and b running, c defined but off; a shutdown pass saves a and b."""
    define(hv, "a", "b")
    define(hv, "c", running=False)
    code, result, _ = run("shutdown")
    assert code == ExitCode.OK
    assert outcomes(result) == {"a": "saved", "b": "saved", "c": "skipped"}
    assert running(hv) == [] and has_image(hv, "a") and has_image(hv, "b")


@pytest.mark.parametrize("label,content,word", UNTRUSTED, ids=[u[0] for u in UNTRUSTED])
def test_boot_falls_back_to_libvirts_saved_images_when_the_record_is_untrustworthy(hv, run, label, content, word):
    _saved_pair(hv, run)
    shutdown_record(run).write_bytes(content)
    code, result, err = run("boot")
    assert code == ExitCode.OK, err
    # a and b have managed-save images, so they were running when saved: resumed. c stays off.
    assert outcomes(result) == {"a": "resumed", "b": "resumed", "c": "skipped"}
    assert running(hv) == ["a", "b"]
    # reported loudly: in the log, with the reason, and in the summary
    assert "ignoring the shutdown record" in err and word in err
    assert any(word in w for w in result["warnings"]), result["warnings"]
    # and the untrusted file is neither trusted nor destroyed
    assert shutdown_record(run).read_bytes() == content


@pytest.mark.parametrize("label,content,word", UNTRUSTED, ids=[u[0] for u in UNTRUSTED])
def test_shutdown_with_an_untrustworthy_record_saves_everything_and_keeps_the_bad_file(hv, run, label, content,
                                                                                       word):
    run.state_dir.mkdir()
    shutdown_record(run).write_bytes(content)
    define(hv, "a", "b")
    code, result, err = run("shutdown")
    assert code == ExitCode.OK, err
    assert outcomes(result) == {"a": "saved", "b": "saved"}
    assert "ignoring the shutdown record" in err
    # the new record is whole and lists both guests ...
    record = state.read_record(shutdown_record(run), "shutdown")
    assert {g["name"]: g["outcome"] for g in record["guests"].values()} == {"a": "saved", "b": "saved"}
    # ... and the bad one was set aside, not overwritten
    kept = sorted(run.state_dir.glob(state.SHUTDOWN_RECORD + ".untrusted-*"))
    assert len(kept) == 1 and kept[0].read_bytes() == content, sorted(run.state_dir.iterdir())
    assert any(str(kept[0]) in w for w in result["warnings"]), result["warnings"]


@pytest.mark.parametrize("content", [
    json.dumps(_with(kind="boot", started="yesterday")).encode(),
    b"{\"format\": \"mgsave-state\", \"kind\": \"boot\", \"ver",
    json.dumps(_with(kind="boot", version=7)).encode(),
], ids=["wrong types", "truncated", "newer"])
def test_an_untrustworthy_boot_record_does_not_stop_the_shutdown_pass(hv, run, content):
    run.state_dir.mkdir()
    (run.state_dir / state.BOOT_RECORD).write_bytes(content)
    define(hv, "a")
    code, result, err = run("shutdown")
    assert code == ExitCode.OK, err
    assert outcomes(result) == {"a": "saved"}


def test_a_record_from_a_newer_mgsave_is_not_trusted_to_skip_guests(hv, run):
    """A newer mgsave's record might list 'a' under a different meaning: libvirt's images decide."""
    _saved_pair(hv, run)
    data = json.loads(shutdown_record(run).read_text())
    data["version"] = state.RECORD_VERSION + 1
    data["mgsave_version"] = "99.0"
    data["guests"] = {}  # in its format, perhaps nothing was running: we must not believe it
    shutdown_record(run).write_text(json.dumps(data))
    code, result, err = run("boot")
    assert code == ExitCode.OK
    assert outcomes(result) == {"a": "resumed", "b": "resumed", "c": "skipped"}
    assert "99.0" in err


def test_status_and_plan_survive_an_untrustworthy_record(hv, run):
    _saved_pair(hv, run)
    shutdown_record(run).write_bytes(b"\0" * 100)
    (run.state_dir / state.BOOT_RECORD).write_text(json.dumps(_with(kind="boot", guests="x")))
    code, result, err = run("status")
    assert code == ExitCode.OK, err
    assert {g["name"]: g["saved_image"] for g in result["guests"]} == {"a": True, "b": True, "c": False}
    code, result, err = run("plan", "boot")
    assert code == ExitCode.OK, err
    (plan,) = result["plans"]
    assert {g["name"]: g["actions"] for g in plan["guests"]} == {"a": ["resume"], "b": ["resume"], "c": ["skip"]}


def test_transient_guests_saved_images_are_restored_even_without_a_usable_record(hv, run):
    """A transient guest exists only in the record and its file under images/: when the record is
    unusable, the file itself (libvirt reads the guest's definition from it) must bring it back."""
    hv.createXML(domain_xml("transient"), 0)
    define(hv, "a")
    code, result, _ = run("shutdown")
    assert outcomes(result) == {"transient": "saved-to-file", "a": "saved"}
    images = list((run.state_dir / "images").iterdir())
    assert len(images) == 1
    shutdown_record(run).write_text("{")
    code, result, err = run("boot")
    assert outcomes(result) == {"transient": "restored", "a": "resumed"}, err
    assert running(hv) == ["a", "transient"]
    assert code == ExitCode.OK
    assert not images[0].exists(), "a restored save file is stale and must not be restored twice"


# --- a state directory that cannot be written -----------------------------------------------


def test_a_state_dir_that_cannot_be_created_does_not_stop_either_pass(hv, tmp_path, capsys):
    """No lock, no record: the guests still matter more. Both passes do their work, say loudly
    what they could not write, and exit 1."""
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where the state directory's parent should be\n")
    state_dir = blocker / "state"
    policy = tmp_path / "policy.yaml"
    policy.write_text(f"version: 1\nconnections: ['{URI}']\n")
    define(hv, "a", "b")

    def run(*args):
        capsys.readouterr()
        code = cli.main([args[0], "--state-dir", str(state_dir), "--policy", str(policy), "--json"])
        out, err = capsys.readouterr()
        return code, json.loads(out), err

    code, result, err = run("shutdown")
    assert outcomes(result) == {"a": "saved", "b": "saved"}, err
    assert running(hv) == []
    assert code == ExitCode.GUEST_FAILED
    assert "without the lock" in err
    assert any("could not be written" in w and state.SHUTDOWN_RECORD in w for w in result["warnings"]), result

    code, result, err = run("boot")
    assert outcomes(result) == {"a": "resumed", "b": "resumed"}, err
    assert running(hv) == ["a", "b"]
    assert code == ExitCode.GUEST_FAILED
    assert any("could not be written" in w and state.BOOT_RECORD in w for w in result["warnings"]), result


FULL_STATE_FS = """
set -e
mount -t tmpfs -o size=64k,mode=0700 mgsave-test-state "$STATE"
dd if=/dev/zero of="$STATE/filler" bs=4096 2>/dev/null || true
exec "$PYTHON" -m libmgsave shutdown --connect test:///default --state-dir "$STATE" --policy "$POLICY" --json
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to mount a private tmpfs")
def test_a_full_state_filesystem_does_not_stop_the_shutdown_pass(tmp_path):
    """The state directory's file system is full (ENOSPC on every write). In a private mount
    namespace, with a fresh test:///default (its sample guest 'test' running)."""
    state_dir = tmp_path / "state"
    state_dir.mkdir()
    policy = tmp_path / "policy.yaml"
    policy.write_text(f"version: 1\nconnections: ['{URI}']\n")
    env = dict(os.environ, STATE=str(state_dir), PYTHON=sys.executable, POLICY=str(policy),
               PYTHONPATH=str(REPO))
    proc = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", FULL_STATE_FS],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    if proc.returncode != 0 and not proc.stdout.strip():
        pytest.fail(f"mgsave gave no summary (exit {proc.returncode}):\n{proc.stderr}")
    result = json.loads(proc.stdout)
    assert outcomes(result) == {"test": "saved"}, proc.stderr
    assert proc.returncode == ExitCode.GUEST_FAILED, proc.stderr
    assert "No space left on device" in proc.stderr
    assert any("could not be written" in w for w in result["warnings"]), result["warnings"]


@pytest.mark.parametrize("outcome,words", [
    ("pending", "was not saved"),
    ("failed", "every step of its shutdown chain failed"),
    ("saved", "there is no saved image for it any more"),
])
def test_boot_says_loudly_when_a_guest_that_was_running_lost_its_memory_state(hv, run, outcome, words):
    """The record says 'a' was running at the last shutdown, but libvirt has no saved image of it
    (its save never finished, or the image went missing): 'a' is booted fresh, and the boot pass
    says that its memory state is lost, in the summary and the log, and exits 1."""
    define(hv, "a", "b")
    run("shutdown")
    hv.lookupByName("a").managedSaveRemove(0)
    data = json.loads(shutdown_record(run).read_text())
    for entry in data["guests"].values():
        if entry["name"] == "a":
            entry["outcome"] = outcome
    shutdown_record(run).write_text(json.dumps(data))
    code, result, err = run("boot")
    assert outcomes(result) == {"a": "booted-fresh", "b": "resumed"}
    assert running(hv) == ["a", "b"]
    assert code == ExitCode.GUEST_DEGRADED
    (a,) = [g for g in result["guests"] if g["name"] == "a"]
    assert a["ok"] is False and any(words in m and "memory state is lost" in m for m in a["messages"]), a
    assert words in err


def test_a_second_boot_pass_does_not_cry_wolf(hv, run):
    """After a boot pass has used the shutdown record, a guest stopped by hand and started by a
    second boot pass is started fresh without any claim that its memory state was lost."""
    define(hv, "a")
    run("shutdown")
    code, result, _ = run("boot")
    assert outcomes(result) == {"a": "resumed"}
    hv.lookupByName("a").destroy()
    code, result, err = run("boot")
    assert outcomes(result) == {"a": "started"}, err
    assert code == ExitCode.OK
    assert "memory state is lost" not in err
