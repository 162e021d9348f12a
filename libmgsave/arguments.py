"""The command line: what it may say, parsed (``build_parser``), and the help it gives.

Each command's parser, its options and its help text, in 80 columns; ``cli`` runs what it
parses. The help is the man page's text too (``scripts/gen-policy-docs``), and the shells'
completion is generated from the parser (``scripts/gen-completion``).
"""

from __future__ import annotations

import argparse
import re
import shutil
import textwrap
from collections.abc import Callable

from libmgsave import __version__

DESCRIPTION = """\
Managed-save every running libvirt guest at host shutdown and bring the guests back at boot,
resumed where they were, as the YAML policy says. The systemd unit mgsave-boot.service runs
'mgsave boot' at boot, and stopping mgsave.service while the host goes down runs 'mgsave
shutdown'; run them by hand with --dry-run to see what they would do.
"""

EPILOG = """\
'mgsave COMMAND --help' says more of each command; mgsave(8) says everything, and
mgsave-policy(5) every key of the policy.

policy file: --policy FILE, else $MGSAVE_POLICY, else /etc/mgsave/policy.yaml; when that is
missing the built-in defaults apply (save every running guest, resume it at boot). A broken
policy fails 'check' and 'plan' (exit 2) but never a pass: 'shutdown' and 'boot' then log every
problem and go on with its last valid copy or the built-in defaults, so no guest is lost to a
typo. 'mgsave sample-policy' prints a policy with every key explained.

libvirt: the policy's 'connections:', else $LIBVIRT_DEFAULT_URI, else qemu:///system; -c URI
(--connect) names others for this command, as with virsh.

exit codes: 0 every guest got its first choice; 1 a guest failed (it may be in any state), a
connection could not be used or a record not written; 10 degraded: every guest was handled,
but one did not get its first choice (its save was skipped or failed and it was shut down, it
booted fresh where a resume was due, it was left off) or the policy was broken and the pass ran
on its last valid copy or the built-in defaults (the unit is then failed, so that OnFailure=
fires); 2 a bad policy (check, plan), a guest 'plan' does not know, a bad command line, or any
warning of 'check --strict'; 3 another pass holds the lock; 4 the hypervisor could not be
reached; 70 internal error; 130 or 143 the pass was stopped by SIGINT or SIGTERM (it finished
the steps under way, started nothing new, and recorded and summarised what it did).
"""

# Help is written for 80 columns (and fitted to a narrower terminal).
HELP_WIDTH = 80


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """argparse's help at most 80 columns wide, its paragraphs refilled to the width; an indented
    paragraph is kept as written."""

    def __init__(self, prog: str, **kwargs) -> None:
        kwargs.setdefault("width", min(shutil.get_terminal_size().columns, HELP_WIDTH) - 1)
        super().__init__(prog, **kwargs)

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        paragraphs = text.strip("\n").split("\n\n")
        return "\n\n".join(p if p.startswith(" ") else textwrap.fill(" ".join(p.split()), width, initial_indent=indent,
                                                                      subsequent_indent=indent)
                           for p in paragraphs) + "\n"


def _global_options() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    g = common.add_argument_group("global options")
    g.add_argument("--policy", metavar="FILE", default=argparse.SUPPRESS,
                   help="policy file (default: $MGSAVE_POLICY, else /etc/mgsave/policy.yaml)")
    g.add_argument("-c", "--connect", metavar="URI", action="append", default=argparse.SUPPRESS,
                   help="libvirt URI to manage, instead of the policy's connections (repeatable; "
                        "without it: the policy's, else $LIBVIRT_DEFAULT_URI, else qemu:///system)")
    g.add_argument("--state-dir", metavar="DIR", default=argparse.SUPPRESS,
                   help="where records, the lock and kept images live "
                        "(default: $STATE_DIRECTORY, else /var/lib/mgsave)")
    g.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                   help="machine-readable output on stdout; log lines stay on stderr")
    g.add_argument("-l", "--full", action="store_true", default=argparse.SUPPRESS,
                   help="never shorten a name or a cell to fit the terminal (text to a pipe or a file "
                        "is never shortened)")
    g.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                   help="debug logging, and a traceback on internal errors")
    g.add_argument("--insecure-policy", action="store_true", default=argparse.SUPPRESS,
                   help="accept a policy file or directory writable by users other than root")
    g.add_argument("--insecure-state-dir", action="store_true", default=argparse.SUPPRESS,
                   help="trust the records and save files of a state directory writable by users other than "
                        "root (without it they are ignored, and guests are still saved into it)")
    return common


