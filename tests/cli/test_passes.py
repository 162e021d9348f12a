"""The shutdown and boot passes, run through the real CLI in-process against libvirt's test driver.

``test:///default`` keeps its guests only while a connection to it is open in the process, so
the ``hv`` fixture holds one for the whole test; every ``mgsave`` run opens its own.
"""

import hashlib
import json
import os
import re
import threading
from pathlib import Path

import libvirt
import pytest

from libmgsave import cli, lock, state
from libmgsave.errors import ExitCode
from tests.testdriver import URI, define, domain_xml, has_image, hv, running  # noqa: F401



@pytest.fixture
def run(tmp_path, capsys):
    state_dir = tmp_path / "state"

    def run_mgsave(*args, policy: str | None = None):
        argv = ["--connect", URI, "--state-dir", str(state_dir), "--json"]
        if policy is not None:
            path = tmp_path / "policy.yaml"
            path.write_text(policy)
            os.chmod(path, 0o644)
            argv += ["--policy", str(path)]
        capsys.readouterr()
        code = cli.main(argv + list(args))
        out, err = capsys.readouterr()
        return code, (json.loads(out) if out.strip() else None), err

    run_mgsave.state_dir = state_dir
    return run_mgsave


POLICY = """
version: 1
guests:
  - match: {name: "always-*"}
    autostart: always
  - match: {name: "never-*"}
    autostart: never
  - match: {name: "web*"}
    order: 10
    after: [db]
"""


def test_shutdown_saves_every_running_guest_and_boot_follows_autostart(hv, run):
    define(hv, "db", "web1", "always-on", "never-on", "ifr-off", running=True)
    hv.lookupByName("ifr-off").destroy()
    define(hv, "always-off", running=False)

    code, result, _ = run("shutdown", policy=POLICY)
    assert code == ExitCode.OK
    outcomes = {g["name"]: g["outcome"] for g in result["guests"]}
    assert outcomes == {"db": "saved", "web1": "saved", "always-on": "saved", "never-on": "saved",
                        "ifr-off": "skipped", "always-off": "skipped"}
    assert running(hv) == []
    assert all(has_image(hv, n) for n in ("db", "web1", "always-on", "never-on"))
    record = json.loads((run.state_dir / state.SHUTDOWN_RECORD).read_text())
    assert {g["name"] for g in record["guests"].values()} == {"db", "web1", "always-on", "never-on"}
    assert record["finished"] is not None

    code, result, _ = run("boot", policy=POLICY)
    assert code == ExitCode.OK
    outcomes = {g["name"]: g["outcome"] for g in result["guests"]}
    assert outcomes == {"db": "resumed", "web1": "resumed", "always-on": "resumed", "always-off": "started",
                        "never-on": "skipped", "ifr-off": "skipped"}
    assert running(hv) == ["always-off", "always-on", "db", "web1"]
    assert has_image(hv, "never-on"), "a 'never' guest keeps its saved state"
    starts = {g["name"]: g["steps"][0]["started"] for g in result["guests"] if g["steps"]}
    assert starts["web1"] >= max(starts[n] for n in ("db", "always-on", "always-off"))

    # A second boot pass changes nothing.
    code, result, _ = run("boot", policy=POLICY)
    assert code == ExitCode.OK
    assert {g["outcome"] for g in result["guests"]} == {"skipped"}
    assert running(hv) == ["always-off", "always-on", "db", "web1"]


def test_shutdown_order_and_after_are_honoured(hv, run):
    define(hv, "db", "web1", "web2", "dns")
    policy = POLICY + "  - match: {name: dns}\n    order: -5\n"
    code, result, _ = run("shutdown", policy=policy)
    assert code == ExitCode.OK
    ends = {g["name"]: g["finished"] for g in result["guests"]}
    starts = {g["name"]: g["steps"][0]["started"] for g in result["guests"]}
    # web* (order 10) go down before db (order 0, and web* are after it), dns (order -5) last
    assert starts["db"] >= max(ends["web1"], ends["web2"])
    assert starts["dns"] >= ends["db"]


def test_dry_run_changes_nothing(hv, run):
    define(hv, "a", "b")
    code, result, _ = run("shutdown", "--dry-run")
    assert code == ExitCode.OK
    assert result["dry_run"] is True
    assert {g["outcome"] for g in result["guests"]} == {"planned"}
    assert running(hv) == ["a", "b"]
    assert not (run.state_dir / state.SHUTDOWN_RECORD).exists()


