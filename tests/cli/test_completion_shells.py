"""The completion in real shells on a pseudo-terminal. Bash: an interactive bash, with bash-completion
loaded as a login shell on Debian loads it: a line is typed, TAB pressed, then Enter, and the
test reads what the completion offered and the command line bash then ran.

``mgsave`` on the PATH is a stand-in that prints the words it was run with, except for the
hidden ``_complete-guests``, which it hands to the real mgsave: the guests' names come from
libvirt's test driver (a node file with guests of our choosing), as an admin's come from theirs.
"""

from __future__ import annotations

import os
import pty
import select
import shlex
import shutil
import signal
import sys
import time
from pathlib import Path

import pytest

from libmgsave.arguments import build_parser, commands

ROOT = Path(__file__).resolve().parents[2]
BASH_COMPLETION_LIBRARY = Path("/usr/share/bash-completion/bash_completion")
GUESTS = ("dns1", "dns2", "web")
COMMANDS = list(commands(build_parser()))

needs_bash_completion = pytest.mark.skipif(
    not BASH_COMPLETION_LIBRARY.exists() and os.environ.get("CI") != "true",
    reason="needs bash-completion (scripts/setup installs it)")

STAND_IN = """\
#!/bin/sh
case " $* " in *" _complete-guests "*) exec {python} -m libmgsave "$@" ;; esac
printf 'RAN'; printf '|%s' "$@"; printf '|END\\n'
"""
# Each call of the completion writes what it offered to $CAPTURE (one word a line), then the file
# $CAPTURE.done: the test waits for that, not for a time.
SETUP = """\
source {library}
source {completion}
eval "_mgsave_real() $(declare -f _mgsave | tail -n +2)"
_mgsave() {{ _mgsave_real "$@"; printf '%s\\n' "${{COMPREPLY[@]}}" > "$CAPTURE"; : > "$CAPTURE.done"; }}
bind 'set bell-style none'
echo RE''ADY
"""


@pytest.fixture
def node(tmp_path):
    """A test-driver URI whose guests are GUESTS (the URI has colons, as qemu:///system has)."""
    path = tmp_path / "node.xml"
    path.write_text("<node>" + "".join(
        f"<domain type='test'><name>{name}</name><memory>262144</memory><os><type>hvm</type></os></domain>"
        for name in GUESTS) + "</node>")
    return f"test://{path}"


def stand_in(directory: Path) -> Path:
    """A directory with the stand-in ``mgsave`` in it."""
    bindir = directory / "bin"
    bindir.mkdir()
    (bindir / "mgsave").write_text(STAND_IN.format(python=shlex.quote(sys.executable)))
    (bindir / "mgsave").chmod(0o755)
    return bindir


class Bash:
    """An interactive bash on a pseudo-terminal."""

    def __init__(self, tmp_path: Path, env: dict[str, str]):
        bindir = stand_in(tmp_path)
        self.capture = tmp_path / "offered"
        environment = {"PATH": f"{bindir}:{os.environ['PATH']}", "HOME": str(tmp_path), "TERM": "xterm",
                       "INPUTRC": "/dev/null", "PS1": "$ ", "CAPTURE": str(self.capture),
                       "PYTHONPATH": str(ROOT), **env}
        self.pid, self.fd = pty.fork()
        if self.pid == 0:  # the child: bash, reading the pseudo-terminal
            os.execve("/bin/bash", ["bash", "--norc", "--noprofile", "-i"], environment)
        self.output = b""
        self.type(SETUP.format(library=BASH_COMPLETION_LIBRARY, completion=ROOT / "completions" / "mgsave"))
        self.wait_for(b"READY\r\n")

    def type(self, text: str) -> None:
        os.write(self.fd, text.encode())

    def wait_for(self, marker: bytes, timeout: float = 60) -> bytes:
        """The output up to ``marker``, which is consumed."""
        deadline = time.monotonic() + timeout
        while marker not in self.output:
            left = deadline - time.monotonic()
            assert left > 0, f"bash did not print {marker!r}: {self.output[-2000:]!r}"
            if select.select([self.fd], [], [], left)[0]:
                self.output += os.read(self.fd, 65536)
        before, _, self.output = self.output.partition(marker)
        return before

    def complete(self, line: str) -> tuple[list[str], list[str]]:
        """Type ``line``, TAB, Enter: what the completion offered, and the words mgsave ran with."""
        done = Path(f"{self.capture}.done")
        done.unlink(missing_ok=True)
        self.type(line + "\t")
        deadline = time.monotonic() + 60
        while not done.exists():
            assert time.monotonic() < deadline, f"no completion for {line!r}: {self.output[-2000:]!r}"
            select.select([self.fd], [], [], 0.05)
            if select.select([self.fd], [], [], 0)[0]:
                self.output += os.read(self.fd, 65536)
        offered = self.capture.read_text().split()
        self.type("\n")
        ran = self.wait_for(b"|END").rpartition(b"RAN|")[2].decode()
        return offered, ran.split("|")

    def close(self) -> None:
        os.kill(self.pid, signal.SIGKILL)
        os.waitpid(self.pid, 0)
        os.close(self.fd)