POWER_WATCH_HELP = (
    "watch the UPS of power: and start the host's shutdown in time",
    "watch: read the UPS every power.poll. While it runs on battery, start the host's shutdown\n"
    "(power.shutdown_command, 'systemctl poweroff' by default) once the runtime left is no more\n"
    "than the shutdown plan of the guests running now needs plus power.margin, or at once on the\n"
    "UPS's low-battery (LB) or forced-shutdown (FSD) flag, and go on watching: not started again\n"
    "while under way (12 readings), started again once it evidently was cancelled or failed.\n"
    "Back on line it stands down. A UPS that cannot be read, or reports no runtime, is logged\n"
    "and never starts a shutdown on its own (upsmon stays the authority for the final forced\n"
    "shutdown). SIGTERM ends it at once. mgsave-power.service runs it; exit 2 when the policy\n"
    "has no 'power:'.")
PASSES = ("shutdown", "boot")
COMPLETE_GUESTS = "_complete-guests"  # a hidden command, for the shell completion


class _PassOrGuests(tuple):
    """``plan``'s words: a pass, then guest names. argparse checks every word against
    ``choices``, which would refuse a guest's name; the completion offers the passes."""

    def __contains__(self, word: object) -> bool:
        return True


class _Commands(argparse._SubParsersAction):
    """The commands. Global options may come before and after the command: a repeatable one
    given on both sides keeps every value (``-c A plan -c B``: both URIs), where argparse's own
    would keep only those after it."""

    def __call__(self, parser, namespace, values, option_string=None):
        before = {key: value for key, value in vars(namespace).items() if isinstance(value, list)}
        super().__call__(parser, namespace, values, option_string)
        for key, earlier in before.items():
            later = getattr(namespace, key, None)
            if isinstance(later, list) and later is not earlier:
                setattr(namespace, key, earlier + later)


def build_parser() -> argparse.ArgumentParser:
    common = _global_options()
    parser = argparse.ArgumentParser(
        prog="mgsave", description=DESCRIPTION, epilog=EPILOG, parents=[common],
        formatter_class=_HelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"mgsave {__version__}")
    parser.register("action", "parsers", _Commands)
    sub = parser.add_subparsers(title="commands", dest="command", metavar="COMMAND", required=True)

    def add(name: str, help_text: str, description: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, parents=[common], help=help_text, description=description,
                              formatter_class=_HelpFormatter)

    _add_queries(add)
    _add_admin_commands(add)
    # For the shell completion: the names of the guests, from libvirt (read-only), at once.
    # No help: argparse then lists it nowhere.
    sub.add_parser(COMPLETE_GUESTS, parents=[common])
    _add_passes(add)
    _add_migrations(add)
    return parser


