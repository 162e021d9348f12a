"""A power cut replayed: guests of different priorities on the real test rig (a private libvirtd,
TCG guests with a serial heartbeat; tests/rig), a real UPS daemon (NUT's upsd with its dummy-ups
driver on loopback; tests/nutrig.py) whose battery runs down, second by second, from --runtime
to zero, and mgsave as a host runs it on a UPS:

  mgsave power watch   follows the UPS (poll 1 s) and runs its shutdown command (here: it
                       leaves a mark, which the benchmark takes as ``systemctl poweroff``) when
                       the runtime left is no more than what the shutdown plan needs plus the
                       margin
  mgsave plan shutdown the plan at that moment (--json: its need, which guests it saves)
  mgsave shutdown      the pass, on battery, as mgsave.service runs it at the poweroff

When the runtime reaches zero the power is cut: every guest still running is destroyed. Reported
for each discharge:

- the prediction error: the pass's duration against the seconds the plan said it needs
  (target: within 10%);
- the guests safe before the cut (saved, image flushed, or shut down, before it) among those the
  plan promised to save (target: all of them);
- how long before the cut the host began to go down (the watch's command), against NUT's
  upsmon, which has no threshold of its own: it shuts the host down when the UPS raises its
  low-battery flag, by default when the runtime falls to the UPS's ``battery.runtime.low``
  (--upsmon-low, 120 s: the usual value of APC units as usbhid-ups reports it; others use 300);
- the flush of each image (``fdatasync``, from the pass's log), with and without bypass_cache.

Root, scripts/setup (the rig's tools), and Debian's nut-server and nut-client.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from bench.common import (URI, dump_json, machine_description, median, mgsave_command, note, say,
                          spread, table, tempdir)

PREFIX = "pw"
UPS = "ups1"
SAFE = ("saved", "saved-to-file", "shut-down")
FLUSHED = re.compile(r"(\S+): image flushed to disk in ([0-9.]+) s")


@dataclass(frozen=True)
class Discharge:
    """What one replayed power cut gave (seconds; epochs are time.time())."""

    bypass_cache: bool
    needed: float               # the plan's need when the watch fired
    took: float                 # the pass's own duration
    lead: float                 # from the watch's command to the cut
    promised: tuple[str, ...]   # the guests the plan saves
    safe: tuple[str, ...]       # the guests saved or shut down before the cut
    flushes: tuple[float, ...]  # each image's flush
    deadline: float             # the pass's deadline on battery
    outcomes: tuple[str, ...]   # each guest's, by name: "pw-1 saved"
    estimate: float = float("nan")  # the plan's own end of its saves (its need less what it keeps back)

    @property
    def error(self) -> float:
        """The pass's duration against the plan's need: +0.10 is 10% longer than predicted."""
        return (self.took - self.needed) / self.needed if self.needed else float("nan")

    @property
    def estimate_error(self) -> float:
        """The pass's duration against the plan's estimate of its saves alone."""
        return (self.took - self.estimate) / self.estimate if self.estimate else float("nan")

    @property
    def promised_safe(self) -> float:
        return len(set(self.promised) & set(self.safe)) / len(self.promised) if self.promised else 1.0

    def to_dict(self) -> dict:
        return {**self.__dict__, "error": self.error, "estimate_error": self.estimate_error,
                "promised_safe": self.promised_safe}


def promised(plan_document: dict) -> tuple[str, ...]:
    """The guests ``mgsave plan shutdown --json`` saves (first choice a save, not dropped)."""
    [plan] = [p for p in plan_document["plans"] if p["pass"] == "shutdown"]
    return tuple(g["name"] for g in plan["guests"]
                 if g["actions"] and g["actions"][0] in ("save", "save-to-file") and not g["save_dropped_because"])


def saves_estimate(plan_document: dict) -> float:
    """When the shutdown plan expects its last save to end, from the pass's start (seconds)."""
    [plan] = [p for p in plan_document["plans"] if p["pass"] == "shutdown"]
    return max((g.get("estimated_save_end_seconds") or 0.0 for g in plan["guests"]), default=0.0)


