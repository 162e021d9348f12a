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
from libmgsave.state import validation  # noqa: F401  (state.validation)
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
    ("metadata that is not a table of strings", json.dumps(_entry_with(metadata={"k": 1})).encode(), "metadata"),
    ("messages that are not strings", json.dumps(_entry_with(messages=[{"x": 1}])).encode(), "messages"),
    ("steps that are not steps", json.dumps(_entry_with(steps=["save"])).encode(), "steps"),
    ("a planned list that is not a list", json.dumps(_entry_with(planned="save")).encode(), "planned"),
    ("a persistent flag that is a string", json.dumps(_entry_with(persistent="yes")).encode(), "persistent"),
    ("a title that is not a string", json.dumps(_entry_with(title=["t"])).encode(), "title"),
    ("a byte count that is negative", json.dumps(_entry_with(bytes=-1)).encode(), "bytes"),
    ("an outcome mgsave does not know", json.dumps(_entry_with(outcome="teleported")).encode(), "outcome"),
    ("a boot ID that is not a string", json.dumps(_with(boot_id=5)).encode(), "boot_id"),
    ("a finish time that is infinite", b'{"format": "mgsave-state", "kind": "shutdown", "version": 1, "started": 1, '
                                       b'"finished": Infinity, "guests": {}}', "finished"),
    ("a UUID with a path in it",
     json.dumps(_with(guests={f"{URI} ../../etc/x": {"connection": URI, "name": "a", "uuid": "../../etc/x",
                                                      "outcome": "saved"}})).encode(), "not a UUID"),
    ("an image path outside the state directory", json.dumps(_entry_with(image="/etc/shadow")).encode(),
     "a record never names a file elsewhere"),
    ("an image path of another guest", json.dumps(_entry_with(
        image="images/ffffffff-0000-0000-0000-000000000000.save")).encode(), "image"),
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


def test_a_record_that_is_not_a_regular_file_is_untrusted_without_hanging(tmp_path):
    """A FIFO in the record's place would block the reader for ever (inside a shutdown); a
    symlink could make mgsave read (and set aside) a file elsewhere; a device, gigabytes."""
    import threading
    record = tmp_path / state.SHUTDOWN_RECORD
    os.mkfifo(record)
    outcome = []
    reader = threading.Thread(target=lambda: outcome.append(_error_of(record)), daemon=True)
    reader.start()
    reader.join(5)
    assert not reader.is_alive(), "reading a FIFO record hung"
    assert "FIFO" in outcome[0], outcome
    record.unlink()
    good = tmp_path / "elsewhere.json"
    good.write_text(json.dumps(_good_record()))
    record.symlink_to(good)
    assert "symbolic link" in _error_of(record)
    record.unlink()
    record.symlink_to("/dev/zero")
    assert "symbolic link" in _error_of(record)
    record.unlink()
    with open(record, "wb") as big:
        big.truncate(state.validation.MAX_RECORD_BYTES + 1)  # sparse: no disk used
    assert "more than the" in _error_of(record)


def _error_of(path) -> str:
    try:
        state.read_record(path, "shutdown")
    except state.RecordError as error:
        return str(error)
    return "read without an error"


def test_a_fifo_in_the_records_place_does_not_hang_the_passes(hv, run):
    define(hv, "a")
    run.state_dir.mkdir()
    os.mkfifo(shutdown_record(run))
    os.mkfifo(run.state_dir / state.BOOT_RECORD)
    code, result, err = run("shutdown")  # would block for ever in open() before
    assert outcomes(result) == {"a": "saved"}, err
    assert "FIFO" in err
    code, result, err = run("boot")
    assert outcomes(result) == {"a": "resumed"}, err


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
    assert {g["name"]: g["has_saved_image"] for g in result["guests"]} == {"a": True, "b": True, "c": False}
    code, result, err = run("plan", "boot")
    assert code == ExitCode.OK, err
    (plan,) = result["plans"]
    assert {g["name"]: g["actions"] for g in plan["guests"]} == {"a": ["resume"], "b": ["resume"], "c": ["skip"]}


