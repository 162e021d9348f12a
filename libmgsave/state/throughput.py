"""The save rate each connection showed at the last shutdown pass, kept in the record for the
next pass's estimates.

A rate is learned per connection (each has its own disks and CPUs, or is another host
altogether), and kept until a later pass measures that connection again. It is learned only
from real saves: never from libvirt's test driver (its saves write nothing; one pass on it
measured 450 GB/s, which would make the next real deadline plan wrong a thousandfold), never
from less than ``MIN_SAMPLE_SECONDS`` of saving, and always bounded to what a host can do.
The record is data from disk: what it says is checked here again before it is used.
"""

from __future__ import annotations

import math
import time

from libmgsave import units
from libmgsave.history import DEFAULT_SAVE_THROUGHPUT, Action, SaveRate

RECORD_KEY = "save_rates"  # in the shutdown record: {uri: {bytes_per_second, measured, memory_bytes, seconds}}
# Bounds of a plausible aggregate save rate, in guest memory per second (pages never touched are
# not written, so it may beat the disk): 1 MB/s is a host in trouble; 20 GB/s is beyond any
# measured here by two orders of magnitude, and still a bound for a large server.
MIN_RATE = 1e6
MAX_RATE = 20e9
MIN_SAMPLE_SECONDS = 1.0  # less saving than this says more about caches than about the host
_SAVES = (Action.SAVE, Action.SAVE_TO_FILE)


def is_test_driver(uri: str) -> bool:
    """libvirt's test driver (``test:///default``, ``test+unix:///...``): it saves nothing real."""
    return uri.split(":", 1)[0].split("+", 1)[0] == "test"


def bounded(rate: float) -> float:
    return min(max(rate, MIN_RATE), MAX_RATE)


def measured_rates(results, now: float | None = None) -> dict[str, dict]:
    """This pass's save rate on each connection it saved guests on, in the planner's unit: bytes
    of guest memory saved per second (the planner estimates a save from the guest's memory size;
    the image is smaller, see docs/PERFORMANCE.md), from the first save's start to the last one's end."""
    by_connection: dict[str, list] = {}
    for r in results:
        for step in r.steps:
            if step.ok and step.action in _SAVES:
                by_connection.setdefault(r.plan.guest.connection, []).append((r.plan.guest.memory_bytes, step))
    rates = {}
    for uri, saves in by_connection.items():
        span = max(s.finished for _m, s in saves) - min(s.started for _m, s in saves)
        memory = sum(m for m, _s in saves)
        if is_test_driver(uri) or span < MIN_SAMPLE_SECONDS or memory <= 0:
            continue
        rates[uri] = {"bytes_per_second": memory / span, "measured": time.time() if now is None else now,
                      "memory_bytes": memory, "seconds": round(span, 3)}
    return rates


def kept_rates(previous: dict | None, measured: dict[str, dict]) -> dict[str, dict]:
    """The rates the new record keeps: the last record's, for connections this pass did not
    measure, and this pass's."""
    kept = {uri: entry for uri, entry in _recorded(previous).items()}
    kept.update(measured)
    return kept


def learned_rates(record: dict | None, connections) -> dict[str, SaveRate]:
    """The rate the planner assumes on each connection, and where it came from."""
    recorded = _recorded(record)
    rates = {}
    for uri in connections:
        entry = recorded.get(uri)
        if is_test_driver(uri):
            rates[uri] = SaveRate(DEFAULT_SAVE_THROUGHPUT, "built-in default (libvirt's test driver: its saves say "
                                                           "nothing of a real host, so none is learned)")
        elif entry is None:
            rates[uri] = SaveRate(DEFAULT_SAVE_THROUGHPUT, "built-in default (no shutdown pass has measured "
                                                           "this connection yet)")
        else:
            rates[uri] = _learned(entry)
    return rates


def _learned(entry: dict) -> SaveRate:
    rate = entry["bytes_per_second"]
    when = time.strftime("%Y-%m-%d %H:%M", time.localtime(entry["measured"]))
    source = (f"measured by the shutdown pass of {when}: {units.size(entry['memory_bytes'])} in "
              f"{units.duration(entry['seconds'])}")
    if bounded(rate) != rate:
        source += f" ({units.rate(rate)}, bounded to {units.rate(bounded(rate))})"
    return SaveRate(bounded(rate), source)


def _recorded(record: dict | None) -> dict[str, dict]:
    """The record's rates that are well formed, by connection (the others are ignored)."""
    table = record.get(RECORD_KEY) if isinstance(record, dict) else None
    if not isinstance(table, dict):
        return {}
    return {uri: entry for uri, entry in table.items() if isinstance(uri, str) and not is_test_driver(uri)
            and _well_formed(entry)}


def _well_formed(entry) -> bool:
    if not isinstance(entry, dict):
        return False
    values = [entry.get(k) for k in ("bytes_per_second", "measured", "memory_bytes", "seconds")]
    return all(isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) and v > 0 for v in values)