def safe_before(result: dict, cut_epoch: float) -> tuple[str, ...]:
    """The guests of a pass's --json result saved or shut down by ``cut_epoch``."""
    from libmgsave.jsonout import epoch

    out = []
    for guest in result["guests"]:
        finished = [epoch(s["finished"]) for s in guest["steps"] if s.get("finished")]
        if guest["outcome"] in SAFE and finished and max(finished) <= cut_epoch:
            out.append(guest["name"])
    return tuple(out)


# --- the replay ---------------------------------------------------------------------------------


class Replay:
    """The rig, its guests, the UPS, and the mgsave commands of one host."""

    def __init__(self, args, work: Path):
        self.args, self.work = args, work
        self.mgsave = mgsave_command()
        self.state_dir = Path("/var/lib/mgsave/bench-power")  # inside the rig's private mounts
        self.rig = self.conn = self.nut = None
        self.names: list[str] = []

    def start(self) -> None:
        from tests import nutrig
        from tests.rig import Rig, define_guests, ensure_image, start_and_wait_ticking

        why = nutrig.missing()
        if why:
            raise SystemExit(f"bench/run power: {why}")
        ensure_image()
        self.rig = Rig()
        self.rig.start()
        self.conn = self.rig.connect()
        self.nut = nutrig.NutRig(self.work / "nut", {UPS: {"ups.status": "OL", "battery.runtime": "3600"}})
        (self.work / "nut").mkdir(mode=0o700)
        self.nut.start()
        self.names = define_guests(self.conn, self.args.guests, memory_mib=self.args.memory,
                                   fill_mib=self.args.fill, prefix=PREFIX)
        start_and_wait_ticking(self.conn, self.names, timeout=120 + 40 * len(self.names))

    def stop(self) -> None:
        if self.nut is not None:
            self.nut.stop()
        if self.conn is not None:
            self.conn.close()
        if self.rig is not None:
            self.rig.stop()

    def policy(self, bypass_cache: bool, mark: Path) -> Path:
        """Every guest saved, the n-th with priority 10 x n; the UPS of the replay."""
        rules = "".join(f"  - match: {{name: {name}}}\n    priority: {10 * i}\n" for i, name in enumerate(self.names))
        path = self.work / f"policy-{int(bypass_cache)}.yaml"
        path.write_text(
            f"version: 1\nconnections: ['{URI}']\nlimits:\n  shutdown_deadline: 10min\n"
            f"defaults:\n  bypass_cache: {str(bypass_cache).lower()}\n  on_shutdown: [save, shutdown, poweroff]\n"
            f"guests:\n{rules}"
            f"power:\n  ups: {UPS}@127.0.0.1:{self.nut.port}\n  margin: {self.args.margin:g}s\n  poll: 1s\n"
            f"  shutdown_command: [{shutil.which('touch')}, '{mark}']\n")
        path.chmod(0o644)
        return path

    def command(self, policy: Path, *argv: str) -> list[str]:
        return [*self.mgsave, "--policy", str(policy), "--state-dir", str(self.state_dir), *argv]

    def runtime_at(self, t0: float) -> float:
        return max(0.0, self.args.runtime - self.args.rate * (time.monotonic() - t0))

    def discharge(self, bypass_cache: bool) -> Discharge:
        """One power cut, from the mains failing to the battery's end; the guests are running
        again (resumed) when it returns."""
        mark = self.work / "shutdown-started"
        mark.unlink(missing_ok=True)
        policy = self.policy(bypass_cache, mark)
        watch_log = self.work / "watch.log"
        with open(watch_log, "w") as log:
            watch = subprocess.Popen(self.command(policy, "power", "watch"), stdout=log, stderr=log)
        try:
            _wait_for(lambda: "watching the UPS" in watch_log.read_text(), watch, "the watch to start")
            t0 = time.monotonic()
            self.nut.set(UPS, {"ups.status": "OB DISCHRG", "battery.runtime": str(int(self.args.runtime))})
            while not mark.exists():
                if not self._tick(t0):
                    raise RuntimeError("the battery ran out: the watch never started the host's shutdown")
            fired = time.monotonic()
        finally:
            watch.terminate()
            watch.wait(timeout=60)
        note(f"  the watch started the shutdown at {self.runtime_at(t0):.0f} s of runtime")
        plan = json.loads(self._run(self.command(policy, "--json", "plan", "shutdown")))
        result, stderr, cut = self._pass(policy, t0)
        self.nut.set(UPS, {"ups.status": "OL", "battery.runtime": "3600"})
        self._resume()
        cut_at = t0 + self.args.runtime / self.args.rate
        return Discharge(bypass_cache, needed=plan["ups_fit"]["needed_seconds"], took=result["duration_seconds"],
                         lead=cut_at - fired, promised=promised(plan), safe=safe_before(result, cut),
                         flushes=tuple(float(s) for _n, s in FLUSHED.findall(stderr)),
                         deadline=result["battery"]["seconds"],
                         outcomes=tuple(sorted(f"{g['name']} {g['outcome']}" for g in result["guests"])),
                         estimate=saves_estimate(plan))

    def _pass(self, policy: Path, t0: float) -> tuple[dict, str, float]:
        """The shutdown pass while the battery runs down; at zero the power is cut (every guest
        still running destroyed). Returns its --json result, its log and the cut's epoch."""
        import libvirt

        out, err = self.work / "pass.json", self.work / "pass.log"
        with open(out, "w") as stdout, open(err, "w") as stderr:
            running = subprocess.Popen(self.command(policy, "--json", "shutdown"), stdout=stdout, stderr=stderr)
        while running.poll() is None and self._tick(t0):
            pass
        while self.runtime_at(t0) > 0:  # the host is off; the battery runs down all the same
            time.sleep(min(1.0, self.runtime_at(t0) / self.args.rate))
        cut = time.time()
        for dom in self.conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE):
            note(f"  the power is cut: {dom.name()} was still running")
            dom.destroy()
        running.wait(timeout=600)
        return json.loads(out.read_text()), err.read_text(), cut

    def _tick(self, t0: float) -> bool:
        """A moment of the discharge: the UPS's runtime follows the clock. False once it is out."""
        left = self.runtime_at(t0)
        if left <= 0:
            return False
        self.nut.set(UPS, {"battery.runtime": str(int(left))})
        time.sleep(0.2)
        return True

    def _run(self, argv: list[str]) -> str:
        result = subprocess.run(argv, capture_output=True, text=True, timeout=600)
        if result.returncode not in (0, 1):
            raise RuntimeError(f"{' '.join(argv)} exited {result.returncode}:\n{result.stderr[-3000:]}")
        return result.stdout

    def _resume(self) -> None:
        from tests.rig import start_and_wait_ticking
        start_and_wait_ticking(self.conn, self.names, timeout=120 + 40 * len(self.names))


