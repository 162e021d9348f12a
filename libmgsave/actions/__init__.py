"""One module per command, each the outline of that command, calling one layer down.

    check     validate the policy; warn about conflicts on the host
    plan      print what a pass would do
    status    every guest's state, saved image and last results
    shutdown  the shutdown pass              evacuate  migrate guests to their peers, now
    boot      the boot pass                  return    migrate them home, now

``inputs`` reads what they all need (policy, guests, records, plans); ``passes`` is the frame
the passes share (lock, connections, summary) and the kinds of pass. Each ``run_<command>``
takes the global options (``context.Context``) and its command's own, and returns a result
that says its exit code (``ActionResult``), from which alone ``cli`` exits.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from libmgsave.errors import ExitCode


class ActionResult(Protocol):
    """What every action returns: it says the command's exit code."""

    def exit_code(self) -> int: ...


@dataclass(frozen=True)
class Done:
    """A command that ran to its end and has nothing to say of it: exit 0."""

    def exit_code(self) -> int:
        return ExitCode.OK


DONE = Done()
