"""The metrics file after real passes on libvirt's test driver, read back by Prometheus' own parser."""

import json
import os
import stat
import threading

import pytest
from prometheus_client.parser import text_string_to_metric_families

from libmgsave import cli, jsonout
from libmgsave.errors import ExitCode
from tests.testdriver import URI, define, domain_xml, hv  # noqa: F401


def _run(tmp_path, capsys, *args, textfile):
    policy = tmp_path / "policy.yaml"
    policy.write_text(f"version: 1\nmetrics:\n  textfile: {textfile}\n")
    os.chmod(policy, 0o644)
    capsys.readouterr()
    code = cli.main(["--connect", URI, "--state-dir", str(tmp_path / "state"), "--policy", str(policy),
                     "--json", *args])
    out, err = capsys.readouterr()
    return code, json.loads(out), err


def _samples(path):
    """{(family, frozenset(labels)): value}, as Prometheus reads the file."""
    found = {}
    for family in text_string_to_metric_families(path.read_text()):
        assert family.type == "gauge" and family.documentation, family.name
        for sample in family.samples:
            found[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return found


def test_each_pass_writes_its_metrics_and_keeps_the_other_passs(hv, tmp_path, capsys):
    define(hv, "a", "b")
    define(hv, "off", running=False)
    textfile = tmp_path / "mgsave.prom"

    code, shutdown, _ = _run(tmp_path, capsys, "shutdown", textfile=textfile)
    assert code == ExitCode.OK
    assert stat.S_IMODE(textfile.stat().st_mode) == 0o644, "node_exporter does not run as root"
    samples = _samples(textfile)
    at = {("pass", "shutdown")}
    assert samples[("mgsave_pass_guests", frozenset(at | {("outcome", "saved")}))] == 2
    assert samples[("mgsave_pass_guests", frozenset(at | {("outcome", "skipped")}))] == 1
    assert samples[("mgsave_pass_guests", frozenset(at | {("outcome", "failed")}))] == 0
    assert samples[("mgsave_pass_success", frozenset(at))] == 1
    assert abs(samples[("mgsave_pass_duration_seconds", frozenset(at))] - shutdown["duration_seconds"]) < 0.01
    finished = jsonout.epoch(shutdown["finished"])
    assert abs(samples[("mgsave_pass_last_run_timestamp_seconds", frozenset(at))] - finished) < 1e-5
    for guest in shutdown["guests"]:
        who = frozenset(at | {("connection", URI), ("guest", guest["name"])})
        if guest["outcome"] == "skipped":
            assert ("mgsave_guest_seconds", who) not in samples
            continue
        assert abs(samples[("mgsave_guest_seconds", who)] - guest["duration_seconds"]) < 0.001
        assert samples[("mgsave_guest_bytes", who)] == guest["written_bytes"]
        assert samples[("mgsave_guest_ok", who)] == 1

    code, boot, _ = _run(tmp_path, capsys, "boot", textfile=textfile)
    assert code == ExitCode.OK
    after_boot = _samples(textfile)
    shutdown_samples = {k: v for k, v in samples.items() if ("pass", "shutdown") in k[1]}
    assert {k: v for k, v in after_boot.items() if ("pass", "shutdown") in k[1]} == shutdown_samples
    assert after_boot[("mgsave_pass_guests", frozenset({("pass", "boot"), ("outcome", "resumed")}))] == 2
    boot_finished = jsonout.epoch(boot["finished"])
    assert abs(after_boot[("mgsave_pass_last_run_timestamp_seconds", frozenset({("pass", "boot")}))]
               - boot_finished) < 1e-5
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".mgsave.prom")], "no temporary file left"


def test_a_dry_run_writes_no_metrics(hv, tmp_path, capsys):
    define(hv, "a")
    textfile = tmp_path / "mgsave.prom"
    code, _, _ = _run(tmp_path, capsys, "shutdown", "--dry-run", textfile=textfile)
    assert code == ExitCode.OK
    assert not textfile.exists()


def test_a_metrics_file_that_cannot_be_written_never_stops_the_pass(hv, tmp_path, capsys):
    define(hv, "a")
    textfile = tmp_path / "no-such-directory" / "mgsave.prom"
    code, result, err = _run(tmp_path, capsys, "shutdown", textfile=textfile)
    assert code == ExitCode.OK
    assert [g["outcome"] for g in result["guests"]] == ["saved"]
    assert f"cannot write the metrics file {textfile}" in err


