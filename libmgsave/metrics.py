"""The metrics file: a pass's results in Prometheus' text format, for node_exporter's textfile collector.

Written after each shutdown and boot pass (never after a dry run) to the policy's
``metrics.textfile``. Every pass writes the one file: each replaces its own samples (those
labelled with its ``pass``: ``shutdown``, ``boot``, ``evacuate``, ``return``) and keeps the
others', so the file always says how the last pass of each kind went (an evacuation is not the
last shutdown, a return not the last boot). The file is replaced atomically; a file that cannot be
written, or something else than a regular file in its place (a link, a FIFO: never followed nor
waited for), is logged and never stops a pass.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

from libmgsave.outcomes import Outcome, PassResult
from libmgsave.safefiles import FileTooBig, UnsafeFile, read_small_file, write_file

log = logging.getLogger("mgsave")

# name -> help; every family is a gauge (a pass's values replace the last pass's).
FAMILIES = {
    "mgsave_pass_duration_seconds": "How long the last pass took.",
    "mgsave_pass_last_run_timestamp_seconds": "When the last pass ended (Unix time).",
    "mgsave_pass_success": "1 when every guest of the last pass got its first choice, every "
                           "connection answered and every record was written (exit 0); else 0.",
    "mgsave_pass_guests": "Guests of the last pass, by outcome.",
    "mgsave_guest_seconds": "How long the last pass spent on the guest.",
    "mgsave_guest_bytes": "The bytes the last pass saved or restored for the guest.",
    "mgsave_guest_ok": "1 when the guest got its first choice in the last pass; else 0 (degraded or failed).",
}
_SAMPLE = re.compile(r'^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(?P<labels>\{.*\})?\s+\S+')


def label_value(text: str) -> str:
    """``text`` escaped as the format asks inside a label's double quotes."""
    return text.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _sample(name: str, labels: dict[str, str], value: float) -> str:
    inner = ",".join(f'{key}="{label_value(str(text))}"' for key, text in labels.items())
    number = repr(float(value)) if isinstance(value, float) else str(int(value))  # repr: exact, and short
    return f"{name}{{{inner}}} {number}"


def pass_samples(result: PassResult, label: str) -> dict[str, list[str]]:
    """This pass's samples, by family, labelled ``pass=label``."""
    samples: dict[str, list[str]] = {name: [] for name in FAMILIES}
    at = {"pass": label}
    samples["mgsave_pass_duration_seconds"].append(_sample("mgsave_pass_duration_seconds", at,
                                                           result.finished - result.started))
    samples["mgsave_pass_last_run_timestamp_seconds"].append(
        _sample("mgsave_pass_last_run_timestamp_seconds", at, result.finished))
    samples["mgsave_pass_success"].append(_sample("mgsave_pass_success", at, int(result.complete)))
    counts = dict.fromkeys((o for o in Outcome if o is not Outcome.PLANNED), 0)
    for guest in result.results:
        counts[guest.outcome] = counts.get(guest.outcome, 0) + 1
    for outcome, count in counts.items():
        samples["mgsave_pass_guests"].append(_sample("mgsave_pass_guests", {**at, "outcome": str(outcome)}, count))
    for guest in result.results:
        if guest.outcome is Outcome.SKIPPED:
            continue  # nothing was done: a series per idle guest would only be noise
        who = {**at, "connection": guest.plan.guest.connection, "guest": guest.plan.guest.name}
        samples["mgsave_guest_seconds"].append(_sample("mgsave_guest_seconds", who, guest.seconds))
        samples["mgsave_guest_bytes"].append(_sample("mgsave_guest_bytes", who, guest.bytes))
        samples["mgsave_guest_ok"].append(_sample("mgsave_guest_ok", who, int(guest.ok)))
    return samples


def other_passes_samples(text: str, kind: str) -> dict[str, list[str]]:
    """The samples of the file ``text`` not of pass ``kind``, by family (ours only: unknown
    families and lines are dropped)."""
    kept: dict[str, list[str]] = {name: [] for name in FAMILIES}
    mine = f'pass="{label_value(kind)}"'
    for line in text.splitlines():
        match = _SAMPLE.match(line)
        if match and match["name"] in FAMILIES and mine not in (match["labels"] or ""):
            kept[match["name"]].append(line)
    return kept


def render(result: PassResult, previous: str = "", label: str | None = None) -> str:
    """The whole file: this pass's samples (labelled ``label``, by default the pass's kind) and
    the other passes' from ``previous``."""
    label = label or str(result.kind)
    kept = other_passes_samples(previous, label)
    ours = pass_samples(result, label)
    lines = []
    for name, help_text in FAMILIES.items():
        lines += [f"# HELP {name} {help_text}", f"# TYPE {name} gauge", *sorted(kept[name] + ours[name])]
    return "\n".join(lines) + "\n"


# Our own file is a few hundred bytes a guest; one far larger is not ours to carry samples over from.
MAX_TEXTFILE_BYTES = 16 * 1024 * 1024


def write_textfile(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` atomically, readable by everyone (the units' UMask=0077
    would keep node_exporter out); the temporary name ends in .tmp, which node_exporter skips.
    Raises UnsafeFile when something else than a regular file is at ``path``."""
    write_file(path, text, mode=0o644, durable=False, suffix=".tmp")


def previous_text(path: Path) -> str:
    """The file as the last pass left it; "" when there is none or it is not ours (too big, not
    text: logged). Raises UnsafeFile when it is a link, a FIFO, a device: never read, never
    waited for."""
    try:
        return read_small_file(path, MAX_TEXTFILE_BYTES).decode("utf-8")
    except FileNotFoundError:
        return ""
    except UnicodeDecodeError:
        log.warning("the metrics file %s is not text; the other passes' samples in it are dropped", path)
        return ""
    except FileTooBig as why:  # a regular file, only too big: replaced with ours
        log.warning("the metrics file %s: %s; the other passes' samples in it are dropped", path, why)
        return ""


def export(textfile: str | None, result: PassResult, label: str | None = None) -> None:
    """Write the metrics file after a pass, if the policy asks for one, its samples labelled
    ``pass=label`` (by default the pass's kind); never raises, never blocks on what is at the
    path (a FIFO, a link: refused, logged)."""
    if not textfile or result.dry_run:
        return
    path = Path(textfile)
    try:
        write_textfile(path, render(result, previous_text(path), label))
    except UnsafeFile as why:
        log.error("cannot write the metrics file %s (%s); the pass goes on", path, why)
    except Exception as error:  # noqa: BLE001 - the metrics are never worth a pass
        reason = f"{error.strerror}: {error.filename}" if isinstance(error, OSError) else repr(error)
        log.error("cannot write the metrics file %s (%s); the pass goes on", path, reason)
    else:
        log.debug("metrics written to %s", path)