def _add_queries(add: Callable[..., argparse.ArgumentParser]) -> None:
    """check, plan, status, report: they look, and change nothing."""
    p = add("check", "validate the policy and warn about conflicts",
            "Validate the policy file and report every problem at once, each with file:line:column,\n"
            "the key path and a hint (exit 2). Then, if the hypervisor answers, warn about guests whose\n"
            "libvirt autostart flag fights the policy, about 'after' names that match no guest or form a\n"
            "cycle, about rules that match no guest, about settings the connection's driver refuses\n"
            "(bypass_cache on any but qemu's), each under its rule's file:line, about a hypervisor\n"
            "that does not answer, and about libvirt-guests or libvirtd's own shutdown handling being\n"
            "enabled. With a UPS in 'power:', its credentials file must be usable (else exit 2), and\n"
            "it warns, under the key's file:line, when upsd does not answer, knows no UPS of that\n"
            "name, refuses the credentials, or the UPS reports no usable runtime; and when mgsave's\n"
            "units are enabled but not mgsave-power.service, which runs 'mgsave power watch'. Each\n"
            "held saved image is checked against the QEMU installed now: one that will not resume\n"
            "(its machine type, CPU model or video model is not offered) is a warning, with what to\n"
            "do; a QEMU or libvirt changed since the save is said (expected to resume).")
    p.add_argument("--strict", action="store_true",
                   help="count every warning as an error (exit 2), for CI and configuration management")
    p = add("plan", "print what a pass would do",
            "Print the plan that 'mgsave shutdown' or 'mgsave boot' would carry out now, computed the\n"
            "same way, one line a guest in 80 columns: its actions, its order, what it waits for, the\n"
            "estimated end of its save under the deadline. With --verbose, or for the guests named,\n"
            "each guest in full: every effective setting with the rule (file:line) that set it.\n"
            "Exit 2 when the policy is broken (the plan shown is then the one a pass would carry out\n"
            "on its last valid copy or the built-in defaults) or a guest named is not there. With a UPS in\n"
            "'power:', a last line says whether the shutdown plan fits the runtime it reports now.\n"
            "The boot plan says of each held saved image whether it resumes on the QEMU installed\n"
            "now; a guest whose image will not is planned as its on_resume_failure says.")
    which = p.add_argument("which", nargs="*", choices=_PassOrGuests(PASSES), metavar="shutdown|boot|GUEST",
                           help="one pass only (default: both); then guests by name: their plan in full")
    which.complete = "guests"  # the shell completion offers the guests' names (scripts/gen-completion)
    p.add_argument("-v", "--verbose", action="store_true",
                   help="every guest in full: its plan, and each effective setting with the rule "
                        "(file:line) that set it")
    _kind_flags(p, "plan the shutdown for")
    add("status", "show every guest's state, saved image and last results",
        "Show every guest: its state, whether it has a saved image (size, age), its effective\n"
        "autostart, and what the last shutdown and boot passes did to it. With a UPS in the\n"
        "policy's 'power:', a last line on it: on line or on battery, the runtime, charge and\n"
        "load it reports, or why it cannot be read. A held saved image that will not resume on\n"
        "the QEMU installed now, or was saved by another QEMU or libvirt, is said under the table.")
    p = add("report", "draw the last shutdown and boot passes as a timeline",
            "Draw the last shutdown and boot passes, from the records in the state directory, as a\n"
            "timeline per guest: waiting for the guests it is after or for a slot, saving, the fallback\n"
            "steps, resuming, readiness checks; and how many saves or starts ran at once. In the\n"
            "terminal a bar chart of 80 columns; with --svg also a picture.")
    p.add_argument("--svg", metavar="FILE", default=None, help="also draw the timeline as SVG into FILE (replaced atomically; a "
                        "link, a FIFO or a device there is refused, exit 2)")


