"""A libvirt daemon that does not answer: the pass keeps trying (as before), and says so in one
line, with what it waits for and until when, and one line for the result; not a line a second."""

import os
import re
import time

from libmgsave import cli
from libmgsave.errors import ExitCode


def test_a_missing_daemon_is_waited_for_in_one_line_then_one_result(tmp_path, capsys):
    nowhere = f"qemu+unix:///system?socket={tmp_path}/no-such-socket"
    policy = tmp_path / "policy.yaml"
    policy.write_text("version: 1\n")
    os.chmod(policy, 0o644)
    capsys.readouterr()
    started = time.monotonic()
    # A 20 s deadline: the pass keeps trying for a quarter of it, 5 s.
    code = cli.main(["-c", nowhere, "--policy", str(policy), "--state-dir", str(tmp_path / "state"),
                     "shutdown", "--dry-run", "--deadline", "20"])
    took = time.monotonic() - started
    assert code == ExitCode.UNAVAILABLE
    assert took >= 3.5, "the retries are kept"
    about = [line for line in capsys.readouterr().err.splitlines() if "no-such-socket" in line]
    waiting = [m for m in about if "trying again" in m]
    assert len(waiting) == 1, about
    assert re.search(r"No such file or directory; trying again every 1 s until \d\d:\d\d:\d\d$", waiting[0])
    results = [m for m in about if f"cannot reach {nowhere}" in m]
    assert len(results) == 1 and re.search(r"\(no answer for [45] s\)$", results[0]), about
    assert not [m for m in about if "retrying" in m]
    assert len(about) == 3 and "no libvirt connection could be opened" in about[2], about


def test_on_a_terminal_the_wait_is_the_live_line(tmp_path):
    """With standard error a terminal, the time left is redrawn in place, then taken away."""
    import pty
    import select
    import sys
    from pathlib import Path

    nowhere = f"qemu+unix:///system?socket={tmp_path}/no-such-socket"
    policy = tmp_path / "policy.yaml"
    policy.write_text("version: 1\n")
    os.chmod(policy, 0o644)
    command = [sys.executable, "-m", "libmgsave", "-c", nowhere, "--policy", str(policy), "--state-dir",
               str(tmp_path / "state"), "shutdown", "--dry-run", "--deadline", "16"]
    env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "JOURNAL_STREAM", "INVOCATION_ID")}
    env.update(PYTHONPATH=str(Path(__file__).resolve().parents[2]), COLUMNS="200", TERM="xterm")
    pid, fd = pty.fork()
    if pid == 0:
        os.execve(sys.executable, command, env)
    output = b""
    while True:
        if select.select([fd], [], [], 60)[0]:
            try:
                chunk = os.read(fd, 65536)
            except OSError:  # the child is gone: the terminal's other end is closed
                break
            if not chunk:
                break
            output += chunk
    _, status = os.waitpid(pid, 0)
    os.close(fd)
    text = output.decode(errors="replace")
    assert os.waitstatus_to_exitcode(status) == ExitCode.UNAVAILABLE, text
    drawn = re.findall(rf"\r\x1b\[Kwaiting for {re.escape(nowhere)} to answer, until \d\d:\d\d:\d\d: (\d+) s left",
                       text)
    assert len(drawn) >= 2 and int(drawn[0]) > int(drawn[-1]), text
    assert text.count("trying again every 1 s") == 1, text