def test_transient_guests_saved_images_without_a_usable_record_are_kept_then_restored_when_asked(hv, run):
    """A transient guest exists only in the record and its file under images/. When the record
    is unusable, a file no record names is not restored on its own word (anyone who could
    spoil the record could have put it there): it is kept and named, and the admin's
    ``boot --restore-unrecorded`` restores it (libvirt reads the guest's definition from it)."""
    hv.createXML(domain_xml("transient"), 0)
    define(hv, "a")
    code, result, _ = run("shutdown")
    assert outcomes(result) == {"transient": "saved-to-file", "a": "saved"}
    images = list((run.state_dir / "images").iterdir())
    assert len(images) == 1
    shutdown_record(run).write_text("{")
    code, result, err = run("boot")
    assert outcomes(result) == {"a": "resumed"}, err
    assert any(str(images[0]) in w and "--restore-unrecorded" in w for w in result["warnings"]), result["warnings"]
    assert images[0].exists(), "kept"
    code, result, err = run("boot", "--restore-unrecorded")
    assert outcomes(result) == {"transient": "restored", "a": "skipped"}, err
    assert running(hv) == ["a", "transient"]
    assert code == ExitCode.OK
    assert not images[0].exists(), "a restored save file is stale and must not be restored twice"


def test_a_save_file_no_record_names_is_restored_when_the_boot_record_knows_its_guest(hv, run):
    """The guest was restored by mgsave at the last boot (the boot record names it) and saved
    again at shutdown; the shutdown record then went bad: mgsave knows the guest, so it comes back."""
    hv.createXML(domain_xml("transient"), 0)
    run("shutdown")
    code, result, _ = run("boot")
    assert outcomes(result) == {"transient": "restored"}
    run("shutdown")
    shutdown_record(run).write_text("{")
    code, result, err = run("boot")
    assert outcomes(result) == {"transient": "restored"}, err
    assert running(hv) == ["transient"]


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


# --- a state directory others can write to --------------------------------------------------


def _planted_record(run, hv) -> None:
    """'c' (defined, off, no saved image) planted in the shutdown record as saved: trusted, it
    would make the boot pass start a guest nobody ran."""
    data = json.loads(shutdown_record(run).read_text())
    c = hv.lookupByName("c")
    key = f"{URI} {c.UUIDString()}"
    data["guests"][key] = {"connection": URI, "name": "c", "uuid": c.UUIDString(), "outcome": "saved"}
    shutdown_record(run).write_text(json.dumps(data))


def test_an_insecure_state_directory_is_not_trusted_and_guests_are_still_saved(hv, run):
    _saved_pair(hv, run)
    _planted_record(run, hv)
    os.chmod(run.state_dir, 0o777)
    code, result, err = run("boot")
    # a and b come back from libvirt's own images; c, named only by the planted record, stays off
    assert outcomes(result) == {"a": "resumed", "b": "resumed", "c": "skipped"}, err
    assert code == ExitCode.GUEST_FAILED
    assert "not safe" in err and "writable by group or others" in err
    assert any("--insecure-state-dir" in w for w in result["warnings"]), result["warnings"]
    code, result, err = run("shutdown")
    assert outcomes(result) == {"a": "saved", "b": "saved", "c": "skipped"}, err
    assert running(hv) == []
    assert code == ExitCode.GUEST_FAILED and "not safe" in err


def test_an_insecure_state_directory_is_trusted_when_asked(hv, run):
    _saved_pair(hv, run)
    os.chmod(run.state_dir, 0o777)
    code, result, err = run("boot", "--insecure-state-dir")
    assert outcomes(result) == {"a": "resumed", "b": "resumed", "c": "skipped"}, err
    assert code == ExitCode.OK


def test_a_save_file_in_an_insecure_state_directory_is_not_restored(hv, run):
    hv.createXML(domain_xml("transient"), 0)
    run("shutdown")
    (image,) = (run.state_dir / "images").iterdir()
    os.chmod(run.state_dir / "images", 0o777)
    code, result, err = run("boot")
    assert "transient" not in outcomes(result), err
    assert image.exists(), "kept for the admin"
    assert code == ExitCode.GUEST_FAILED


def test_a_parent_writable_by_others_makes_the_state_directory_insecure(tmp_path):
    parent = tmp_path / "shared"
    (parent / "state").mkdir(parents=True)
    assert state.StateDir(parent / "state").insecure is None
    os.chmod(parent, 0o777)
    assert "writable by group or others" in state.StateDir(parent / "state").insecure
    os.chmod(parent, 0o1777)  # sticky, like /tmp: nobody else can rename what is not theirs
    assert state.StateDir(parent / "state").insecure is None
    os.chmod(parent / "state", 0o1777)
    assert state.StateDir(parent / "state").insecure is not None