def _add_admin_commands(add: Callable[..., argparse.ArgumentParser]) -> None:
    """images, watch, sample-policy."""
    p = add("images", "list or remove the images and records kept for inspection",
            "List what mgsave keeps for inspection: saved images that could not be resumed (beside\n"
            "libvirt's, in mgsave-failed-images/ under its save directory, or in the state directory's\n"
            "failed-images/), or were left in mgsave-resuming/ there by a boot pass that died while it\n"
            "resumed them with channels, or could not be restored (failed-images/), and records that\n"
            "could not be trusted, set aside (last-*.json.untrusted-<time>), with their size; and\n"
            "remove them by name, or all of them. mgsave never removes them on its own, and removes\n"
            "nothing from a state directory others can write to (exit 2) unless given\n"
            "--insecure-state-dir.")
    p.add_argument("images_command", nargs="?", choices=["list", "remove"], default="list", metavar="list|remove",
                   help="list (the default) or remove")
    p.add_argument("names", nargs="*", metavar="NAME", help="remove: the kept files, named as 'list' shows them")
    p.add_argument("--all", dest="remove_all", action="store_true", help="remove: every kept file")
    p.add_argument("--dry-run", action="store_true", help="remove: say what would be removed; remove nothing")
    add("watch", "start the shutdown pass as soon as logind announces a shutdown",
        "Hold a logind shutdown delay lock and wait. When logind announces a shutdown\n"
        "(PrepareForShutdown, broadcast by the owner of org.freedesktop.login1; a signal from\n"
        "anyone else is ignored), stop mgsave.service, whose ExecStop= is the shutdown pass, wait\n"
        "for that stop to end and let the lock go. If the shutdown is then cancelled, say loudly\n"
        "that the saved guests stay off ('mgsave boot' brings them back), start mgsave.service\n"
        "again and wait with a new lock. mgsave-early.service runs this; without it, on a\n"
        "host where libvirt itself holds a delay lock (libvirt 11 does while guests run), the\n"
        "pass begins only after logind's InhibitDelayMaxSec (5 s by default). Needs jeepney\n"
        "(python3-jeepney); without it, or without logind, it says so and exits 0.")
    p = add("power", POWER_WATCH_HELP[0], POWER_WATCH_HELP[1])
    p.add_argument("power_command", choices=["watch"], metavar="watch",
                   help="follow the UPS and start the host's shutdown when the battery runs short")
    add("sample-policy", "print a policy with every key explained (the built-in defaults)",
        "Print a policy file generated from the policy's schema: every key commented out with its\n"
        "meaning and its built-in default, and example rules, commented out too. As printed it means\n"
        "the built-in defaults, so 'mgsave sample-policy > /etc/mgsave/policy.yaml' changes nothing\n"
        "until a setting is uncommented; 'mgsave check' then validates it. It is the file the package\n"
        "installs as /etc/mgsave/policy.yaml.")


def _add_passes(add: Callable[..., argparse.ArgumentParser]) -> None:
    """shutdown and boot."""
    for name, text in (
        ("shutdown", "Save every running guest, running each guest's on_shutdown fallback chain\n"
                     "(save -> shutdown -> poweroff by default), saves in parallel up to\n"
                     "limits.max_parallel_saves, within limits.shutdown_deadline. Records which guests\n"
                     "were running in the state directory before touching any. Guests started (or\n"
                     "migrated here) meanwhile are handled too, once they run here. A saved image is\n"
                     "flushed to disk before the guest counts as saved. With a UPS in 'power:', on\n"
                     "battery the deadline is no later than its runtime less power.margin, and moves\n"
                     "down while the runtime falls (read every power.poll): the guests not yet begun\n"
                     "are then planned again, the lowest priority moved first from its save to its\n"
                     "chain's cheaper steps; a UPS that cannot be read leaves\n"
                     "limits.shutdown_deadline, and the pass says so."),
        ("boot", "Start or resume guests per their autostart setting: 'always', 'if-running' (only\n"
                 "those running at the last shutdown) or 'never'. Guests already running are left\n"
                 "alone, so running it twice changes nothing. A guest the last shutdown migrated to a\n"
                 "peer and defined here again starts only when the peer says it does not run there\n"
                 "(left off, exit 10, when the peer cannot be asked). A guest whose saved image will\n"
                 "not resume on the QEMU installed now (see 'mgsave status') is not tried: its image\n"
                 "is kept and its on_resume_failure applied."),
    ):
        p = add(name, f"run the {name} pass", text)
        p.add_argument("--dry-run", action="store_true",
                       help="print the plan and the summary the real pass would give; change nothing")
        p.add_argument("--wait", type=_wait_duration, metavar="SECONDS", default=None,
                       help="how long to wait for another pass to finish, 0 for not at all (default: "
                            "the deadline for shutdown, 300 for boot)")
        if name == "boot":
            p.add_argument("--restore-unrecorded", action="store_true",
                           help="also restore transient guests' save files under <state>/images that no record "
                                "names (by default they are kept and reported)")
        if name == "shutdown":
            _kind_flags(p, "the host goes down by")
            p.add_argument("--deadline", type=_deadline_duration, metavar="SECONDS", default=None,
                           help="override limits.shutdown_deadline for this pass (more than the 10 s "
                                "kept for the fallback steps, at most 7 days)")
            p.add_argument("--if-host-going-down", action="store_true",
                           help="run the pass only if the host is going down or its guests are about to be "
                                "stopped (asked of systemd and logind; run anyway when they cannot be asked); "
                                "else save nothing and arm mgsave.service again. mgsave.service's stop uses it")


