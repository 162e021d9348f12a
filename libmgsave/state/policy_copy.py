"""The last valid policy: a copy of the policy file kept whenever ``check`` or a pass accepted it,
for a pass to run on when the file is broken later (a typo must not start a ``never`` guest or
replace a migration with a save, as the built-in defaults would).

One copy per policy file (by its absolute path), ``last-valid-policy-<hash of the path>.json`` in
the state directory: the file's bytes as text, their SHA-256, the path, when and by what it was
accepted. Written atomically, 0600. Read like a record (a regular file, never through a link,
bounded), root's (or ours) and not writable by others, of this format, for this path, its
digest matching; anything else is refused with the reason, never trusted.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

from libmgsave.safefiles import UnsafeFile, read_small_file, write_file
from libmgsave.state.trust import refuse_unless_ours

COPY_FORMAT = "mgsave-policy-copy"
COPY_VERSION = 1
# A policy file is at most 1 MiB (policyfile.MAX_FILE_BYTES); as JSON text up to six times that.
MAX_COPY_BYTES = 8 * 1024 * 1024


class CopyUnusable(Exception):
    """The copy is there but may not be used (why, as a sentence's end)."""


@dataclass(frozen=True)
class PolicyCopy:
    """The last policy file a pass accepted, as kept in the state directory."""
    source: str  # the policy file's absolute path
    data: bytes  # its bytes when they were accepted
    digest: str  # "sha256:<hex>" of ``data``
    saved: float  # when (epoch)
    accepted_by: str  # "mgsave check", "the shutdown pass"...


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def copy_path(state_dir: Path, source: str) -> Path:
    key = hashlib.sha256(os.path.abspath(source).encode("utf-8", "surrogateescape")).hexdigest()[:16]
    return state_dir / f"last-valid-policy-{key}.json"


def keep(state_dir: Path, source: str, data: bytes, accepted_by: str) -> PolicyCopy | None:
    """Keep ``data``, the bytes of the valid policy file ``source``, as its last valid copy; the
    new copy, or None when the same bytes are kept already (their first acceptance is the one
    that counts). Raises OSError when it cannot be written."""
    source = os.path.abspath(source)
    digest = digest_of(data)
    try:
        current = read(state_dir, source)
    except CopyUnusable:  # replaced by this one
        current = None
    if current is not None and current.digest == digest:
        return None
    copy = PolicyCopy(source, data, digest, time.time(), accepted_by)
    state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    document = {"format": COPY_FORMAT, "version": COPY_VERSION, "source": source, "digest": digest,
                "saved": copy.saved, "accepted_by": accepted_by,
                # valid policy files are UTF-8 (the reader refuses anything else): kept byte for byte
                "policy": data.decode("utf-8")}
    # the copy's own name: whatever is there is replaced, never written through
    write_file(copy_path(state_dir, source), json.dumps(document, indent=1) + "\n", mode=0o600,
               replace_anything=True)
    return copy


def read(state_dir: Path, source: str) -> PolicyCopy | None:
    """The last valid copy of the policy file ``source``, or None when there is none. Raises
    CopyUnusable when there is one that must not be used."""
    source = os.path.abspath(source)
    path = copy_path(state_dir, source)
    try:
        raw = read_small_file(path, MAX_COPY_BYTES, check=refuse_unless_ours)
    except FileNotFoundError:
        return None
    except UnsafeFile as why:
        raise CopyUnusable(f"{path}: {why}") from None
    except OSError as error:
        raise CopyUnusable(f"{path}: cannot be read ({error.strerror})") from None
    try:
        document = json.loads(raw.decode("utf-8"))
    except (ValueError, RecursionError):
        raise CopyUnusable(f"{path}: not valid JSON; the file is damaged") from None
    return _copy_of(document, path, source)


def _copy_of(document: object, path: Path, source: str) -> PolicyCopy:
    """The copy a document holds, every field checked."""
    if not isinstance(document, dict) or document.get("format") != COPY_FORMAT:
        raise CopyUnusable(f"{path}: not a copy of a policy kept by mgsave")
    if document.get("version") != COPY_VERSION:
        raise CopyUnusable(f"{path}: of format {document.get('version')!r}; this mgsave reads {COPY_VERSION}")
    text, digest, saved = document.get("policy"), document.get("digest"), document.get("saved")
    accepted_by = document.get("accepted_by")
    if document.get("source") != source:
        raise CopyUnusable(f"{path}: a copy of {document.get('source')!r}, not of {source}")
    if not (isinstance(text, str) and isinstance(digest, str) and isinstance(accepted_by, str)
            and isinstance(saved, (int, float)) and not isinstance(saved, bool) and math.isfinite(saved)):
        raise CopyUnusable(f"{path}: a field is missing or of the wrong type; the file is damaged")
    try:
        data = text.encode("utf-8")
    except UnicodeEncodeError:
        raise CopyUnusable(f"{path}: the policy in it is not UTF-8 text; the file is damaged") from None
    if digest_of(data) != digest:
        raise CopyUnusable(f"{path}: the policy in it does not match its digest; the file is damaged")
    return PolicyCopy(source, data, digest, float(saved), accepted_by)
