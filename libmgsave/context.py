"""What a command works with: the options every command has (``Context``, read-only, derived
once by ``cli`` from the arguments and the environment), and the ``PassLog`` a command run keeps
of the problems it met on the way.

A command's own options (``plan``'s guests, a pass's ``--dry-run``...) belong to its action
module, which declares them; ``cli`` builds them and hands them to that action alone.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from libmgsave import console, jsonout
from libmgsave.state import StateDir

T = TypeVar("T")

@dataclass(frozen=True)
class Context:
    """The global options, read-only: every command has them."""

    command: str
    policy_path: str
    policy_explicit: bool  # named by --policy or $MGSAVE_POLICY: then it must exist
    state: StateDir
    connect: tuple[str, ...] = ()  # --connect: these URIs instead of the policy's connections
    default_uri: str | None = None  # $LIBVIRT_DEFAULT_URI: instead of the built-in connection, as virsh
    json: bool = False
    debug: bool = False
    trust_insecure: bool = False  # --insecure-policy

    def emit(self, data: dict, text: str) -> None:
        """Print the command's output: ``data`` as JSON with --json, else ``text``."""
        if self.json:
            # One string, one write: json.dump would write every token on its own (560,000
            # writes for 10,000 guests' status).
            console.out(jsonout.dumps(data))
        else:
            console.out(text)


class PassLog:
    """What a command run met on the way, for its summary and exit code: problems (untrusted
    records, a state directory others can write to...) and whether the lock or a record could
    not be had (a pass then exits 1 even if every guest is fine). One a run, owned by it."""

    def __init__(self) -> None:
        self._warnings: list[str] = []
        self._bookkeeping_failed = False

    def warn(self, text: str, *, once: bool = False) -> None:
        """A problem for the summary; ``once``: unless it was said already."""
        if not (once and text in self._warnings):
            self._warnings.append(text)

    def gather(self, read: Callable[[list[str]], T]) -> T:
        """``read(warnings)``, for a reader in ``state`` that adds its problems to the list of
        warnings it is given, looking at those already there so that none is said twice."""
        return read(self._warnings)

    def bookkeeping_failed_because(self, text: str, *, once: bool = False) -> None:
        """The lock or a record could not be had: a problem, and the run is not ok."""
        self._bookkeeping_failed = True
        self.warn(text, once=once)

    @property
    def warnings(self) -> list[str]:
        """The problems met so far, in the order met (a copy)."""
        return list(self._warnings)

    @property
    def bookkeeping_failed(self) -> bool:
        return self._bookkeeping_failed