def test_a_relative_state_directory_is_made_absolute(hv, run, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert state.state_dir_from("rel", {}) == tmp_path / "rel"
    assert state.state_dir_from(None, {"STATE_DIRECTORY": "rel2:other"}) == tmp_path / "rel2"
    hv.createXML(domain_xml("transient"), 0)
    policy = run.policy
    code = cli.main(["shutdown", "--state-dir", "rel", "--policy", str(policy), "--json"])
    assert code == ExitCode.OK
    record = state.read_record(tmp_path / "rel" / state.SHUTDOWN_RECORD, "shutdown")
    (entry,) = record["guests"].values()
    assert entry["image"] == str(tmp_path / "rel" / "images" / f"{entry['uuid']}.save")


def test_the_lock_file_is_never_followed_through_a_symlink(hv, run, tmp_path):
    """Writing the holder's name into a lock that is a symlink would truncate the file it names."""
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    run.state_dir.mkdir()
    (run.state_dir / "lock").symlink_to(victim)
    define(hv, "a")
    code, result, err = run("shutdown")
    assert outcomes(result) == {"a": "saved"}, err
    assert victim.read_text() == "precious\n"
    assert "without the lock" in err


@pytest.mark.parametrize("in_the_way", ["file", "symlink"])
def test_something_in_the_place_of_images_is_set_aside_and_the_guest_saved(hv, run, tmp_path, in_the_way):
    """A save never writes through a symlink (root would write the guest's memory wherever it
    points) and never fails for what is in the way: that is set aside, a new directory made."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    run.state_dir.mkdir()
    if in_the_way == "file":
        (run.state_dir / "images").write_text("in the way\n")
    else:
        (run.state_dir / "images").symlink_to(elsewhere)
    hv.createXML(domain_xml("transient"), 0)
    code, result, err = run("shutdown")
    assert outcomes(result) == {"transient": "saved-to-file"}, err
    assert list(elsewhere.iterdir()) == []
    assert (run.state_dir / "images").is_dir() and not (run.state_dir / "images").is_symlink()
    assert len(list(run.state_dir.glob("images.untrusted-*"))) == 1
    code, result, err = run("boot")
    assert outcomes(result) == {"transient": "restored"}, err


# --- transient guests' save files at boot ---------------------------------------------------


def test_a_transient_guest_left_pending_whose_save_completed_is_restored(hv, run):
    """The shutdown pass was killed after the save completed but before the record said so:
    the file is whole, the entry 'pending'. Before: the boot pass dropped the guest silently."""
    hv.createXML(domain_xml("transient"), 0)
    run("shutdown")
    data = json.loads(shutdown_record(run).read_text())
    (entry,) = data["guests"].values()
    entry["outcome"] = "pending"
    shutdown_record(run).write_text(json.dumps(data))
    code, result, err = run("boot")
    assert outcomes(result) == {"transient": "restored"}, err
    assert running(hv) == ["transient"]
    assert "found saved by the interrupted pass" in err


USED_IMAGE_SCRIPT = """
import json, subprocess, sys
import libvirt
from libmgsave import cli
state, policy = sys.argv[1], sys.argv[2]
conn = libvirt.open("test:///default")
for dom in conn.listAllDomains():  # the driver's sample guest: out of the way
    dom.destroy()
    dom.undefine()
conn.createXML("<domain type='test'><name>transient</name><memory>65536</memory>"
               "<os><type>hvm</type></os></domain>", 0)
args = ["--state-dir", state, "--policy", policy, "--json"]
codes = [cli.main(["shutdown", *args])]
images = state + "/images"
subprocess.run(["mount", "--bind", images, images], check=True)
subprocess.run(["mount", "-o", "remount,bind,ro", images], check=True)
codes.append(cli.main(["boot", *args]))
conn.lookupByName("transient").destroy()  # the admin stops it; the stale file is still there
codes.append(cli.main(["boot", *args]))
print(json.dumps(codes), file=sys.stderr)
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root for a read-only bind mount")
def test_a_restored_save_file_that_cannot_be_removed_is_an_error_and_never_restored_again(tmp_path):
    """The images directory is read-only: the used file stays. The boot pass says so as an
    error (exit 1), and its record marks the file used, so that a later boot pass never brings
    the guest back from that stale state."""
    state_dir = tmp_path / "state"
    policy = tmp_path / "policy.yaml"
    policy.write_text(f"version: 1\nconnections: ['{URI}']\n")
    proc = subprocess.run(["unshare", "--mount", "--propagation", "private", sys.executable, "-c",
                           USED_IMAGE_SCRIPT, str(state_dir), str(policy)],
                          cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO)), capture_output=True, text=True,
                          timeout=120)
    summaries = [json.loads(chunk) for chunk in proc.stdout.replace("}\n{", "}\n\0{").split("\0")]
    codes = json.loads(proc.stderr.strip().splitlines()[-1])
    assert [outcomes(s) for s in summaries] == [{"transient": "saved-to-file"}, {"transient": "restored"}, {}], \
        proc.stderr
    assert codes[1] == ExitCode.GUEST_FAILED, proc.stderr
    assert any("could not be removed" in w for w in summaries[1]["warnings"]), summaries[1]["warnings"]
    assert any("stale; not restored again" in w for w in summaries[2]["warnings"]), summaries[2]["warnings"]
    boot = state.read_record(state_dir / state.BOOT_RECORD, "boot")
    assert boot is not None