def _wait_for(condition, process: subprocess.Popen, what: str, timeout: float = 120) -> None:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while not condition():
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"gave up waiting for {what}")
        time.sleep(0.1)


# --- the run and its report ---------------------------------------------------------------------


def run(args) -> dict:
    modes = {"off": [False], "on": [True], "both": [False, True]}[args.bypass_cache]
    work = tempdir("power")
    replay = Replay(args, work)
    data = {"machine": machine_description(), "args": {k: str(v) for k, v in vars(args).items()}, "discharges": []}
    try:
        replay.start()
        for r in range(args.rounds):
            for bypass in modes:
                note(f"round {r + 1}/{args.rounds}, bypass_cache {str(bypass).lower()}: the mains fail")
                d = replay.discharge(bypass)
                data["discharges"].append(d.to_dict())
                note(f"  plan {d.needed:.1f} s (its saves {d.estimate:.1f} s), pass {d.took:.1f} s ({d.error:+.0%}; "
                     f"against the saves' estimate {d.estimate_error:+.0%}), {len(d.safe)} safe, "
                     f"down {d.lead:.0f} s before the cut")
    except BaseException:
        note(f"the commands' output is kept in {work}")
        raise
    finally:
        replay.stop()
    shutil.rmtree(work, ignore_errors=True)
    _print(data, args)
    dump_json(args.json, data)
    return data


