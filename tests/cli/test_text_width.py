"""Text output: plan, status and a pass's summary, one line a guest, every column headed; a
connection column only when there is more than one connection. On a terminal the tables fit
its width, names given way last; in a pipe (or with --full) nothing is ever shortened."""

from __future__ import annotations

import pytest

from libmgsave import cli
from tests.cli.terminal import terminal
from tests.testdriver import URI, domain_xml, hv  # noqa: F401

NAMES = [f"{kind}-{n:02d}{'-extra' * (n % 3)}" for n, kind in enumerate(["db", "web", "cache", "batch"] * 5)]


@pytest.fixture
def twenty(hv, tmp_path, monkeypatch):  # noqa: F811
    """20 guests of every size and name length, some running, some off."""
    monkeypatch.delenv("COLUMNS", raising=False)  # the terminal's width, whatever runs the tests
    monkeypatch.setenv("NO_COLOR", "1")  # widths, not colour
    for n, name in enumerate(NAMES):
        dom = hv.defineXML(domain_xml(name, memory_kib=262144 * (1 + n)))
        if n % 4:
            dom.create()
    return tmp_path


def mgsave(capsys, state, *args, columns: int | None = 80) -> tuple[int, list[str]]:
    """The command's exit code and output lines: on a terminal ``columns`` wide, or (None) in a pipe."""
    capsys.readouterr()
    if columns is None:
        code = cli.main(["--state-dir", str(state / "state"), *args])
        return code, capsys.readouterr().out.splitlines()
    with terminal(columns) as lines:
        code = cli.main(["--state-dir", str(state / "state"), *args])
    return code, lines


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
    assert f"save_timeout20min[{policy}:5guests[0]]" in flat
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


LONG = "build-runner-with-a-really-long-descriptive-name"


@pytest.mark.parametrize("command", [["plan", "shutdown"], ["status"], ["shutdown", "--dry-run"]])
def test_in_a_pipe_every_name_is_whole(twenty, hv, capsys, command):  # noqa: F811
    hv.defineXML(domain_xml(LONG)).create()
    _, lines = mgsave(capsys, twenty, "--connect", URI, *command, columns=None)
    assert any(line.split() and line.split()[0] == LONG for line in lines), lines  # grep finds it
    assert not any("\u2026" in line for line in lines), "nothing shortened in a pipe"
    _, lines = mgsave(capsys, twenty, "--connect", URI, *command)
    assert_fits(lines)
    assert not any(LONG in line for line in lines), "on a terminal of 80 columns it is cut"


def test_on_a_narrow_terminal_other_columns_give_way_before_a_name(twenty, capsys):
    _, lines = mgsave(capsys, twenty, "--connect", URI, "plan", "shutdown", columns=60)
    rows = [line for line in lines if "running" in line]
    assert rows and all(len(line) <= 60 for line in lines), lines
    for name in NAMES[1::4]:  # the running ones: each name whole, the ACTIONS cut instead
        assert any(line.split()[0] == name for line in rows), (name, rows)
    assert all("save,shutdown,poweroff" not in line and "\u2026" in line for line in rows), rows


def test_full_never_shortens_even_on_a_terminal(twenty, hv, capsys):  # noqa: F811
    hv.defineXML(domain_xml(LONG)).create()
    for option in ("-l", "--full"):
        _, lines = mgsave(capsys, twenty, option, "--connect", URI, "plan", "shutdown", columns=60)
        assert any(line.split()[0] == LONG and "save,shutdown,poweroff" in line for line in lines if line.split())
        assert not any("\u2026" in line for line in lines), lines


def test_connections_and_names_cut_keep_what_tells_them_apart(twenty, capsys, tmp_path):
    uris = []
    for host in ("peer-one", "peer-two"):
        node = tmp_path / "hypervisors" / f"{host}.example.com" / "node.xml"
        node.parent.mkdir(parents=True)
        node.write_text("<node>" + domain_xml(f"guest-on-the-{host}") + "</node>")
        uris.append(f"test://{node}")
    _, lines = mgsave(capsys, twenty, "--connect", URI, "--connect", uris[0], "--connect", uris[1], "status")
    assert_fits(lines)
    shown = {host: [line.split()[:2] for line in lines if line.startswith(("\u2026", "test:"))
                    and host[-3:] in line.split()[0]] for host in ("peer-one", "peer-two")}
    assert shown["peer-one"] and shown["peer-two"], lines  # each connection named apart, though cut
    assert all("\u2026" in connection for rows in shown.values() for connection, _ in rows), shown
    guests = [guest for rows in shown.values() for _, guest in rows]
    assert len(set(guests)) == 2, f"names cut, and still apart: {guests}"
