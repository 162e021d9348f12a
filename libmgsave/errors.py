"""The project's own exceptions and the exit codes they map to.

Every layer raises these; only ``cli.main`` turns them into messages and exit codes,
and only ``hypervisor.translate_error`` turns ``libvirt.libvirtError`` into them.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from libmgsave import units


class ExitCode(enum.IntEnum):
    OK = 0
    GUEST_FAILED = 1  # the pass ran, but a guest failed, a connection or a record could not be used
    BAD_INPUT = 2  # the policy or the command line is wrong
    BUSY = 3  # another pass holds the lock
    UNAVAILABLE = 4  # the hypervisor could not be reached at all
    # The pass ran and every guest was handled, but one did not get its first choice (its save
    # skipped or failed, so it was shut down; booted fresh where a resume was due; left off), or
    # the policy was broken and the pass ran on the built-in defaults. Outside systemd's LSB
    # range (1-7), so `systemctl status` shows no misleading name for it.
    GUEST_DEGRADED = 10
    INTERNAL = 70  # a bug in mgsave (EX_SOFTWARE)


class MgsaveError(Exception):
    """Base of every error mgsave reports to the admin; ``hint`` says what to do."""

    exit_code = ExitCode.INTERNAL

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint


@dataclass(frozen=True)
class Problem:
    """One thing wrong in a policy file, located as precisely as the parser allows."""

    file: str
    line: int | None  # 1-based; None when the problem is not in the text (e.g. unreadable file)
    column: int | None  # 1-based
    path: str  # key path such as ``guests[2].on_shutdown[0]``; "" for the whole document
    message: str
    hint: str | None = None

    def __str__(self) -> str:
        where = self.file
        if self.line is not None:
            where += f":{self.line}"
            if self.column is not None:
                where += f":{self.column}"
        text = f"{where}: "
        if self.path:
            text += f"at '{self.path}': "
        text += self.message
        if self.hint:
            text += f" (hint: {self.hint})"
        return text

    def to_dict(self) -> dict:
        return {
            "file": self.file,
            "line": self.line,
            "column": self.column,
            "path": self.path,
            "message": self.message,
            "hint": self.hint,
        }


class PolicyError(MgsaveError):
    """The policy file is unusable; ``problems`` lists every problem found, not just the first."""

    exit_code = ExitCode.BAD_INPUT

    def __init__(self, problems: list[Problem]):
        self.problems = list(problems)
        super().__init__(
            f"{units.plural(len(self.problems), 'problem')} in the policy:\n" + "\n".join(f"  {p}" for p in self.problems)
        )


class LockBusy(MgsaveError):
    exit_code = ExitCode.BUSY


class HypervisorError(MgsaveError):
    """A libvirt call failed; ``code`` is libvirt's error code when there was one."""

    exit_code = ExitCode.UNAVAILABLE

    def __init__(self, message: str, hint: str | None = None, code: int | None = None):
        super().__init__(message, hint)
        self.code = code


class HypervisorUnavailable(HypervisorError):
    """The daemon does not answer (not running, socket gone, connection dropped)."""


class GuestGone(HypervisorError):
    """The guest was undefined (or a transient guest stopped) while we worked on it."""


class OperationRefused(HypervisorError):
    """The hypervisor refused the operation (unsupported, blocked by a device, no space...)."""


class OperationTimeout(HypervisorError):
    """We gave up waiting for an operation; the guest may still be in its old state."""
