"""Text others wrote never reaches a terminal, the journal or the SVG raw.

A guest named with what libvirt's test driver accepts in a name (a C1 control introducing a
terminal escape, DEL, a tab, a right-to-left override, a line separator, 5,000 characters), and
a record whose step error carries what a guest agent can answer (an ANSI escape, NUL), go
through ``status``, ``plan``, a shutdown pass's summary, its log lines and journal entries
(mgsave's journal handler with a stand-in for systemd's sendv), ``report`` and ``report --svg``
(read back with an XML parser). Each shows the text escaped (``\\x9b``, ``\\u202e``) and
bounded; ``--json`` keeps the exact name.
"""

from __future__ import annotations

import json
import logging
import os
import unicodedata
import xml.etree.ElementTree as ET

import libvirt
import pytest

from libmgsave import cli, hypervisor, journal, state, untrusted
from libmgsave.errors import ExitCode
from tests.cli.terminal import terminal
from tests.testdriver import URI, domain_xml, hv  # noqa: F401

EVIL = "evil\x9b31m\x7f\tX\u202eright\u2028" + "x" * 5000
UNSAFE = {"Cc", "Cf", "Cs", "Cn", "Zl", "Zp"}


def unsafe_characters(text: str) -> list[str]:
    return sorted({c for c in text if c != "\n" and unicodedata.category(c) in UNSAFE})


@pytest.fixture
def entries():
    sent: list[dict] = []
    handler = journal.JournalHandler(lambda **fields: sent.append(fields))
    logger = logging.getLogger(journal.LOGGER_NAME)
    logger.addHandler(handler)
    yield sent
    logger.removeHandler(handler)


@pytest.fixture
def mgsave(tmp_path, capsys):
    policy = tmp_path / "policy.yaml"
    policy.write_text("version: 1\n")
    os.chmod(policy, 0o644)

    def run(*args):
        capsys.readouterr()
        code = cli.main(["--connect", URI, "--state-dir", str(tmp_path / "state"), "--policy", str(policy), *args])
        return code, *capsys.readouterr()

    run.state_dir = tmp_path / "state"
    return run


def defined_evil(hv):
    hv.defineXML(domain_xml(EVIL.replace("\t", "&#9;").replace("\u2028", "&#x2028;"), memory_kib=2048)).create()
    hv.defineXML(domain_xml("plain", memory_kib=2048)).create()
    assert EVIL in [d.name() for d in hv.listAllDomains()], "the test driver kept the name as it is"


# In a pipe a table is never shortened: the name is whole as far as ``untrusted`` bounds it.
PIPE_WIDTH = untrusted.NAME_LIMIT + 100


def shown_safely(text: str, *, width: int | None = PIPE_WIDTH) -> None:
    assert not unsafe_characters(text), unsafe_characters(text)
    assert "\\x9b31m" in text or "\\x9b" in text, text[:2000]
    assert len(text) < 10_000, "bounded"
    if width:
        table = [line for line in text.splitlines() if line.lstrip().startswith("evil")]
        assert table and all(len(line) <= width for line in table), table


def test_status_and_plan_show_a_hostile_name_escaped_and_bounded(hv, mgsave):
    defined_evil(hv)
    code, out, err = mgsave("status")
    assert code == ExitCode.OK, err
    shown_safely(out)
    code, out, err = mgsave("plan")
    assert code == ExitCode.OK, err
    shown_safely(out)
    with terminal(80) as lines:  # on a terminal, cut to fit it
        assert mgsave("status")[0] == ExitCode.OK
    shown_safely("\n".join(lines), width=80)
    assert "\\u202e" in mgsave("plan", "--verbose")[1]
    code, out, _err = mgsave("--json", "status")
    assert EVIL in [g["name"] for g in json.loads(out)["guests"]], "JSON keeps the exact name"


def test_a_pass_summary_its_log_and_the_journal_show_it_escaped(hv, mgsave, entries):
    defined_evil(hv)
    code, out, err = mgsave("shutdown")
    assert code == ExitCode.OK, err
    shown_safely(out)
    assert not unsafe_characters(err) and "\\u202e" in err
    mine = [e for e in entries if "MGSAVE_GUEST" in e and e["MGSAVE_GUEST"].startswith("evil")]
    assert mine, entries
    for entry in mine:
        for key, value in entry.items():
            bound = 3 * untrusted.MESSAGE_LIMIT if key == "MESSAGE" else untrusted.NAME_LIMIT + 40
            assert not unsafe_characters(value) and len(value) <= bound, (key, value[:200])
        assert "\\x9b31m\\x7f\\tX\\u202eright\\u2028" in entry["MGSAVE_GUEST"]


def test_report_and_its_svg_escape_names_and_errors_from_the_record(hv, mgsave, tmp_path):
    defined_evil(hv)
    assert mgsave("shutdown")[0] == ExitCode.OK
    record_path = mgsave.state_dir / state.SHUTDOWN_RECORD
    record = json.loads(record_path.read_text())
    for entry in record["guests"].values():  # what a guest agent's or a peer's error can say
        entry["steps"][0].update(ok=False, error="agent: \x1b[2J\x1b]0;owned\x07 \x00 </title><script>")
    record_path.write_text(json.dumps(record))
    code, out, err = mgsave("report")
    assert code == ExitCode.OK, err
    assert not unsafe_characters(out) and "\\x9b" in out
    picture = tmp_path / "timeline.svg"
    code, _out, err = mgsave("report", "--svg", str(picture))
    assert code == ExitCode.OK, err
    svg = ET.parse(picture).getroot()  # well-formed XML, whatever the record said
    texts = [t for t in svg.itertext()]
    assert any("\\x1b[2J" in t and "</title><script>" in t for t in texts), "the error is shown, escaped"
    assert not any(unsafe_characters(t) for t in texts)
    assert not svg.findall(".//{http://www.w3.org/2000/svg}script")


def test_libvirt_error_text_is_made_safe_where_it_becomes_mgsave_s_error():
    error = hypervisor.translate_error(libvirt.libvirtError("agent said \x1b[31mno\x1b[0m\n\u202e" + "y" * 9000),
                                       "waiting for the guest agent")
    assert error.message.startswith("waiting for the guest agent: agent said \\x1b[31mno\\x1b[0m\\n\\u202e")
    assert not unsafe_characters(error.message) and len(error.message) < untrusted.MESSAGE_LIMIT + 40


@pytest.mark.parametrize("sink", list(untrusted.Sink))
def test_each_sink_gets_escaped_bounded_text(sink):
    shown = untrusted.safe("a\x1b[1m\tb\u202e\u2028\ud800\ufffe<&>'\"" + "z" * 400, sink)
    assert not unsafe_characters(shown) and "[... " in shown and "more characters]" in shown
    if sink is untrusted.Sink.XML:
        ET.fromstring(f"<t a='{shown}'>{shown}</t>")
        assert "&lt;&amp;&gt;" in shown
    else:
        assert shown.startswith("a\\x1b[1m\\tb\\u202e\\u2028\\ud800\\ufffe<&>'\"")
    assert untrusted.safe("db-01 web") == "db-01 web"