def test_the_fallback_chain_runs_when_a_save_fails(hv, run, tmp_path):
    # A transient guest is saved to <state>/images/; make that impossible, so 'shutdown' must follow.
    dom = hv.createXML(domain_xml("transient"), 0)
    (run.state_dir / "images" / f"{dom.UUIDString()}.save").mkdir(parents=True)  # in the way
    code, result, _ = run("shutdown")
    (g,) = result["guests"]
    assert [(s["action"], s["ok"]) for s in g["steps"]] == [("save-to-file", False), ("shutdown", True)]
    assert g["outcome"] == "shut-down"
    # its memory state is gone: handled, but not as the policy's first choice
    assert (g["severity"], g["first_choice"], g["achieved_by"]) == ("degraded", "save-to-file", "shutdown")
    assert result["severity"] == "degraded" and result["degraded"] == ["transient"] and result["ok"] is False
    assert code == ExitCode.GUEST_DEGRADED


def _raises_once(monkeypatch, cls, method: str, error: type[Exception], text: str) -> None:
    """``cls.method`` raises ``error(text)`` the first time it is called, as a bug or a library's
    surprise would (injected: nothing real raises anything but libvirt's errors there on demand).
    A new exception each time: one kept by the test would keep its traceback's libvirt
    connections, and the test driver's guests, alive into the next test."""
    real = getattr(cls, method)
    calls = []

    def once(self, *args, **kwargs):
        calls.append(method)
        if len(calls) == 1:
            raise error(text)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(cls, method, once)


def test_a_step_that_raises_unexpectedly_leads_to_the_next_step_of_the_chain(hv, run, monkeypatch):
    from libmgsave.hypervisor import Guest

    define(hv, "a")
    _raises_once(monkeypatch, Guest, "save_memory_state", RuntimeError, "surprise")
    code, result, err = run("shutdown")
    (g,) = result["guests"]
    assert [(s["action"], s["ok"]) for s in g["steps"]] == [("save", False), ("shutdown", True)]
    assert "internal error: RuntimeError('surprise')" in g["steps"][0]["error"]
    assert (g["outcome"], g["severity"]) == ("shut-down", "degraded") and running(hv) == []
    assert "Traceback" in err  # the surprise is logged in full, for the bug report
    assert code == ExitCode.GUEST_DEGRADED


def test_a_resume_that_raises_unexpectedly_is_a_failed_resume(hv, run, monkeypatch):
    """The boot pass's chain: a resume that fails goes on to what the policy says for a failed
    resume; the saved state is not discarded when it cannot be set aside first."""
    from libmgsave.hypervisor import Guest

    define(hv, "a")
    assert run("shutdown")[0] == ExitCode.OK and has_image(hv, "a")
    _raises_once(monkeypatch, Guest, "start", RuntimeError, "surprise")
    code, result, _ = run("boot")
    (g,) = result["guests"]
    assert [(s["action"], s["ok"]) for s in g["steps"]] == [("resume", False)]
    assert "internal error: RuntimeError('surprise')" in g["steps"][0]["error"]
    # the test driver's images are in memory, so there is nothing to set aside: it is left off
    assert g["outcome"] == "left-off" and has_image(hv, "a") and running(hv) == []
    assert code == ExitCode.GUEST_DEGRADED


def test_transient_guests_are_saved_to_a_file_and_restored(hv, run):
    hv.createXML(domain_xml("transient"), 0)
    code, result, _ = run("shutdown")
    assert code == ExitCode.OK
    (g,) = result["guests"]
    assert g["outcome"] == "saved-to-file"
    image = run.state_dir / "images" / f"{g['uuid']}.save"
    assert image.exists()
    assert running(hv) == []
    code, result, _ = run("boot")
    assert code == ExitCode.OK
    assert [x["outcome"] for x in result["guests"]] == ["restored"]
    assert running(hv) == ["transient"]
    assert not image.exists(), "a restored save file is stale and must not be restored twice"


def test_a_broken_policy_at_shutdown_still_saves_every_guest(hv, run):
    define(hv, "a", "b")
    code, result, err = run("shutdown", policy="version: 1\ndefaults:\n  autostart: sometimes\n")
    assert {g["outcome"] for g in result["guests"]} == {"saved"}
    assert running(hv) == []
    assert "policy.yaml:3" in err
    assert "built-in safe defaults" in err
    assert any("policy.yaml:3" in w for w in result["warnings"])
    # every guest got the built-in defaults' first choice, but not what the admin wrote: the
    # pass says so, and does not exit 0
    assert {g["severity"] for g in result["guests"]} == {"ok"}
    assert result["on_builtin_defaults"] is True and result["severity"] == "degraded"
    assert any(p["file"].endswith("policy.yaml") and p["line"] == 3 for p in result["policy_problems"])
    assert code == ExitCode.GUEST_DEGRADED


