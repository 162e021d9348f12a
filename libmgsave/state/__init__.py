"""The state directory: the durable record of what each pass did, and the files kept beside it.

Default ``/var/lib/mgsave`` (``$STATE_DIRECTORY`` under systemd, ``--state-dir`` to override).
Everything that reads or writes it goes through this package:

    records     the record format, its typed entries, reading and validating, setting aside
    writer      atomic writes, and the background writer of a pass's record
    carry_over  which entries a new shutdown record starts with (pure)
    images      transient guests' save files, images kept after a failed resume
    throughput  the save rate learned from the last pass

A record is written atomically (temporary file, fsync, rename, fsync of the directory), so a
power loss leaves either the old or the new record, never half of one. The shutdown record is
written before the first guest is touched, so the list of guests that were running survives
even if mgsave is killed mid-pass.
"""

from __future__ import annotations

import functools
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from libmgsave.state.records import (
    BOOT_RECORD,
    RECORD_FORMAT,
    RECORD_VERSION,
    SHUTDOWN_RECORD,
    GuestEntry,
    RecordError,
    guest_record_key,
    read_record,
    read_trusted,
    set_aside_untrusted,
)
from libmgsave.state.trust import insecure_because, insecure_subdirectory
from libmgsave.state.writer import RecordWriter, write_json_atomic

__all__ = [
    "BOOT_RECORD", "DEFAULT_STATE_DIR", "RECORD_FORMAT", "RECORD_VERSION", "SHUTDOWN_RECORD", "GuestEntry",
    "RecordError", "RecordWriter", "StateDir", "guest_record_key", "read_record", "state_dir_from",
    "write_json_atomic",
]

DEFAULT_STATE_DIR = "/var/lib/mgsave"

log = logging.getLogger("mgsave")


def state_dir_from(cli_value: str | None, environ) -> Path:
    """The state directory, absolute: ``--state-dir`` wins, then systemd's ``$STATE_DIRECTORY`` (first entry), then the default."""
    if cli_value:
        chosen = cli_value
    elif environ.get("STATE_DIRECTORY"):
        chosen = environ["STATE_DIRECTORY"].split(":")[0]
    else:
        chosen = environ.get("MGSAVE_STATE_DIR") or DEFAULT_STATE_DIR
    # Absolute once and for all: the records name files under it, and a pass may change directory.
    return Path(os.path.abspath(chosen))


@dataclass(frozen=True)
class StateDir:
    """The paths of one state directory, and its records read the way every command reads them.

    A directory others can write to (``insecure``) is still written to (a pass must save its
    guests, transient ones into ``images/``), but nothing is read from it: no record, no save
    file to restore. ``trust_insecure`` (``--insecure-state-dir``) reads it all the same."""

    path: Path
    trust_insecure: bool = False

    @functools.cached_property
    def insecure(self) -> str | None:
        """Why the directory may not be trusted (others can write to it), or None."""
        if self.trust_insecure:
            return None
        return (insecure_because(self.path) or insecure_subdirectory(self.images)
                or insecure_subdirectory(self.failed_images))

    def insecure_warning(self) -> str:
        return (f"the state directory {self.path} is not safe: {self.insecure}; its records and save files "
                f"are not trusted (guests are still saved into it; fix its ownership and mode with chown root "
                f"and chmod go-w, or pass --insecure-state-dir)")

    @property
    def shutdown_record(self) -> Path:
        return self.path / SHUTDOWN_RECORD

    @property
    def boot_record(self) -> Path:
        return self.path / BOOT_RECORD

    @property
    def images(self) -> Path:
        """Save files of transient guests (they have no managed-save slot)."""
        return self.path / "images"

    @property
    def failed_images(self) -> Path:
        """Images that could not be resumed or restored, kept for inspection."""
        return self.path / "failed-images"

    def last_shutdown(self, *, quiet: bool = False, warnings: list[str] | None = None) -> dict | None:
        if self.insecure:
            return self._refuse_insecure(quiet, warnings)
        return read_trusted(self.shutdown_record, "shutdown", quiet=quiet, warnings=warnings)

    def last_boot(self, *, quiet: bool = False, warnings: list[str] | None = None) -> dict | None:
        if self.insecure:
            return self._refuse_insecure(quiet, warnings)
        return read_trusted(self.boot_record, "boot", quiet=quiet, warnings=warnings)

    def _refuse_insecure(self, quiet: bool, warnings: list[str] | None) -> None:
        message = self.insecure_warning()
        if not quiet:
            log.error("%s", message)
        if warnings is not None and message not in warnings:
            warnings.append(message)
        return None

    def set_aside_untrusted(self, kind: str, warnings: list[str]) -> None:
        path = self.shutdown_record if kind == "shutdown" else self.boot_record
        set_aside_untrusted(path, kind, warnings)
