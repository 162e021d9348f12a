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
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping

from libmgsave.errors import PolicyError, Problem
from libmgsave.policy import BUILTIN_POLICY, DEFAULT_POLICY_PATH, Metrics, Policy
from libmgsave.policyfile.build import build_policy, policy_to_dict
from libmgsave.policyfile.cross_field import cross_field_problems, salvage_connections, salvage_metrics
from libmgsave.policyfile.files import MAX_FILE_BYTES, read_policy_file
from libmgsave.policyfile.marks import MAX_NODES, ReadAborted, format_path, read_document
from libmgsave.policyfile.schema_errors import policy_schema, schema_problems
from libmgsave.policyfile.settings import parse_duration, setting_to_json

__all__ = [
    "DEFAULT_POLICY_PATH",
    "MAX_FILE_BYTES",
    "MAX_NODES",
    "POLICY_ENV_VAR",
    "format_path",
    "load_policy",
    "load_policy_for_pass",
    "parse_duration",
    "parse_policy",
    "policy_path_from",
    "policy_schema",
    "policy_to_dict",
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


def load_policy_for_pass(
    path: str, *, explicit: bool, trust_insecure: bool = False
) -> tuple[Policy, list[Problem]]:
    """The policy for a shutdown or boot pass, which must never lose a guest over a typo.

    Returns ``(policy, [])`` when the file is fine, and ``(BUILTIN_POLICY, [])`` when the default
    file is simply missing (``explicit`` is false). When the file is broken, unreadable, insecure,
    or was named explicitly and is missing, returns the built-in policy with the problems, for
    the caller to log loudly before carrying on with safe defaults. When a broken file's
    ``connections:`` is itself valid, the built-in policy covers those connections, so no
    connection's guests are left out; likewise its ``metrics:``, so that the monitoring hears.
    """
    if not explicit and not os.path.lexists(path):
        return BUILTIN_POLICY, []
    try:
        data = read_policy_file(path, trust_insecure=trust_insecure)
        policy, problems, document = _parse_document(data, path)
    except PolicyError as error:
        return BUILTIN_POLICY, error.problems
    except Exception as error:  # a bug here must not cost a guest its save: report it, carry on
        return BUILTIN_POLICY, [Problem(path, None, None, "", f"internal error reading the policy: {error!r}")]
    if not problems:
        assert policy is not None
        return policy, []
    connections = salvage_connections(document)
    fallback = BUILTIN_POLICY.with_connections(connections) if connections else BUILTIN_POLICY
    textfile = salvage_metrics(document)
    if textfile:
        fallback = dataclasses.replace(fallback, metrics=Metrics(textfile))
    return fallback, problems


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