def _print(data: dict, args) -> None:
    say(f"## A power cut replayed: {args.guests} guests x {args.memory} MiB ({args.fill} MiB filled), "
        f"priorities 0..{10 * (args.guests - 1)}, runtime {args.runtime:g} s falling {args.rate:g} s a second, "
        f"margin {args.margin:g} s\n")
    rows = []
    for bypass in ("false", "true"):
        ds = [d for d in data["discharges"] if str(d["bypass_cache"]).lower() == bypass]
        if not ds:
            continue
        promised_n = sum(len(d["promised"]) for d in ds)
        safe_n = sum(len(set(d["promised"]) & set(d["safe"])) for d in ds)
        rows.append([bypass, spread([d["needed"] for d in ds]), spread([d["took"] for d in ds]),
                     f"{median([d['error'] for d in ds]):+.0%} ({min(d['error'] for d in ds):+.0%}"
                     f" to {max(d['error'] for d in ds):+.0%})",
                     spread([d["estimate"] for d in ds]),
                     f"{median([d['estimate_error'] for d in ds]):+.0%} ({min(d['estimate_error'] for d in ds):+.0%}"
                     f" to {max(d['estimate_error'] for d in ds):+.0%})",
                     f"{safe_n} of {promised_n}", spread([d["lead"] for d in ds], digits=0),
                     spread([f for d in ds for f in d["flushes"]], digits=3)])
    say(table(["bypass_cache", "plan's need (with what the pass keeps back)", "the pass took",
               "against the need", "the plan's saves", "prediction error of the saves (target within 10%)",
               "promised guests safe before the cut", "host went down before the cut",
               "flush of an image"], rows))
    say("\n" + table(["discharge", "bypass_cache", "the watch's trigger", "the pass's deadline on battery", "outcomes"],
                      [[n + 1, str(d["bypass_cache"]).lower(), f"{d['lead']:.0f} s before the cut",
                        f"{d['deadline']:.0f} s", ", ".join(d["outcomes"])] for n, d in enumerate(data["discharges"])]))
    say(f"\nupsmon would have begun the host's shutdown {args.upsmon_low:g} s before the cut (the UPS's "
        f"low-battery flag at battery.runtime.low = {args.upsmon_low:g} s).")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench/run power", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--guests", type=int, default=4, help="guests, of priorities 0, 10, 20... (default 4)")
    p.add_argument("--memory", type=int, default=256, help="MiB of RAM per guest (default 256)")
    p.add_argument("--fill", type=int, default=128, help="MiB of random data each guest holds (default 128)")
    p.add_argument("--runtime", type=float, default=90, help="the battery's runtime when the mains fail (default 90 s)")
    p.add_argument("--rate", type=float, default=1.0,
                   help="seconds of runtime lost per second (default 1: a steady load)")
    p.add_argument("--margin", type=float, default=10, help="power.margin of the policy (default 10 s)")
    p.add_argument("--upsmon-low", type=float, default=120,
                   help="the UPS's battery.runtime.low, where upsmon would shut the host down (default 120 s)")
    p.add_argument("--bypass-cache", choices=("off", "on", "both"), default="both",
                   help="the guests' bypass_cache in the discharges (default both: one discharge each a round)")
    p.add_argument("--rounds", type=int, default=1, help="discharges per bypass_cache setting (default 1)")
    p.add_argument("--json", type=Path, help="also write every measurement to this JSON file")
    args = p.parse_args(argv)
    if args.margin >= args.runtime or args.rate <= 0:
        p.error("--margin must be less than --runtime, and --rate more than 0")
    run(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
