"""``mgsave _complete-guests``: the guests' names, one a line, for the shell's completion.

Fast and quiet, whoever runs it: no policy is read (it may be root's alone, and a broken one
must not break the shell), the connection is read-only, and a daemon that does not answer
within a second or two gives no names and no message. The URIs are those of the command line
being completed (``-c``), else ``$LIBVIRT_DEFAULT_URI``, else the built-in connection.
"""

from __future__ import annotations

from libmgsave import console, untrusted
from libmgsave.actions import DONE, Done
from libmgsave.context import Context
from libmgsave.errors import HypervisorError
from libmgsave.hypervisor import guest_names
from libmgsave.policy import DEFAULT_CONNECTIONS

ANSWER_WITHIN = 2.0  # seconds, for every connection together: the admin is waiting at a prompt


def run_complete_guests(ctx: Context) -> Done:
    uris = ctx.connect or ((ctx.default_uri,) if ctx.default_uri else DEFAULT_CONNECTIONS)
    names: dict[str, None] = {}
    for uri in uris:
        try:
            names.update(dict.fromkeys(guest_names(uri, timeout=ANSWER_WITHIN / len(uris))))
        except HypervisorError:
            continue
    # A name with a space or a control character would break the shell's word list: left out.
    console.write("stdout", "".join(f"{name}\n" for name in names if untrusted.message(name) == name
                                    and not any(c.isspace() for c in name)))
    return DONE
