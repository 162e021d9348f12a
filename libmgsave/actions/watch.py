"""``mgsave watch``: start the shutdown pass when logind announces a shutdown (libmgsave.early)."""

from __future__ import annotations

from libmgsave import early
from libmgsave.actions import DONE, Done
from libmgsave.context import Context


def run_watch(ctx: Context) -> Done:
    early.watch()
    return DONE
