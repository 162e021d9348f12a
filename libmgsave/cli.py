"""The ``mgsave`` command: the context, dispatch, and the one error handler.

Each command is an action (``libmgsave.actions``), reached through ``DISPATCH``, that returns a
typed result; the exit code is that result's own (``ActionResult.exit_code``). Errors are mgsave's own exceptions, turned into a message and
an exit code in ``main`` (a traceback only with ``--debug``).
"""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING

from libmgsave import interrupt
from libmgsave.arguments import COMPLETE_GUESTS, PASSES, build_parser
from libmgsave.context import Context
from libmgsave.errors import ExitCode, MgsaveError

if TYPE_CHECKING:
    from libmgsave.actions import ActionResult

log = logging.getLogger("mgsave")

def _host_shutdown(args: argparse.Namespace):
    from libmgsave.history import HostShutdown, ShutdownKind
    kind = getattr(args, "shutdown_kind", None)
    return HostShutdown(ShutdownKind(kind), f"--{kind} was given") if kind else None


def build_context(args: argparse.Namespace, environ) -> Context:
    """The global options, derived once from the arguments and the environment."""
    from libmgsave import policyfile
    from libmgsave.state import StateDir, state_dir_from
    policy_path, explicit = policyfile.policy_path_from(getattr(args, "policy", None), environ)
    return Context(
        command=args.command, policy_path=policy_path, policy_explicit=explicit,
        state=StateDir(state_dir_from(getattr(args, "state_dir", None), environ),
                       trust_insecure=getattr(args, "insecure_state_dir", False)),
        connect=tuple(getattr(args, "connect", None) or ()), default_uri=environ.get("LIBVIRT_DEFAULT_URI") or None,
        json=getattr(args, "json", False),
        debug=getattr(args, "debug", False), trust_insecure=getattr(args, "insecure_policy", False),
    )


# Each command's entry: its own options from the arguments, handed to its action. The action's
# module is imported only when its command runs: a pass loads nothing of the other commands.

def _check(ctx: Context, args: argparse.Namespace) -> ActionResult:
    from libmgsave.actions import check
    return check.run_check(ctx, strict=args.strict)


def _plan(ctx: Context, args: argparse.Namespace) -> ActionResult:
    from libmgsave.actions import plan
    words = args.which or []
    which = words[0] if words and words[0] in PASSES else None
    return plan.run_plan(ctx, plan.PlanOptions(which=which, guests=tuple(words[1:] if which else words),
                                               verbose=args.verbose, host_shutdown=_host_shutdown(args)))


def _status(ctx: Context, args: argparse.Namespace) -> ActionResult:
    from libmgsave.actions import status
    return status.run_status(ctx)


def _report(ctx: Context, args: argparse.Namespace) -> ActionResult:
    from libmgsave.actions import report
    return report.run_report(ctx, svg_path=args.svg)


def _images(ctx: Context, args: argparse.Namespace) -> ActionResult:
    from libmgsave.actions import images
    return images.run_images(ctx, images.ImagesOptions(remove=args.images_command == "remove",
                                                       names=tuple(args.names or ()), remove_all=args.remove_all,
                                                       dry_run=args.dry_run))


def _watch(ctx: Context, args: argparse.Namespace) -> ActionResult:
    from libmgsave.actions import watch
    return watch.run_watch(ctx)


def _sample_policy(ctx: Context, args: argparse.Namespace) -> ActionResult:
    from libmgsave.actions import sample_policy
    return sample_policy.run_sample_policy(ctx)


def _complete_guests(ctx: Context, args: argparse.Namespace) -> ActionResult:
    from libmgsave.actions import complete_guests
    return complete_guests.run_complete_guests(ctx)


def _power(ctx: Context, args: argparse.Namespace) -> ActionResult:
    from libmgsave.actions import power_watch  # 'power watch', its one word
    return power_watch.run_power_watch(ctx)


def _pass_options(args: argparse.Namespace):
    from libmgsave.actions.passes import PassOptions
    return PassOptions(dry_run=args.dry_run, wait=args.wait, deadline=getattr(args, "deadline", None))


def _shutdown(ctx: Context, args: argparse.Namespace) -> ActionResult:
    from libmgsave.actions import shutdown
    return shutdown.run_shutdown(ctx, _pass_options(args), if_host_going_down=args.if_host_going_down,
                                 host_shutdown=_host_shutdown(args))


def _boot(ctx: Context, args: argparse.Namespace) -> ActionResult:
    from libmgsave.actions import boot
    return boot.run_boot(ctx, _pass_options(args), restore_unrecorded=args.restore_unrecorded)


def _evacuate(ctx: Context, args: argparse.Namespace) -> ActionResult:
    from libmgsave.actions import evacuate
    return evacuate.run_evacuate(ctx, _pass_options(args))


def _return(ctx: Context, args: argparse.Namespace) -> ActionResult:
    from libmgsave.actions import return_
    return return_.run_return(ctx, _pass_options(args))


DISPATCH: Mapping[str, Callable[[Context, argparse.Namespace], ActionResult]] = MappingProxyType({
    "check": _check, "plan": _plan, "status": _status, "report": _report, "images": _images, "watch": _watch,
    "power": _power, "sample-policy": _sample_policy, COMPLETE_GUESTS: _complete_guests,
    "shutdown": _shutdown, "boot": _boot, "evacuate": _evacuate, "return": _return,
})


def dispatch(ctx: Context, args: argparse.Namespace) -> ActionResult:
    """Run the command's action (its entry in ``DISPATCH``); its result says the exit code."""
    return DISPATCH[ctx.command](ctx, args)


def notify_failure(command: str, message: str) -> None:
    """Leave ``systemctl status mgsave`` saying why a pass stopped, not "starting"."""
    if command in ("shutdown", "boot"):
        from libmgsave import notify
        notify.status(f"{command} pass failed: {message}")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from libmgsave import console, journal

    console.reset(full=getattr(args, "full", False))
    journal.setup_logging(debug=getattr(args, "debug", False))
    if args.command in ("shutdown", "boot"):
        interrupt.install()
    try:
        return int(dispatch(build_context(args, os.environ), args).exit_code())
    except MgsaveError as error:
        notify_failure(args.command, error.message)
        for line in error.message.splitlines():  # one log line each: newlines in log text are escaped
            log.error("%s", line)
        if error.hint:
            log.error("hint: %s", error.hint)
        return int(error.exit_code)
    except KeyboardInterrupt:
        log.error("interrupted")
        return 130
    except Exception:
        if getattr(args, "debug", False):
            raise
        log.exception("internal error (please report it; --debug shows more)")
        return int(ExitCode.INTERNAL)