def test_check_reports_every_problem_with_its_location(run, tmp_path, capsys):
    path = tmp_path / "bad.yaml"
    path.write_text("version: 1\ndefaults:\n  autostrat: always\n  order: high\n")
    os.chmod(path, 0o644)
    code = cli.main(["--policy", str(path), "check"])
    err = capsys.readouterr().err
    assert code == ExitCode.BAD_INPUT
    assert f"{path}:3:3" in err and "autostart" in err  # did you mean
    assert f"{path}:4:" in err


def test_check_warns_when_libvirt_autostart_fights_the_policy(hv, run):
    define(hv, "a")
    hv.lookupByName("a").setAutostart(1)
    code, result, _ = run("check")
    assert code == ExitCode.OK
    assert any("a: libvirt's autostart flag is set" in w["message"] for w in result["warnings"])


def test_status_reports_images_and_last_results(hv, run):
    define(hv, "a", "b")
    run("shutdown")
    code, result, _ = run("status")
    assert code == ExitCode.OK
    rows = {g["name"]: g for g in result["guests"]}
    assert rows["a"]["has_saved_image"] is True and rows["a"]["last_shutdown_outcome"] == "saved"
    assert rows["a"]["state"] == "shut-off"
    assert rows["a"]["autostart"] == "if-running"


def test_plan_shows_both_passes(hv, run):
    define(hv, "a")
    code, result, _ = run("plan")
    assert code == ExitCode.OK
    assert [p["pass"] for p in result["plans"]] == ["shutdown", "boot"]
    assert result["plans"][0]["guests"][0]["actions"] == ["save", "shutdown", "poweroff"]


def test_a_second_pass_fails_clearly_while_one_runs(hv, run, tmp_path):
    define(hv, "a")
    held = threading.Event()
    release = threading.Event()

    def hold():
        with lock.pass_lock(run.state_dir, "test holder", wait=0):
            held.set()
            release.wait(10)

    t = threading.Thread(target=hold)
    t.start()
    held.wait(5)
    try:
        code, _, err = run("shutdown", "--wait", "0.5")
    finally:
        release.set()
        t.join()
    assert code == ExitCode.BUSY
    assert "another mgsave pass is running" in err and "test holder" in err
    assert running(hv) == ["a"]


def test_a_rerun_after_an_interrupted_shutdown_keeps_the_record_of_running_guests(hv, run):
    define(hv, "a", "b")
    # First pass handles only 'a' (as if it was killed before 'b' was done): simulate by saving
    # 'b' by hand after a pass that saw both running.
    code, _, _ = run("shutdown", "--dry-run")
    hv.lookupByName("b").managedSave(0)
    code, result, _ = run("shutdown")
    record = json.loads((run.state_dir / state.SHUTDOWN_RECORD).read_text())
    assert {g["name"] for g in record["guests"].values()} == {"a"}
    # ...and a rerun of the pass (nothing running any more) keeps 'a' in the record.
    code, result, _ = run("shutdown")
    record = json.loads((run.state_dir / state.SHUTDOWN_RECORD).read_text())
    assert {g["name"]: g["outcome"] for g in record["guests"].values()} == {"a": "saved"}


def node_xml(tmp_path: Path, count: int) -> str:
    """A test-driver node file with ``count`` running guests; every 10th has a title and metadata."""
    domains = []
    for i in range(count):
        extra = ""
        if i % 10 == 0:
            extra = ("<title>prod database</title><metadata><m:policy xmlns:m='https://example.org/mgsave'>"
                     "tier=db</m:policy></metadata>")
        domains.append(f"<domain type='test'><name>g{i:04d}</name>{extra}<memory>131072</memory>"
                       f"<os><type>hvm</type></os></domain>")
    path = tmp_path / "node.xml"
    path.write_text("<node>" + "".join(domains) + "</node>")
    return f"test://{path}"


