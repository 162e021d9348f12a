"""``mgsave watch``: start the shutdown pass when logind announces a shutdown (libmgsave.early).

On a logind that does not say which kind of shutdown it announces (systemd before 255), the
pass is left to the stop of ``mgsave.service`` when the policy has ``on_reboot`` chains: by then
systemd's job says whether the host reboots."""

from __future__ import annotations

import logging

from libmgsave import early
from libmgsave.actions import DONE, Done, inputs
from libmgsave.context import Context

log = logging.getLogger("mgsave")


def run_watch(ctx: Context) -> Done:
    early.watch(kind_matters=lambda: _reboots_differently(ctx))
    return DONE


def _reboots_differently(ctx: Context) -> bool:
    """The policy as a pass would read it now; any failure: the kind does not matter (the pass
    starts early, as without on_reboot chains)."""
    try:
        return inputs.pass_policy(ctx).policy.reboots_differently
    except Exception as error:  # noqa: BLE001 - the early start must not depend on it
        log.warning("could not read the policy to see whether it has on_reboot chains (%s)", error)
        return False