# --- the boot a record belongs to -----------------------------------------------------------


def test_a_shutdown_record_of_an_earlier_boot_is_not_continued(hv, run):
    """A record left from days ago: its boot pass died before writing a record, then the admin
    shut 'a' down by hand. Continued by the next shutdown pass, it made 'a' (if-running) start
    at the next boot. Only a record of this boot of the host (the kernel's boot ID) is continued."""
    define(hv, "a", "b")
    run("shutdown")
    data = json.loads(shutdown_record(run).read_text())
    assert data["boot_id"] == state.records.current_boot_id()
    data["boot_id"] = "0f0f0f0f-0000-4000-8000-000000000000"  # an earlier boot
    shutdown_record(run).write_text(json.dumps(data))
    for name in ("a", "b"):
        hv.lookupByName(name).managedSaveRemove(0)
    hv.lookupByName("b").create()  # b runs now; a was stopped by the admin
    code, result, err = run("shutdown")
    assert outcomes(result) == {"a": "skipped", "b": "saved"}, err
    assert "earlier boot of the host" in err
    record = state.read_record(shutdown_record(run), "shutdown")
    assert {e["name"] for e in record["guests"].values()} == {"b"}
    code, result, err = run("boot")
    assert outcomes(result) == {"a": "skipped", "b": "resumed"}, err
    assert running(hv) == ["b"]


def test_a_shutdown_record_of_this_boot_is_continued(hv, run):
    """A pass killed half-way and run again (same boot) still knows which guests were running."""
    define(hv, "a", "b")
    run("shutdown")
    data = json.loads(shutdown_record(run).read_text())
    for entry in data["guests"].values():
        entry["outcome"] = "pending"  # killed before it recorded anything
    shutdown_record(run).write_text(json.dumps(data))
    code, result, err = run("shutdown")
    assert outcomes(result) == {"a": "skipped", "b": "skipped"}, err
    record = state.read_record(shutdown_record(run), "shutdown")
    assert {e["name"]: e["outcome"] for e in record["guests"].values()} == {"a": "saved", "b": "saved"}


def test_a_record_read_through_another_spelling_of_the_state_path_is_still_trusted(hv, run, tmp_path):
    """The state directory reached through a symlink (a moved /var/lib): the record's image names
    the same file under the other path, so the transient guest is still restored from it."""
    hv.createXML(domain_xml("transient"), 0)
    run("shutdown")
    alias = tmp_path / "alias"
    alias.symlink_to(run.state_dir)
    code = cli.main(["boot", "--state-dir", str(alias), "--policy", str(run.policy)])
    assert code == ExitCode.OK
    assert running(hv) == ["transient"]


def test_check_warns_about_an_insecure_state_directory(hv, run):
    run.state_dir.mkdir()
    code, result, err = run("check")
    assert not any("not safe" in w["message"] for w in result["warnings"])
    os.chmod(run.state_dir, 0o777)
    code, result, err = run("check")
    assert code == ExitCode.OK
    assert any("not safe" in w["message"] and str(run.state_dir) in w["message"] for w in result["warnings"]), \
        result["warnings"]