def test_many_guests_from_a_node_file_are_all_saved(tmp_path, capsys):
    uri = node_xml(tmp_path, 200)
    policy = tmp_path / "policy.yaml"
    policy.write_text("""
version: 1
limits: {max_parallel_saves: 8}
guests:
  - name: prod by title
    match: {title: "*prod*"}
    order: 5
  - name: db tier by metadata
    match: {metadata: {namespace: "https://example.org/mgsave", text: "tier=db"}}
    priority: 7
""")
    os.chmod(policy, 0o644)
    common = ["--connect", uri, "--policy", str(policy), "--state-dir", str(tmp_path / "s"), "--json"]
    assert cli.main(common + ["plan", "shutdown"]) == ExitCode.OK
    plan = json.loads(capsys.readouterr().out)["plans"][0]
    guests = {g["name"]: g for g in plan["guests"]}
    assert len(guests) == 200
    order, priority = guests["g0010"]["settings"]["order"], guests["g0010"]["settings"]["priority"]
    assert (order["value"], order["from"]) == (5, "guests[0] (prod by title)") and order["line"] > 0
    assert (priority["value"], priority["from"]) == (7, "guests[1] (db tier by metadata)")
    assert priority["line"] > order["line"]
    assert guests["g0011"]["settings"]["order"]["from"] == "built-in"
    # order 5 goes down first
    assert [g["name"] for g in plan["guests"][:20]] == [f"g{i:04d}" for i in range(0, 200, 10)]

    # One process, one connection: the pass sees the node file's guests and saves them all.
    assert cli.main(common + ["shutdown"]) == ExitCode.OK
    result = json.loads(capsys.readouterr().out)
    assert len(result["guests"]) == 200
    assert {g["outcome"] for g in result["guests"]} == {"saved"}
    record = json.loads((tmp_path / "s" / state.SHUTDOWN_RECORD).read_text())
    assert len(record["guests"]) == 200 and {g["outcome"] for g in record["guests"].values()} == {"saved"}


def test_more_dependent_guests_than_threads_do_not_deadlock(hv, run, monkeypatch):
    # At boot, 40 guests are all 'after' the one that sorts last, and there are only 4 threads:
    # in plan order the 4 threads would all go to guests waiting for one still queued.
    from libmgsave.execute import scheduler

    monkeypatch.setattr(scheduler, "MAX_WORKERS", 4)
    names = [f"g{i:04d}" for i in range(40)]
    define(hv, *names, running=False)
    policy = "version: 1\ndefaults:\n  autostart: always\n  after: [g0039]\n"
    done = []
    t = threading.Thread(target=lambda: done.append(run("boot", policy=policy)), daemon=True)
    t.start()
    t.join(60)
    assert done and done[0][0] == ExitCode.OK, "the pass did not finish: deadlock"
    result = done[0][1]
    started = {g["name"]: g["steps"][0]["started"] for g in result["guests"]}
    assert min(v for k, v in started.items() if k != "g0039") >= started["g0039"]
    assert running(hv) == names


def test_a_dry_run_says_what_would_happen_and_exits_as_the_pass_would(hv, tmp_path, capsys):
    """11 s of deadline, 10 kept in reserve: the 256 MiB guest's save cannot fit, it would be shut
    down. The dry run says 'would', never 'reached', and exits as the real pass would: degraded."""
    define(hv, "late")
    argv = ["--connect", URI, "--state-dir", str(tmp_path / "state"), "shutdown", "--dry-run", "--deadline", "11"]
    capsys.readouterr()
    code = cli.main(argv)
    out = " ".join(capsys.readouterr().out.split())  # lines wrapped at 80 columns
    assert "reached" not in out, out
    assert "1 of 1 guests would be DEGRADED (not their first choice): late (shutdown instead of save)" in out, out
    assert code == ExitCode.GUEST_DEGRADED
    assert running(hv) == ["late"]
    code = cli.main(argv[:-2])
    out = capsys.readouterr().out
    assert out.splitlines()[-1] == "the 1 guest would get its first choice", out
    assert code == ExitCode.OK


