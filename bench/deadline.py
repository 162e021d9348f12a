"""A shutdown deadline that fits about half of the guests.

On the real test rig: 8 guests (512 MiB, 300 MiB filled, obeying ACPI shutdown requests), four
of them (the last four by name) with a higher ``priority``. The deadline is set from mgsave's own
estimate (``mgsave plan shutdown --json``) so that about half of the saves fit: the planner must
save the high-priority half, send the other half straight to their next step (an ACPI shutdown),
and no save may be cut off half-way. Then ``mgsave boot``: saved guests resume where they were
(heartbeat goes on), shut-down guests boot fresh.

It prints the plan as mgsave shows it, the outcome per guest with the estimated and the actual
end of each save, and how the planner's assumption (aggregate save throughput, image size =
guest memory) compares with what this machine did.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from bench.common import (dump_json, foreign_guests, load_average, machine_description,
                          mgsave_command, note, run_timed, say, table, tempdir, write_policy)

PREFIX = "dl"


def assumed_rate(plan: dict) -> float:
    """The save rate the plan assumes on the rig's connection (bytes of guest memory per second)."""
    return plan["save_rates"]["qemu:///system"]["bytes_per_second"]


def run(args) -> dict:
    from libmgsave.jsonout import epoch
    from libmgsave.plan import DEADLINE_RESERVE, DEFAULT_SAVE_THROUGHPUT
    from tests.rig import (Rig, SAVE_DIR, boots, define_guests, ensure_image, last_tick,
                           start_and_wait_ticking, state_reason, wait_for_tick_after)

    ensure_image()
    work = tempdir("deadline")
    log = work / "commands.log"
    mgsave = mgsave_command()
    data: dict = {"machine": machine_description(), "args": vars(args),
                  "foreign_qemu_at_start": foreign_guests()}
    rig = Rig()
    rig.start()
    try:
        state_dir = Path("/var/lib/mgsave/bench-deadline")
        conn = rig.connect()
        names = define_guests(conn, args.guests, memory_mib=args.memory, fill_mib=args.fill, prefix=PREFIX)
        high = names[len(names) // 2:]
        note(f"booting {len(names)} guests")
        start_and_wait_ticking(conn, names, timeout=120 + 40 * len(names))
        boots_before = {n: boots(n) for n in names}
        extra = ("guests:\n"
                 "  - name: the important half, saved first\n"
                 f"    match: {{name: [{', '.join(high)}]}}\n"
                 "    priority: 10\n")

        def mg(*argv: str, policy: Path, out: Path | None = None, check: bool = True) -> float:
            return run_timed(mgsave + ["--policy", str(policy), "--state-dir", str(state_dir), *argv],
                             log=log, stdout_file=out, check=check)[0]

        # 1. mgsave's own estimate, with a generous deadline: where would each save end?
        probe = write_policy(work / "probe", deadline=3600, extra=extra)
        mg("--json", "plan", "shutdown", policy=probe, out=work / "probe.json")
        plan = json.loads((work / "probe.json").read_text())["plans"][0]
        estimates = sorted(g["estimated_save_end_seconds"] for g in plan["guests"] if g["estimated_save_end_seconds"])
        half = len(estimates) // 2
        deadline = round(DEADLINE_RESERVE + (estimates[half - 1] + estimates[half]) / 2, 1)
        if args.deadline:
            deadline = args.deadline
        data["assumed_throughput"] = assumed_rate(plan)
        data["deadline"] = deadline

        # 2. The plan under that deadline, as an admin sees it.
        policy = write_policy(work / "policy", deadline=deadline, extra=extra)
        say(f"## Deadline-aware shutdown: {len(names)} guests x {args.memory} MiB ({args.fill} MiB filled), "
            f"deadline {deadline:g} s\n")
        say(f"Assumed aggregate save throughput: {assumed_rate(plan) / 1e6:.0f} MB/s "
            f"(DEFAULT_SAVE_THROUGHPUT = {DEFAULT_SAVE_THROUGHPUT / 1e6:.0f} MB/s; no pass measured yet); "
            f"{DEADLINE_RESERVE:g} s of the deadline are kept for the last step.\n")
        say("`mgsave plan shutdown`:\n")
        (work / "plan.txt").unlink(missing_ok=True)
        mg("plan", "shutdown", policy=policy, out=work / "plan.txt")
        say("```\n" + (work / "plan.txt").read_text().rstrip() + "\n```\n")

        # 3. The pass.
        before = {n: last_tick(n) for n in names}
        os.sync()
        time.sleep(1)
        data["foreign_qemu_at_pass"] = foreign_guests()
        data["load_at_pass"] = load_average()
        t0 = time.time()
        seconds = mg("--json", "shutdown", policy=policy, out=work / "shutdown.json", check=False)
        result = json.loads((work / "shutdown.json").read_text())
        data["shutdown_seconds"] = seconds
        est = {g["name"]: g for g in json.loads((work / "probe.json").read_text())["plans"][0]["guests"]}
        rows, problems = [], []
        saved_bytes = saved_memory = 0
        save_spans = []
        for g in sorted(result["guests"], key=lambda g: g["name"]):
            name = g["name"]
            st = state_reason(conn, name)
            saves = [s for s in g["steps"] if s["action"] == "save"]
            save_end = f"{epoch(saves[0]['finished']) - t0:.1f} s" if saves and saves[0]["ok"] else "-"
            estimate = est[name]["estimated_save_end_seconds"]
            if saves and saves[0]["ok"]:
                saved_bytes += saves[0]["written_bytes"] or 0
                saved_memory += est[name]["memory_bytes"]
                save_spans.append((epoch(saves[0]["started"]), epoch(saves[0]["finished"])))
            if any(not s["ok"] for s in saves) or any("abort" in m for m in g["messages"]):
                problems.append(f"{name}: a save was cut off or failed: {g['steps']} {g['messages']}")
            if g["outcome"] not in ("saved", "shut-down"):
                problems.append(f"{name}: ended {g['outcome']}, neither saved nor shut down")
            if g["outcome"] == "saved" and st != ("shutoff", "saved"):
                problems.append(f"{name}: recorded saved but libvirt says {st}")
            if g["outcome"] == "shut-down" and st != ("shutoff", "shutdown"):
                problems.append(f"{name}: recorded shut down but libvirt says {st}")
            rows.append([name, 10 if name in high else 0, " -> ".join(s["action"] for s in g["steps"]) or "-",
                         g["outcome"], f"{estimate:.1f} s" if estimate else "-", save_end,
                         "; ".join(m for m in g["messages"] if "skipped" in m) or ""])
        if seconds > deadline:
            problems.append(f"the pass took {seconds:.1f} s, past the {deadline:g} s deadline")
        say(f"`mgsave shutdown` took {seconds:.1f} s (deadline {deadline:g} s):\n")
        say(table(["guest", "priority", "steps run", "outcome", "estimated save end (3600 s deadline)",
                   "actual save end", "note"], rows))
        if save_spans:
            span = max(e for _s, e in save_spans) - min(s for s, _e in save_spans)
            data["measured"] = {"image_bytes": saved_bytes, "memory_bytes": saved_memory, "span": span}
            say(f"\nSaved: {len(save_spans)} guests, {saved_bytes / 1e6:.0f} MB of images for "
                f"{saved_memory / 1e6:.0f} MB of guest memory in {span:.1f} s: "
                f"{saved_bytes / span / 1e6:.0f} MB/s of image, {saved_memory / span / 1e6:.0f} MB/s of guest "
                f"memory (the planner's unit), against {assumed_rate(plan) / 1e6:.0f} MB/s assumed; "
                f"images are {saved_bytes / saved_memory:.0%} of guest memory.")
            images = [os.path.getsize(os.path.join(SAVE_DIR, f"{n}.save")) for n in names
                      if os.path.exists(os.path.join(SAVE_DIR, f"{n}.save"))]
            data["images"] = images

        # 4. What the next pass would assume, having measured this one.
        (work / "replan.json").unlink(missing_ok=True)
        mg("--json", "plan", "shutdown", policy=probe, out=work / "replan.json", check=False)
        replan = json.loads((work / "replan.json").read_text())["plans"][0]
        data["next_assumed_throughput"] = assumed_rate(replan)
        say(f"\nThe next pass's estimate uses the measured throughput recorded by this one: "
            f"{assumed_rate(replan) / 1e6:.0f} MB/s.")

        # 5. Boot: saved guests resume, shut-down guests boot fresh.
        mg("--json", "boot", policy=policy, out=work / "boot.json", check=False)
        boot = json.loads((work / "boot.json").read_text())
        brows = []
        outcome_of = {g["name"]: g["outcome"] for g in result["guests"]}
        for g in sorted(boot["guests"], key=lambda g: g["name"]):
            name = g["name"]
            st = state_reason(conn, name)
            if outcome_of[name] == "saved":
                wait_for_tick_after(name, before[name], timeout=60)
                ok = st == ("running", "restored") and boots(name) == boots_before[name]
                what = "resumed: heartbeat went on" if ok else f"NOT resumed ({st})"
            else:
                give_up = time.monotonic() + 120
                while boots(name) <= boots_before[name] and time.monotonic() < give_up:
                    time.sleep(0.5)
                ok = st[0] == "running" and boots(name) == boots_before[name] + 1
                what = "booted fresh (its memory state was not saved)" if ok else f"unexpected ({st})"
            if not ok:
                problems.append(f"{name}: after boot: {what}")
            brows.append([name, outcome_of[name], g["outcome"], what])
        say("\n`mgsave boot`:\n")
        say(table(["guest", "at shutdown", "at boot", "check"], brows))
        data["problems"] = problems
        data["result"] = result
        data["boot"] = boot
        say("\n" + ("every guest ended saved or shut down; no save was cut off" if not problems
                    else "PROBLEMS:\n" + "\n".join(problems)))
        if data["foreign_qemu_at_pass"]:
            say(f"(the machine was busy: {data['foreign_qemu_at_pass']} other QEMU processes, "
                f"load {data['load_at_pass']})")
        conn.close()
    finally:
        rig.stop()
    dump_json(args.json, data)
    subprocess.run(["rm", "-rf", str(work)], check=False)
    return data


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench/run deadline", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--guests", type=int, default=8)
    p.add_argument("--memory", type=int, default=512, help="MiB per guest")
    p.add_argument("--fill", type=int, default=300, help="MiB of random data per guest")
    p.add_argument("--deadline", type=float, help="seconds (default: from mgsave's estimate, fitting half)")
    p.add_argument("--json", type=Path, help="also write the results to this JSON file")
    args = p.parse_args(argv)
    data = run(args)
    return 1 if data.get("problems") else 0


if __name__ == "__main__":
    sys.exit(main())
