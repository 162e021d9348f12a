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
from libmgsave.state.writer import RecordWriter, write_json_atomic

__all__ = [
    "BOOT_RECORD", "DEFAULT_STATE_DIR", "RECORD_FORMAT", "RECORD_VERSION", "SHUTDOWN_RECORD", "GuestEntry",
    "RecordError", "RecordWriter", "StateDir", "guest_record_key", "read_record", "state_dir_from",
    "write_json_atomic",
]

DEFAULT_STATE_DIR = "/var/lib/mgsave"


def state_dir_from(cli_value: str | None, environ) -> Path:
    """``--state-dir`` wins, then systemd's ``$STATE_DIRECTORY`` (first entry), then the default."""
    if cli_value:
        return Path(cli_value)
    from_systemd = environ.get("STATE_DIRECTORY")
    if from_systemd:
        return Path(from_systemd.split(":")[0])
    return Path(environ.get("MGSAVE_STATE_DIR") or DEFAULT_STATE_DIR)


@dataclass(frozen=True)
class StateDir:
    """The paths of one state directory, and its records read the way every command reads them."""

    path: Path

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

    def transient_image(self, uuid: str) -> str:
        return str(self.images / f"{uuid}.save")

    def last_shutdown(self, *, quiet: bool = False, warnings: list[str] | None = None) -> dict | None:
        return read_trusted(self.shutdown_record, "shutdown", quiet=quiet, warnings=warnings)

    def last_boot(self, *, quiet: bool = False, warnings: list[str] | None = None) -> dict | None:
        return read_trusted(self.boot_record, "boot", quiet=quiet, warnings=warnings)

    def set_aside_untrusted(self, kind: str, warnings: list[str]) -> None:
        path = self.shutdown_record if kind == "shutdown" else self.boot_record
        set_aside_untrusted(path, kind, warnings)