@pytest.mark.parametrize(("args", "words"), [
    (["shutdown", "--deadline", "inf"], "--deadline: must be a finite duration, not 'inf'"),
    (["shutdown", "--deadline", "nan"], "--deadline: must be a finite duration"),
    (["shutdown", "--deadline", "-60"], "--deadline: must be longer than the 10 s kept back"),
    (["shutdown", "--deadline", "10"], "--deadline: must be longer than the 10 s kept back"),
    (["shutdown", "--deadline", "1e12"], "--deadline: must be at most 7 days (604800 s)"),
    (["shutdown", "--deadline", "soon"], "--deadline: not a duration: 'soon'"),
    (["boot", "--wait", "-1"], "--wait: must not be negative"),
    (["boot", "--wait", "inf"], "--wait: must be a finite duration"),
])
def test_durations_on_the_command_line_are_checked(hv, run, capsys, args, words):
    define(hv, "a")
    with pytest.raises(SystemExit) as exited:
        cli.main(["--connect", URI, "--state-dir", str(run.state_dir), *args])
    assert exited.value.code == ExitCode.BAD_INPUT
    assert words in capsys.readouterr().err
    assert running(hv) == ["a"], "nothing was done"


def test_durations_on_the_command_line_take_units_and_wait_may_be_0(hv, run):
    define(hv, "a")
    code, result, _ = run("shutdown", "--deadline", "15m", "--wait", "0")
    assert code == ExitCode.OK and result["severity"] == "ok"


def test_a_huge_ready_delay_is_a_policy_problem_not_a_crash_of_the_boot_pass(hv, run):
    """``ready: 99999999999999h`` looked valid and crashed the boot pass with OverflowError
    when it slept on it. It is a policy problem now: the pass runs on the built-in defaults."""
    define(hv, "db", "web")
    policy = ("version: 1\nguests:\n  - match: {name: db}\n    ready: 99999999999999h\n"
              "  - match: {name: web}\n    after: [db]\n")
    run("shutdown")
    code, result, err = run("boot", policy=policy)
    assert {g["name"]: g["outcome"] for g in result["guests"]} == {"db": "resumed", "web": "resumed"}
    assert result["on_builtin_defaults"] is True
    assert any(p["path"] == "guests[0].ready" and "at most 7 days" in p["message"]
               for p in result["policy_problems"]), result
    assert "OverflowError" not in err and "internal error" not in err
    assert code == ExitCode.GUEST_DEGRADED


def test_a_pass_on_the_test_driver_teaches_the_planner_no_save_rate(hv, run, capsys):
    """Before, one shutdown pass on test:///default taught the planner hundreds of GB/s (its
    saves take microseconds), and the next real deadline plan was wrong a thousandfold."""
    define(hv, *(f"g{i}" for i in range(8)))
    code, _, _ = run("shutdown")
    assert code == ExitCode.OK
    record = json.loads((run.state_dir / state.SHUTDOWN_RECORD).read_text())
    assert record["save_rates"] == {}
    run("boot")
    _, plan, _ = run("plan", "shutdown")
    (shutdown_plan,) = plan["plans"]
    rate = shutdown_plan["save_rates"][URI]
    assert rate["bytes_per_second"] == 200e6 and "test driver" in rate["source"], rate
    capsys.readouterr()
    cli.main(["--connect", URI, "--state-dir", str(run.state_dir), "plan", "shutdown"])
    out = " ".join(capsys.readouterr().out.split())  # lines wrapped at 80 columns
    assert f"estimates on {URI} assume 191 MiB/s: built-in default (libvirt's test driver" in out, out


# --- a broken policy at pass time: its last valid copy -------------------------------------------

KEEP_OFF = """\
version: 1
guests:
  - match: {name: keep-off}
    autostart: never
"""
# The same rule with a typo: the file is broken
BROKEN = KEEP_OFF.replace("autostart: never", "autostart: nevr")


def test_a_broken_policy_at_boot_runs_on_its_last_valid_copy(hv, run):
    define(hv, "keep-off", "web")
    code, result, _ = run("shutdown", policy=KEEP_OFF)
    assert code == ExitCode.OK and result["policy_used"]["origin"] == "file"
    [copy] = run.state_dir.glob("last-valid-policy-*.json")
    assert copy.stat().st_mode & 0o777 == 0o600, "the copy is root's alone"

    code, result, err = run("boot", policy=BROKEN)
    used = result["policy_used"]
    assert used["origin"] == "last-valid-copy" and used["copy_digest"] == \
        "sha256:" + hashlib.sha256(KEEP_OFF.encode()).hexdigest()
    assert running(hv) == ["web"], "the guest the admin wants off stays off"
    assert {g["name"]: g["outcome"] for g in result["guests"]}["web"] == "resumed"
    assert has_image(hv, "keep-off"), "its saved state is kept for a manual start"
    assert result["on_builtin_defaults"] is False and result["severity"] == "degraded"
    assert any(p["line"] == 4 for p in result["policy_problems"])
    assert "carrying on with its last valid copy" in err and "policy.yaml:4" in err
    assert code == ExitCode.GUEST_DEGRADED
    # plan and status show the same choice
    for command in ("plan", "status"):
        code, shown, _ = run(command, policy=BROKEN)
        assert shown["policy_used"] == used, command
        assert any("last valid copy" in w for w in shown["warnings"]), command


