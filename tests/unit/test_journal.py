"""journal.py: the stderr format, the structured fields, and (where a journald runs) the journal."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from libmgsave import journal
from libmgsave.inventory import GuestInfo, GuestState

ROOT = Path(__file__).resolve().parents[2]
DB1 = GuestInfo(connection="qemu:///system", name="db1", uuid="0b9c6f0e-4d4b-4f5e-9a55-0d6c3e8f1a20", state=GuestState.RUNNING)


@pytest.fixture
def logger():
    yield logging.getLogger("mgsave")
    journal.setup_logging(use_journal=False)  # leave no test's handler behind


def test_stderr_lines_name_the_tool_and_the_level(logger, capsys):
    journal.setup_logging(use_journal=False)
    logger.info("saving %d guests", 3)
    logger.warning("db1: no space left")
    logger.getChild("execute").error("web1: save failed")
    logger.debug("hidden without --debug")
    assert capsys.readouterr().err.splitlines() == [
        "mgsave: saving 3 guests",
        "mgsave: warning: db1: no space left",
        "mgsave: error: web1: save failed",
    ]


def test_debug_shows_debug_lines(logger, capsys):
    journal.setup_logging(debug=True, use_journal=False)
    logger.debug("connecting to %s", "qemu:///system")
    assert capsys.readouterr().err == "mgsave: debug: connecting to qemu:///system\n"


def test_fields_do_not_clutter_stderr(logger, capsys):
    journal.setup_logging(use_journal=False)
    logger.info("db1 saved", extra=journal.guest_fields(DB1, action="save", result="ok", seconds=3.5))
    assert capsys.readouterr().err == "mgsave: db1 saved\n"


def test_setup_twice_keeps_one_handler(logger, capsys):
    journal.setup_logging(use_journal=False)
    journal.setup_logging(use_journal=False)
    logger.info("once")
    assert capsys.readouterr().err == "mgsave: once\n"


def test_priority_prefix_when_stderr_is_the_journal_stream():
    formatter = journal.StderrFormatter(priority_prefix=True)
    record = logging.LogRecord("mgsave", logging.WARNING, __file__, 1, "two\nlines", None, None)
    assert formatter.format(record) == "<4>two\n<4>lines"


def test_stderr_is_journal_compares_device_and_inode(tmp_path):
    with open(tmp_path / "stream", "w") as stream:
        st = os.fstat(stream.fileno())
        assert journal.stderr_is_journal({"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}, stream)
        assert not journal.stderr_is_journal({"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino + 1}"}, stream)
        assert not journal.stderr_is_journal({}, stream)
        assert not journal.stderr_is_journal({"JOURNAL_STREAM": "garbage"}, stream)


def test_under_systemd_needs_the_environment_and_the_socket(tmp_path):
    sock = tmp_path / "socket"
    sock.touch()
    assert journal.under_systemd({"INVOCATION_ID": "abc"}, str(sock))
    assert journal.under_systemd({"JOURNAL_STREAM": "8:123"}, str(sock))
    assert not journal.under_systemd({}, str(sock))
    assert not journal.under_systemd({"INVOCATION_ID": "abc"}, str(tmp_path / "none"))


def test_guest_fields_full_and_sparse():
    assert journal.guest_fields(DB1, action="save", result="ok", seconds=3.14159, bytes_=409600) == {
        "MGSAVE_GUEST": "db1",
        "MGSAVE_UUID": DB1.uuid,
        "MGSAVE_CONNECTION": "qemu:///system",
        "MGSAVE_ACTION": "save",
        "MGSAVE_RESULT": "ok",
        "MGSAVE_SECONDS": 3.142,
        "MGSAVE_BYTES": 409600,
    }
    assert journal.guest_fields(DB1) == {"MGSAVE_GUEST": "db1", "MGSAVE_UUID": DB1.uuid, "MGSAVE_CONNECTION": "qemu:///system"}
    assert journal.guest_fields(action="boot") == {"MGSAVE_ACTION": "boot"}
    assert journal.guest_fields() == {}


def test_message_ids_are_distinct_128_bit_hex():
    for value in (journal.PASS_START, journal.PASS_END):
        assert len(value) == 32 and int(value, 16) >= 0
    assert journal.PASS_START != journal.PASS_END


def test_journal_handler_sends_extras_as_fields():
    sent = []
    handler = journal.JournalHandler(lambda **fields: sent.append(fields))
    log = logging.getLogger("mgsave.test-handler")
    log.propagate = False
    log.addHandler(handler)
    try:
        log.warning("db1 saved", extra=journal.guest_fields(DB1, action="save", seconds=2))
        log.info("pass begins", extra={"MESSAGE_ID": journal.PASS_START, "MGSAVE_PASS": "shutdown"})
    finally:
        log.removeHandler(handler)
    first, second = sent
    assert first["MESSAGE"] == "db1 saved"
    assert first["PRIORITY"] == "4"
    assert first["SYSLOG_IDENTIFIER"] == "mgsave"
    assert first["MGSAVE_GUEST"] == "db1" and first["MGSAVE_SECONDS"] == "2.0"
    assert all(key == key.upper() for key in first)  # record internals (msg, args...) are not sent
    assert second["MESSAGE_ID"] == journal.PASS_START and second["MGSAVE_PASS"] == "shutdown"


def test_journal_handler_falls_back_to_stderr_when_journald_is_gone(capsys):
    def gone(**fields):
        raise ConnectionRefusedError("journald stopped")

    handler = journal.JournalHandler(gone)
    handler.fallback.stream = sys.stderr  # capsys replaced stderr after the handler was built
    record = logging.LogRecord("mgsave", logging.ERROR, __file__, 1, "late %s", ("line",), None)
    handler.handle(record)
    assert capsys.readouterr().err == "mgsave: error: late line\n"


def run_python(code: str, **env: str) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if k not in ("JOURNAL_STREAM", "INVOCATION_ID")}
    environ.update(env)
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=environ, capture_output=True, text=True, check=True)


def test_without_systemd_python_under_systemd_falls_back_to_stderr(tmp_path):
    """systemd-python missing must never break logging, even where a journal exists."""
    code = (
        "import sys, logging; sys.modules['systemd'] = None\n"
        "from libmgsave import journal\n"
        "journal.setup_logging(use_journal=True)\n"
        "logging.getLogger('mgsave').warning('still here')\n"
    )
    out = run_python(code, INVOCATION_ID="0" * 32)
    assert out.stderr == "mgsave: warning: still here\n"


def test_importing_is_cheap():
    code = "import sys; from libmgsave import journal, notify; print('systemd' in sys.modules)"
    assert run_python(code).stdout.strip() == "False"


def journald_reachable() -> bool:
    if not os.path.exists(journal.JOURNAL_SOCKET) or not shutil.which("journalctl"):
        return False
    try:
        import systemd.journal  # noqa: F401
    except ImportError:
        return False
    return subprocess.run(["journalctl", "-n", "0", "-q"], capture_output=True).returncode == 0


@pytest.mark.skipif(not journald_reachable(), reason="no journald (or systemd-python) on this machine")
def test_real_journal_receives_the_fields():
    guest = GuestInfo(connection="qemu:///system", name=f"test-{uuid.uuid4().hex[:12]}", uuid=str(uuid.uuid4()), state=GuestState.RUNNING)
    code = (
        "import logging\n"
        "from libmgsave import journal\n"
        "from libmgsave.inventory import GuestInfo, GuestState\n"
        f"g = GuestInfo(connection='qemu:///system', name={guest.name!r}, uuid={guest.uuid!r}, state=GuestState.RUNNING)\n"
        "journal.setup_logging(use_journal=True)\n"
        "logging.getLogger('mgsave').info('saved', extra=journal.guest_fields(g, action='save', result='ok', bytes_=42))\n"
    )
    run_python(code)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        out = subprocess.run(["journalctl", "-o", "json", f"MGSAVE_GUEST={guest.name}"], capture_output=True, text=True)
        if out.stdout.strip():
            entry = json.loads(out.stdout.splitlines()[0])
            assert entry["MESSAGE"] == "saved"
            assert entry["SYSLOG_IDENTIFIER"] == "mgsave"
            assert entry["MGSAVE_UUID"] == guest.uuid and entry["MGSAVE_BYTES"] == "42"
            return
        time.sleep(0.2)
    pytest.fail("the entry never showed up in the journal")


def test_setting_up_again_replaces_its_own_handler_and_keeps_the_others():
    logger = logging.getLogger(journal.LOGGER_NAME)
    before = list(logger.handlers)
    theirs = logging.NullHandler()
    logger.addHandler(theirs)
    try:
        journal.setup_logging(use_journal=False)
        journal.setup_logging(use_journal=False)
        ours = [h for h in logger.handlers if isinstance(h, journal.StderrHandler)]
        assert len(ours) == 1 and theirs in logger.handlers
    finally:
        for handler in list(logger.handlers):
            logger.removeHandler(handler)
        for handler in before:
            logger.addHandler(handler)
