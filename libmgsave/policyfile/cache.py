"""The validated policy, kept so that a pass does not validate an unchanged file again.

Reading YAML with marks and checking it against the JSON Schema takes most of a pass's start-up
(importing jsonschema alone takes longer than everything a boot pass does before its first
start). A valid policy is so kept, as built, in ``validated-policy-<hash of the path>.json`` in
the state directory, under a key of everything the ``Policy`` built from the file depends on:
the path as named, the SHA-256 of the file's bytes as read now, mgsave's version, the schema's
SHA-256 and what ``auto`` parallelism is on this machine. Any other key is a miss.

Not the last valid copy (``state.policy_copy``), though both are per policy file: the copy is the
admin's evidence (its first acceptance, kept across upgrades and reported when it is unusable),
while this is derived data that any mgsave version rewrites and that is silently thrown away
when it is damaged, foreign, of another key or of another format. It is trusted only when it is
root's (or ours), not writable by group or others and not a link, like the copy; it is neither
read nor written in a state directory others can write to (the callers pass none then).
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType

from libmgsave import __version__, policy as policy_model
from libmgsave.policy import Policy, default_parallelism
from libmgsave.safefiles import read_small_file, write_file
from libmgsave.state.trust import refuse_unless_ours

log = logging.getLogger("mgsave")

CACHE_FORMAT = "mgsave-validated-policy"
CACHE_VERSION = 1
# A policy file is at most 1 MiB (policyfile.MAX_FILE_BYTES); built and tagged, a few times that.
MAX_CACHE_BYTES = 8 * 1024 * 1024
SCHEMA_FILE = Path(__file__).resolve().parent.parent / "policy.schema.yaml"

# What a cached policy may be made of: the model's own dataclasses and enums, nothing else.
_TYPES = {name: value for name, value in vars(policy_model).items()
          if isinstance(value, type) and value.__module__ == policy_model.__name__
          and (dataclasses.is_dataclass(value) or issubclass(value, enum.Enum))}


def cache_path(state_dir: Path, source: str) -> Path:
    key = hashlib.sha256(os.path.abspath(source).encode("utf-8", "surrogateescape")).hexdigest()[:16]
    return state_dir / f"validated-policy-{key}.json"


def cache_key(source: str, data: bytes) -> dict:
    """Everything the Policy built from ``data`` (the file ``source``) depends on."""
    try:
        schema = "sha256:" + hashlib.sha256(SCHEMA_FILE.read_bytes()).hexdigest()
    except OSError:
        schema = None  # not shipped where expected: validation will say so; never a hit
    return {"source": source, "digest": "sha256:" + hashlib.sha256(data).hexdigest(), "mgsave": __version__,
            "schema": schema, "auto_parallelism": default_parallelism()}


def cached_policy(state_dir: Path, source: str, data: bytes) -> Policy | None:
    """The Policy validated and built from ``data`` before, or None (nothing kept, another key,
    a file that is damaged, foreign or a link). Never raises: a cache is never an error."""
    path = cache_path(state_dir, source)
    try:
        raw = read_small_file(path, MAX_CACHE_BYTES, check=refuse_unless_ours)
        document = json.loads(raw.decode("utf-8"))
        key = cache_key(source, data)
        if (not isinstance(document, dict) or document.get("format") != CACHE_FORMAT
                or document.get("version") != CACHE_VERSION or document.get("key") != key or key["schema"] is None):
            return None
        policy = _decode(document["policy"])
    except FileNotFoundError:
        return None
    except Exception as error:  # noqa: BLE001 - damaged or foreign: validated afresh, and rewritten
        log.debug("not using %s: %s", path, error)
        return None
    return policy if isinstance(policy, Policy) and policy.source == source else None


def remember(state_dir: Path, source: str, data: bytes, policy: Policy) -> None:
    """Keep ``policy``, validated and built from ``data``, for the next pass. Whatever is at the
    cache's name is replaced (never written through); a failure is logged, never raised."""
    try:
        document = {"format": CACHE_FORMAT, "version": CACHE_VERSION, "key": cache_key(source, data),
                    "policy": _encode(policy)}
        state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        # not fsynced: after a power loss an empty or old file is only a miss
        write_file(cache_path(state_dir, source), json.dumps(document) + "\n", mode=0o600, durable=False,
                   replace_anything=True)
    except Exception as error:  # noqa: BLE001 - the next pass validates the file again, that is all
        log.debug("could not keep the validated policy in %s: %s", state_dir, error)


def _encode(value: object) -> object:
    """``value`` as JSON data, every non-scalar tagged with its type."""
    if isinstance(value, enum.Enum):
        return {"enum": type(value).__name__, "value": value.value}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {"class": type(value).__name__,
                "fields": {f.name: _encode(getattr(value, f.name)) for f in dataclasses.fields(value)}}
    if isinstance(value, tuple):
        return {"tuple": [_encode(item) for item in value]}
    if isinstance(value, Mapping):
        return {"mapping": [[key, _encode(item)] for key, item in value.items()]}
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"a policy holds no {type(value).__name__}")


def _decode(value: object) -> object:
    """What ``_encode`` gave, back as the model's objects; ValueError, KeyError or TypeError
    for anything else."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if not isinstance(value, dict) or len(value) not in (1, 2):
        raise ValueError("not a tagged value")
    if "enum" in value:
        return _known(value["enum"], enum.Enum)(value["value"])
    if "class" in value:
        cls = _known(value["class"], object)
        if not dataclasses.is_dataclass(cls):
            raise ValueError(f"{value['class']} is not a dataclass")
        return cls(**{str(name): _decode(item) for name, item in value["fields"].items()})
    if "tuple" in value:
        return tuple(_decode(item) for item in value["tuple"])
    if "mapping" in value:
        return MappingProxyType({str(key): _decode(item) for key, item in value["mapping"]})
    raise ValueError("not a tagged value")


def _known(name: object, base: type) -> type:
    cls = _TYPES.get(name) if isinstance(name, str) else None
    if cls is None or not issubclass(cls, base):
        raise ValueError(f"not a type of the policy: {name!r}")
    return cls