def test_a_broken_policy_still_writes_its_metrics(hv, tmp_path, capsys):
    define(hv, "a")
    textfile = tmp_path / "mgsave.prom"
    policy = tmp_path / "policy.yaml"
    policy.write_text(f"version: 1\nmetrics:\n  textfile: {textfile}\ndefaults:\n  autostart: sometimes\n")
    os.chmod(policy, 0o644)
    code = cli.main(["--connect", URI, "--state-dir", str(tmp_path / "state"), "--policy", str(policy), "shutdown"])
    assert code == ExitCode.GUEST_DEGRADED  # saved, but on the built-in defaults: the policy is broken
    samples = _samples(textfile)
    assert samples[("mgsave_pass_guests", frozenset({("pass", "shutdown"), ("outcome", "saved")}))] == 1
    assert samples[("mgsave_pass_success", frozenset({("pass", "shutdown")}))] == 0


def test_evacuate_and_return_write_their_own_samples_and_keep_the_passes(hv, tmp_path, capsys):
    hv.defineXML(domain_xml("a", memory_kib=2048)).create()  # fits in the driver's free memory
    textfile = tmp_path / "mgsave.prom"
    code, _, _ = _run(tmp_path, capsys, "shutdown", textfile=textfile)
    assert code == ExitCode.OK
    code, _, _ = _run(tmp_path, capsys, "boot", textfile=textfile)
    assert code == ExitCode.OK
    passes = _samples(textfile)
    # The test driver cannot migrate: "a" stays (degraded), which is what the metrics must not
    # report as the last shutdown pass's result.
    policy = (f"version: 1\nmetrics:\n  textfile: {textfile}\n"
              f"defaults:\n  on_shutdown: [migrate, save]\n  migrate: {{peers: ['{URI}']}}\n")
    for command in ("evacuate", "return"):
        (tmp_path / "policy.yaml").write_text(policy)
        capsys.readouterr()
        code = cli.main(["--connect", URI, "--state-dir", str(tmp_path / "state"), "--policy",
                  str(tmp_path / "policy.yaml"), command])
        assert code == (ExitCode.GUEST_DEGRADED if command == "evacuate" else ExitCode.OK), command
    after = _samples(textfile)
    for kind in ("shutdown", "boot"):
        assert {k: v for k, v in after.items() if ("pass", kind) in k[1]} == \
               {k: v for k, v in passes.items() if ("pass", kind) in k[1]}, kind
    assert after[("mgsave_pass_guests", frozenset({("pass", "evacuate"), ("outcome", "stayed")}))] == 1
    assert after[("mgsave_pass_success", frozenset({("pass", "evacuate")}))] == 0
    assert ("mgsave_pass_success", frozenset({("pass", "return")})) in after


def test_a_link_at_the_metrics_path_is_neither_followed_nor_replaced(hv, tmp_path, capsys):
    define(hv, "a")
    elsewhere = tmp_path / "elsewhere.prom"
    planted = 'mgsave_pass_success{pass="boot"} 1\n'
    elsewhere.write_text(planted)
    textfile = tmp_path / "mgsave.prom"
    textfile.symlink_to(elsewhere)
    code, result, err = _run(tmp_path, capsys, "shutdown", textfile=textfile)
    assert code == ExitCode.OK and [g["outcome"] for g in result["guests"]] == ["saved"]
    assert f"cannot write the metrics file {textfile} (it is a symbolic link" in err
    assert textfile.is_symlink() and elsewhere.read_text() == planted


def test_a_fifo_at_the_metrics_path_never_holds_up_the_pass(hv, tmp_path, capsys):
    define(hv, "a")
    textfile = tmp_path / "mgsave.prom"
    os.mkfifo(textfile)
    box = {}
    thread = threading.Thread(target=lambda: box.setdefault("run", _run(tmp_path, capsys, "shutdown",
                                                                         textfile=textfile)), daemon=True)
    thread.start()
    thread.join(60)
    if thread.is_alive():  # blocked opening the FIFO: a writer lets it go, so the test ends
        os.close(os.open(textfile, os.O_WRONLY | os.O_NONBLOCK))
        thread.join(60)
        pytest.fail("the pass hung on a FIFO at the metrics path")
    code, result, err = box["run"]
    assert code == ExitCode.OK and [g["outcome"] for g in result["guests"]] == ["saved"]
    assert f"cannot write the metrics file {textfile} (it is a FIFO" in err
    assert stat.S_ISFIFO(os.lstat(textfile).st_mode)


def test_a_metrics_file_too_big_to_be_ours_is_replaced_without_being_read_whole(hv, tmp_path, capsys):
    define(hv, "a")
    textfile = tmp_path / "mgsave.prom"
    with open(textfile, "wb") as big:
        big.truncate(64 * 1024 * 1024)  # sparse: no disk used
    code, _, err = _run(tmp_path, capsys, "shutdown", textfile=textfile)
    assert code == ExitCode.OK
    assert "the other passes' samples in it are dropped" in err
    assert textfile.stat().st_size < 10_000
    assert _samples(textfile)[("mgsave_pass_success", frozenset({("pass", "shutdown")}))] == 1
