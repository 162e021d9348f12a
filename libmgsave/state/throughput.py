"""The save rate a shutdown pass measured, kept in its record for the next pass's estimates."""

from __future__ import annotations

from libmgsave.plan import Action

_SAVES = (Action.SAVE, Action.SAVE_TO_FILE)


def measured_throughput(results) -> float | None:
    """This pass's aggregate save rate, in the planner's unit: bytes of guest memory saved per
    second (the planner estimates a save from the guest's memory size; the image is smaller, as
    pages never touched are not written, so a rate of image bytes would make the next estimates
    too long by that ratio, about 1.4 on the benchmark's guests; see docs/PERFORMANCE.md)."""
    saves = [(r.plan.guest.memory_bytes, s) for r in results for s in r.steps if s.ok and s.action in _SAVES]
    if not saves:
        return None
    span = max(s.finished for _m, s in saves) - min(s.started for _m, s in saves)
    memory = sum(m for m, _s in saves)
    return memory / span if span > 0 and memory > 0 else None


def learned_throughput(record: dict | None) -> float | None:
    """The rate the last shutdown pass measured, if its record has one."""
    return record.get("measured_throughput") if record else None