@pytest.fixture
def bash(tmp_path):
    shells = []

    def start(**env: str) -> Bash:
        shells.append(Bash(tmp_path / str(len(shells)), env))
        return shells[-1]

    (tmp_path / "0").mkdir()
    (tmp_path / "1").mkdir()
    yield start
    for shell in shells:
        shell.close()


@needs_bash_completion
def test_a_command_completes_after_a_uri_with_colons(bash):
    shell = bash()
    offered, ran = shell.complete("mgsave --connect qemu:///system pl")
    assert offered == ["plan"]
    assert ran == ["--connect", "qemu:///system", "plan"]
    _offered, ran = shell.complete("mgsave -c qemu:///system st")
    assert ran[-1] == "status"


@needs_bash_completion
def test_plan_offers_the_passes_then_the_guests_from_libvirt(bash, node):
    shell = bash()
    offered, _ran = shell.complete(f"mgsave -c {node} plan ")
    assert sorted(offered) == sorted(["shutdown", "boot", *GUESTS])
    offered, _ran = shell.complete(f"mgsave -c {node} plan shutdown ")
    assert sorted(offered) == sorted(GUESTS), "a pass only once, then guests"
    offered, ran = shell.complete(f"mgsave -c {node} plan shutdown dns1 ")
    assert sorted(offered) == ["dns2", "web"], "a guest named already is not offered again"
    offered, ran = shell.complete(f"mgsave -c {node} plan we")
    assert ran[-1] == "web"
    offered, ran = shell.complete(f"mgsave plan --connect={node} boot dn")
    assert offered == ["dns1", "dns2"]


@needs_bash_completion
def test_the_guests_come_from_libvirt_default_uri_as_for_virsh(bash, node):
    shell = bash(LIBVIRT_DEFAULT_URI=node)
    offered, _ran = shell.complete("mgsave plan boot ")
    assert sorted(offered) == sorted(GUESTS)


@needs_bash_completion
def test_every_command_is_offered_before_and_after_a_uri_with_colons(bash):
    shell = bash()
    offered, _ran = shell.complete("mgsave ")
    assert sorted(offered) == sorted(COMMANDS)
    offered, _ran = shell.complete("mgsave -c qemu:///system ")
    assert sorted(offered) == sorted(COMMANDS), "the URI is one word, the value of -c"
    offered, ran = shell.complete("mgsave -c qemu:///system images re")
    assert offered == ["remove"]
    assert ran == ["-c", "qemu:///system", "images", "remove"]


@needs_bash_completion
def test_images_remove_does_not_offer_list_or_remove_again(bash):
    shell = bash()
    offered, _ran = shell.complete("mgsave images ")
    assert sorted(offered) == ["list", "remove"]
    offered, _ran = shell.complete("mgsave images remove ")
    assert not {"list", "remove"} & set(offered)


@needs_bash_completion
def test_a_file_value_after_an_equals_sign(bash, tmp_path):
    (tmp_path / "policy.yaml").write_text("version: 1\n")
    shell = bash()
    offered, ran = shell.complete(f"mgsave --policy={tmp_path}/pol")
    assert offered == [f"{tmp_path}/policy.yaml"]
    assert ran == [f"--policy={tmp_path}/policy.yaml"]


@pytest.mark.skipif(shutil.which("zsh") is None, reason="needs zsh (scripts/setup installs it)")
def test_zsh_offers_the_guests_from_libvirt_too(tmp_path, node, monkeypatch):
    from tests.unit.test_completion import zsh_complete

    monkeypatch.setenv("PATH", f"{stand_in(tmp_path)}:{os.environ['PATH']}")
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    first, after_pass, after_guest = zsh_complete(tmp_path, f"mgsave -c {node} plan ",
                                                  f"mgsave -c {node} plan shutdown ",
                                                  f"mgsave -c {node} plan shutdown dns1 ")
    assert sorted(first) == sorted(["shutdown", "boot", *GUESTS])
    assert sorted(after_pass) == sorted(GUESTS)
    assert sorted(after_guest) == ["dns2", "web"]


@pytest.mark.skipif(shutil.which("zsh") is None, reason="needs zsh (scripts/setup installs it)")
def test_zsh_takes_a_uri_as_one_word_and_offers_each_argument_once(tmp_path):
    from tests.unit.test_completion import zsh_complete

    after_uri, images, after_remove = zsh_complete(tmp_path, "mgsave -c qemu:///system pl",
                                                   "mgsave --connect qemu:///system images ",
                                                   "mgsave images remove ")
    assert after_uri == ["plan"]
    assert sorted(images) == ["list", "remove"]
    assert not {"list", "remove"} & set(after_remove)
