"""``python -m bench COMMAND [options]`` (from the repository root; ``bench/run`` does that).

    compare    save-all / resume-all: mgsave vs libvirt-guests vs plain parallel virsh, on the
               real test rig (root; tests/rig), plus sweeps over the guest count and parallelism;
               --on debian13 runs it inside the cached Debian 13 root (libvirt 11); every figure
               also as a share of the disk's limit, measured in the same run; --big: one guest
               as large as the machine allows
    hostcycle  a whole host's poweroff and boot (systemd as PID 1, the .deb installed): mgsave vs
               libvirt 11's own auto-shutdown vs libvirt-guests vs the floor
    deadline   a shutdown deadline that fits about half of 8 guests: which are saved, which shut down
    scale      mgsave plan / status / shutdown --dry-run with 1,000 and 10,000 guests (libvirt's
               test driver): time and peak memory; --profile: function calls per guest
    startup    the start-up cost of the mgsave command and what it imports
    policy     mgsave check on policy files of 250 to 4,000 rules with mistakes: linear in the size
    evacuate   4 guests to a peer host: mgsave evacuate in parallel vs one at a time vs saving
               them (the two-host rig: root; tests/rig/peers.py)
    power      a power cut replayed on a real UPS daemon (NUT's dummy-ups) with guests of
               different priorities: mgsave power watch, the plan and the pass against the
               battery (the rig and Debian's nut-server: root)

Each prints its figures as Markdown tables on stdout (progress on stderr); --help for options.
"""

from __future__ import annotations

import sys

COMMANDS = ("compare", "hostcycle", "deadline", "scale", "startup", "policy", "evacuate", "power")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        print(__doc__)
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    command, rest = argv[0], argv[1:]
    module = __import__(f"bench.{command}", fromlist=["main"])
    return module.main(rest)


if __name__ == "__main__":
    sys.exit(main())
