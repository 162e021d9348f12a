"""``mgsave sample-policy``: a commented policy, generated from the schema, on standard output.

Every setting is commented out with its meaning and its built-in default, and the rules under
``guests:`` are commented-out examples: as printed, the file means the built-in defaults, so
``mgsave sample-policy > /etc/mgsave/policy.yaml`` changes nothing until the admin uncomments.
It is the file the package installs as /etc/mgsave/policy.yaml.
"""

from __future__ import annotations

from libmgsave import console
from libmgsave.actions import DONE, Done
from libmgsave.context import Context
from libmgsave.policysample import load_schema, render_sample


def run_sample_policy(ctx: Context) -> Done:
    console.write("stdout", render_sample(load_schema(), commented=True))
    return DONE