def test_the_summary_and_the_journal_say_a_pass_ran_on_the_last_valid_copy(hv, tmp_path, capsys):
    define(hv, "a")
    state_dir, policy = tmp_path / "state", tmp_path / "policy.yaml"
    policy.write_text(KEEP_OFF)
    os.chmod(policy, 0o644)
    argv = ["--connect", URI, "--state-dir", str(state_dir), "--policy", str(policy)]
    assert cli.main([*argv, "check"]) == ExitCode.OK
    policy.write_text(BROKEN)
    code = cli.main([*argv, "shutdown"])
    out, err = capsys.readouterr()
    assert code == ExitCode.GUEST_DEGRADED
    assert "this pass ran on its last valid copy (kept " in " ".join(out.split())
    assert re.search(r"shutdown pass ends: .*; it ran on the last valid copy of .*policy\.yaml \(kept .*, "
                     r"sha256:[0-9a-f]{12}\): the policy file is broken", err), err


def test_a_broken_policy_without_a_valid_copy_runs_on_the_built_in_defaults(hv, run):
    define(hv, "keep-off", "web")
    code, result, _ = run("shutdown", policy=BROKEN)
    assert result["policy_used"] == {"origin": "built-in", "path": str(run.state_dir.parent / "policy.yaml"),
                                     "copy_saved": None, "copy_digest": None, "copy_refused": None}
    assert result["on_builtin_defaults"] is True and code == ExitCode.GUEST_DEGRADED
    assert not list(run.state_dir.glob("last-valid-policy-*")), "a broken file is never kept"
    code, result, _ = run("boot", policy=BROKEN)
    assert running(hv) == ["keep-off", "web"], "the built-in defaults resume what was running"
    assert result["policy_used"]["origin"] == "built-in" and code == ExitCode.GUEST_DEGRADED


@pytest.mark.parametrize("damage", ["edited", "writable by others", "a symlink", "insecure state directory"])
def test_a_last_valid_copy_that_cannot_be_trusted_is_not_used(hv, run, tmp_path, damage):
    define(hv, "keep-off")
    assert run("shutdown", policy=KEEP_OFF)[0] == ExitCode.OK
    [copy] = run.state_dir.glob("last-valid-policy-*.json")
    if damage == "edited":  # someone changed the rule in it: the digest no longer matches
        copy.write_text(copy.read_text().replace("autostart: never", "autostart: always"))
    elif damage == "writable by others":
        copy.chmod(0o666)
    elif damage == "a symlink":
        elsewhere = tmp_path / "elsewhere.json"
        copy.rename(elsewhere)
        copy.symlink_to(elsewhere)
    else:
        run.state_dir.chmod(0o777)
    code, result, err = run("boot", policy=BROKEN)
    assert result["policy_used"]["origin"] == "built-in", err
    assert result["policy_used"]["copy_refused"], "why the copy was not used"
    assert "its last valid copy" in err and code != ExitCode.OK


def test_the_last_valid_copy_is_kept_by_check_and_replaced_only_by_another_valid_version(hv, run):
    define(hv, "a")
    assert run("check", policy=KEEP_OFF)[0] == ExitCode.OK
    [path] = run.state_dir.glob("last-valid-policy-*.json")
    first = json.loads(path.read_text())
    assert (first["accepted_by"], first["policy"]) == ("mgsave check", KEEP_OFF)
    assert run("shutdown", "--dry-run", policy=KEEP_OFF.replace("never", "always"))[0] == ExitCode.OK
    assert run("shutdown", policy=KEEP_OFF)[0] == ExitCode.OK
    assert json.loads(path.read_text()) == first, "a dry run keeps nothing; the same bytes keep their first time"
    assert run("shutdown", policy=BROKEN)[0] == ExitCode.GUEST_DEGRADED
    assert json.loads(path.read_text()) == first, "a broken file never replaces the copy"
    assert run("boot", policy=KEEP_OFF.replace("never", "always"))[0] == ExitCode.OK
    latest = json.loads(path.read_text())
    assert latest["accepted_by"] == "the boot pass" and "always" in latest["policy"]
