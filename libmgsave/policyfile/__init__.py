"""Reading a policy file: YAML with line/column marks, validated against the schema, into a Policy.

``load_policy`` either returns a ``Policy`` or raises ``PolicyError`` listing every problem
found, each located by file, line, column and key path. Nothing else escapes it, whatever the
file's bytes: YAML bombs, deep nesting, bad encodings and duplicate keys are problems too.

The schema (``config/policy.schema.yaml``, shipped as ``libmgsave/policy.schema.yaml``) is the
single source of truth for what a policy may contain. The reading goes in stages, a module each:

    files          the file: opened safely, refused when others than root could write it
    marks          YAML into plain data, with the line and column of every key and value
    schema_errors  the schema check, its errors turned into located problems with hints
    cross_field    what a schema cannot say (durations as strings, a guest after itself)
    settings       one table of the per-guest settings: how each is built and written out
    build          the Policy model from a document that passed every check
    cache          that model kept in the state directory, for a pass on the same bytes
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass

from pathlib import Path

from libmgsave.errors import PolicyError, Problem
from libmgsave.policy import BUILTIN_POLICY, DEFAULT_POLICY_PATH, Metrics, Policy, Power
from libmgsave.policyfile import cache
from libmgsave.policyfile.build import policy_to_dict
from libmgsave.policyfile.files import MAX_FILE_BYTES, read_policy_file
from libmgsave.policyfile.settings import parse_duration, setting_to_json

# Imported when first used, not with the package: yaml (marks) and jsonschema (schema_errors,
# cross_field) take most of a pass's start-up, and a pass on a cached policy needs neither.
_LAZY = {"MAX_NODES": "marks", "format_path": "marks", "policy_schema": "schema_errors"}


def __getattr__(name: str) -> object:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "DEFAULT_POLICY_PATH",
    "MAX_FILE_BYTES",
    "MAX_NODES",
    "POLICY_ENV_VAR",
    "PassPolicyFile",
    "format_path",
    "load_policy",
    "load_policy_for_pass",
    "parse_duration",
    "parse_policy",
    "policy_path_from",
    "policy_schema",
    "policy_to_dict",
    "read_policy_file",
    "read_policy_for_pass",
    "setting_to_json",
]

POLICY_ENV_VAR = "MGSAVE_POLICY"


def load_policy(path: str, *, trust_insecure: bool = False) -> Policy:
    """Read, validate and build the policy in ``path``.

    Raises ``PolicyError`` listing every problem: unreadable or missing file, a file writable by
    others than root (unless ``trust_insecure``), YAML errors, schema violations, cross-field
    errors. Never raises anything else.
    """
    data = read_policy_file(path, trust_insecure=trust_insecure)
    return parse_policy(data, path)


def parse_policy(data: bytes | str, source: str) -> Policy:
    """Validate and build a policy from the file contents ``data``; ``source`` names the file.

    Raises ``PolicyError`` as ``load_policy`` does (without the file-system checks).
    """
    policy, problems, _document = _parse_document(data, source)
    if problems:
        raise PolicyError(problems)
    assert policy is not None
    return policy


@dataclass(frozen=True)
class PassPolicyFile:
    """What a pass read of its policy file: the policy, or the problems and what of the broken
    file could still be read (its connections, its metrics file, its UPS, when those are valid)."""

    policy: Policy | None  # None: broken (or named and missing); the built-in policy when the default is missing
    problems: tuple[Problem, ...] = ()
    data: bytes | None = None  # the bytes of a valid file (for its last valid copy)
    connections: tuple[str, ...] = ()  # a broken file's ``connections:``, when valid
    metrics_textfile: str | None = None  # a broken file's ``metrics.textfile``, when valid
    power: Power | None = None  # a broken file's ``power:``, when valid

    def on(self, fallback: Policy) -> Policy:
        """``fallback`` (the last valid copy, or the built-in defaults) for a broken file: with
        the file's valid connections added (they replace the built-in ones), so that no
        connection's guests are left out, its metrics file, so that the monitoring hears, and
        its UPS, so that the pass still plans against the battery."""
        policy = fallback
        if self.connections:
            base = () if fallback.is_builtin else fallback.connections
            policy = policy.with_connections(tuple(dict.fromkeys((*base, *self.connections))))
        if self.metrics_textfile:
            policy = dataclasses.replace(policy, metrics=Metrics(self.metrics_textfile))
        if self.power:
            policy = dataclasses.replace(policy, power=self.power)
        return policy


def read_policy_for_pass(path: str, *, explicit: bool, trust_insecure: bool = False,
                         cache_dir: Path | None = None) -> PassPolicyFile:
    """The policy file for a shutdown or boot pass, which must never lose a guest over a typo:
    never raises. The built-in policy when the default file is simply missing (``explicit`` is
    false); the problems when the file is broken, unreadable, insecure, or was named explicitly
    and is missing, for the caller to log loudly and carry on with a fallback (``on``).

    ``cache_dir`` (a trusted state directory): a file validated before with the same bytes is not
    validated again (``cache``), and a valid one is kept there for the next pass."""
    if not explicit and not os.path.lexists(path):
        return PassPolicyFile(BUILTIN_POLICY)
    try:
        data = read_policy_file(path, trust_insecure=trust_insecure)
        cached = cache.cached_policy(cache_dir, path, data) if cache_dir is not None else None
        if cached is not None:
            return PassPolicyFile(cached, (), data)
        policy, problems, document = _parse_document(data, path)
    except PolicyError as error:
        return PassPolicyFile(None, tuple(error.problems))
    except Exception as error:  # a bug here must not cost a guest its save: report it, carry on
        return PassPolicyFile(None, (Problem(path, None, None, "", f"internal error reading the policy: {error!r}"),))
    if not problems:
        if cache_dir is not None and policy is not None:
            cache.remember(cache_dir, path, data, policy)
        return PassPolicyFile(policy, (), data if isinstance(data, bytes) else None)
    from libmgsave.policyfile.cross_field import salvage_connections, salvage_metrics, salvage_power

    return PassPolicyFile(None, tuple(problems), None, salvage_connections(document) or (), salvage_metrics(document),
                          salvage_power(document, path))


def load_policy_for_pass(
    path: str, *, explicit: bool, trust_insecure: bool = False
) -> tuple[Policy, list[Problem]]:
    """``read_policy_for_pass`` with the built-in defaults as the fallback: ``(policy, [])`` when
    the file is fine (or the default one missing), ``(built-in policy, problems)`` when broken."""
    read = read_policy_for_pass(path, explicit=explicit, trust_insecure=trust_insecure)
    if read.policy is not None:
        return read.policy, []
    return read.on(BUILTIN_POLICY), list(read.problems)


def policy_path_from(cli_value: str | None, environ: Mapping[str, str]) -> tuple[str, bool]:
    """The policy file to read and whether it was named explicitly.

    ``--policy`` wins, then ``$MGSAVE_POLICY``, then ``DEFAULT_POLICY_PATH``; an empty value
    counts as not given.
    """
    if cli_value:
        return cli_value, True
    from_env = environ.get(POLICY_ENV_VAR)
    if from_env:
        return from_env, True
    return DEFAULT_POLICY_PATH, False

def _parse_document(data: bytes | str, source: str) -> tuple[Policy | None, list[Problem], object]:
    """The policy or the problems, plus the document as far as YAML could read it (or None)."""
    from libmgsave.policyfile.build import build_policy
    from libmgsave.policyfile.cross_field import cross_field_problems
    from libmgsave.policyfile.marks import ReadAborted, format_path, read_document
    from libmgsave.policyfile.schema_errors import schema_problems

    try:
        document, marks = read_document(data, source)
    except ReadAborted as abort:
        return None, [abort.problem], None
    if document is None:
        return None, [Problem(source, 1, 1, "", "the policy is empty", "it needs at least 'version: 1'")], None
    problems = list(marks.problems)
    against_schema = schema_problems(document, marks)
    problems += against_schema
    bad = {format_path(path) for path in marks.bad_paths} | {problem.path for problem in against_schema}
    problems += cross_field_problems(document, marks, bad)
    problems = _unique_sorted(problems)
    if problems:
        return None, problems, document
    try:
        return build_policy(document, marks, source), [], document
    except (ValueError, TypeError, KeyError) as error:  # a gap between schema and model: a bug
        return None, [Problem(source, None, None, "", f"cannot build the policy: {error}")], document


def _unique_sorted(problems: list[Problem]) -> list[Problem]:
    unique = list(dict.fromkeys(problems))
    return sorted(unique, key=lambda p: (p.line is not None, p.line or 0, p.column or 0))
