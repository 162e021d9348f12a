"""Text output for 80 columns: plan, status and a pass's summary, one line a guest, every
column headed; a connection column only when there is more than one connection."""

from __future__ import annotations

import pytest

from libmgsave import cli
from tests.testdriver import URI, domain_xml, hv  # noqa: F401

NAMES = [f"{kind}-{n:02d}{'-extra' * (n % 3)}" for n, kind in enumerate(["db", "web", "cache", "batch"] * 5)]


@pytest.fixture
def twenty(hv, tmp_path, monkeypatch):  # noqa: F811
    """20 guests of every size and name length, some running, some off."""
    monkeypatch.delenv("COLUMNS", raising=False)  # the default width, whatever runs the tests
    for n, name in enumerate(NAMES):
        dom = hv.defineXML(domain_xml(name, memory_kib=262144 * (1 + n)))
        if n % 4:
            dom.create()
    return tmp_path


def mgsave(capsys, state, *args) -> tuple[int, list[str]]:
    capsys.readouterr()
    code = cli.main(["--state-dir", str(state / "state"), *args])
    return code, capsys.readouterr().out.splitlines()


def assert_fits(lines: list[str]) -> None:
    too_wide = [line for line in lines if len(line) > 80]
    assert not too_wide, "\n".join(too_wide)


@pytest.mark.parametrize("command", [["plan"], ["status"], ["shutdown", "--dry-run"], ["boot", "--dry-run"]])
def test_20_guests_fit_80_columns(twenty, capsys, command):
    code, lines = mgsave(capsys, twenty, "--connect", URI, *command)
    assert code in (0, 10)
    assert_fits(lines)
    for name in NAMES:  # one line a guest: every guest is named (a long name may be cut short)
        assert any(f" {name[:8]}" in f" {line}" for line in lines), name
    assert "CONNECTION" not in " ".join(lines), "one connection: no connection column"


def test_the_plan_table_heads_every_column_and_has_no_why_repeating_the_actions(twenty, capsys):
    _, lines = mgsave(capsys, twenty, "--connect", URI, "plan", "shutdown")
    header = next(line for line in lines if "GUEST" in line)
    assert header.split() == ["GUEST", "STATE", "ACTIONS", "SAVE", "ENDS"]
    assert not any("chain" in line for line in lines)
    assert any("MiB/s" in line for line in lines) and not any("MB/s" in line for line in lines)


def test_a_dry_runs_summary_says_would(twenty, capsys):
    _, lines = mgsave(capsys, twenty, "--connect", URI, "shutdown", "--dry-run")
    header = [line for line in lines if line.strip().startswith("GUEST")][-1]
    assert header.split() == ["GUEST", "ACTION", "WOULD", "BE", "SEVERITY", "TIME", "SIZE"]
    assert lines[-1] == "all 20 guests would get their first choice"


def test_plan_verbose_and_plan_guest_say_where_each_setting_came_from(twenty, capsys):
    policy = twenty / "etc" / "policy.yaml"
    policy.parent.mkdir(mode=0o755)
    policy.write_text("version: 1\ndefaults:\n  order: 1\nguests:\n  - match: {name: 'web-*'}\n"
                      "    # databases\n    save_timeout: 20 min\n")
    policy.chmod(0o644)
    _, lines = mgsave(capsys, twenty, "--connect", URI, "--policy", str(policy), "plan", "shutdown", "web-01-extra")
    assert_fits(lines)
    text = "\n".join(lines)
    assert "web-01-extra (test:///default, running, 512 MiB of memory)" in text
    flat = "".join(text.split())  # a long path is wrapped, never cut
    assert f"save_timeout1200.0[{policy}:5guests[0]]" in flat
    assert f"order1[{policy}:2defaults]" in flat
    assert "autostartif-running[built-in]" in flat
    assert "web-05-extra" not in text, "only the guest asked for"
    _, verbose = mgsave(capsys, twenty, "--connect", URI, "plan", "boot", "--verbose")
    assert_fits(verbose)
    assert sum(1 for line in verbose if line.startswith("  settings (")) == 20


def test_two_connections_show_the_connection_column(twenty, capsys, tmp_path):
    node = tmp_path / "other.xml"
    node.write_text("<node>" + domain_xml("elsewhere-1") + domain_xml("elsewhere-2") + "</node>")
    other = f"test://{node}"
    for command in (["plan", "shutdown"], ["status"]):
        _, lines = mgsave(capsys, twenty, "--connect", URI, "--connect", other, *command)
        assert_fits(lines)
        header = next(line for line in lines if "GUEST" in line)
        assert header.split()[0] == "CONNECTION", lines
        assert any("elsewhere-1" in line for line in lines)
        rows = [line.split()[0] for line in lines if "batch-03" in line or "elsewhere-1" in line]
        assert len(set(rows)) == 2, f"the connections must stay apart, even cut: {rows}"