def _add_migrations(add: Callable[..., argparse.ArgumentParser]) -> None:
    """evacuate and return."""
    for name, text in (
        ("evacuate", "Live-migrate every running guest that has migrate.peers to the first peer that can\n"
                     "take it (reachable, same hypervisor, enough free memory), now, in parallel up to\n"
                     "limits.max_parallel_migrations. A guest no peer can take stays running here. The\n"
                     "shutdown record says where each one went (see 'mgsave status'); its other entries\n"
                     "stay as the last shutdown pass wrote them (the next boot pass still resumes the\n"
                     "guests saved then)."),
        ("return", "Migrate home, now, the guests the last shutdown pass or 'mgsave evacuate' sent to a\n"
                   "peer and whose policy has migrate.come_back, in the boot order. A guest whose peer\n"
                   "does not answer (within 15 s), or whose migration fails, stays there (reported,\n"
                   "exit 10) and in the records: later passes still count it on its peer until it\n"
                   "is back."),
    ):
        p = add(name, f"migrate guests {'to their peers' if name == 'evacuate' else 'home from their peers'}",
                text)
        p.add_argument("--dry-run", action="store_true", help="print the plan; change nothing")
        p.add_argument("--wait", type=_wait_duration, metavar="SECONDS", default=None,
                       help="how long to wait for another pass to finish, 0 for not at all")
        if name == "evacuate":
            p.add_argument("--deadline", type=_deadline_duration, metavar="SECONDS", default=None,
                           help="how long the migrations may take in all (default: limits.shutdown_deadline)")


_NUMBER = re.compile(r"[-+]?([0-9.]+(e[-+]?[0-9]+)?|inf|nan)", re.IGNORECASE)


def _duration(text: str, **bounds) -> float:
    """A duration from the command line, spelt as in the policy (``90``, ``90s``, ``5m``), within
    the bounds the policy's durations have: the code sleeps on it."""
    from libmgsave.policyfile.cross_field import duration_problem
    from libmgsave.policyfile.settings import parse_duration
    try:
        # Any number first (-60, inf, 1e12), so that the bounds say what is wrong with it.
        seconds = float(text) if _NUMBER.fullmatch(text.strip()) else parse_duration(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (seconds, or 90s, 5m, 1h30m, 1h 30min)") from None
    problem = duration_problem(seconds, **bounds)
    if problem:
        raise argparse.ArgumentTypeError(f"{problem}, not {text!r}")
    return seconds


def _wait_duration(text: str) -> float:
    return _duration(text, zero_ok=True)


def _deadline_duration(text: str) -> float:
    from libmgsave.policy import DEADLINE_RESERVE
    return _duration(text, longer_than=DEADLINE_RESERVE)


def _kind_flags(p: argparse.ArgumentParser, what: str) -> None:
    """--reboot, --poweroff: which kind of shutdown, so which chain (on_reboot, on_shutdown)."""
    group = p.add_mutually_exclusive_group()
    group.add_argument("--reboot", dest="shutdown_kind", action="store_const", const="reboot",
                       help=f"{what} a reboot: each guest's on_reboot chain (default: the kind is not known, "
                            "so on_shutdown)")
    group.add_argument("--poweroff", dest="shutdown_kind", action="store_const", const="poweroff",
                       help=f"{what} a power-off: each guest's on_shutdown chain")


def commands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """The commands an admin types, by name, with their parsers (not the hidden ones)."""
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return {name: sub for name, sub in action.choices.items() if not name.startswith("_")}
