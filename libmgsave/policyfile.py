"""Reading a policy file: YAML with line/column marks, validated against the schema, into a Policy.

``load_policy`` either returns a ``Policy`` or raises ``PolicyError`` listing every problem
found, each located by file, line, column and key path. Nothing else escapes it, whatever the
file's bytes: YAML bombs, deep nesting, bad encodings and duplicate keys are problems too.

The schema (``config/policy.schema.yaml``, shipped as ``libmgsave/policy.schema.yaml``) is the
single source of truth for what a policy may contain; this module only adds what a schema cannot
say (durations written as strings, a guest waiting for itself) and the building of the model.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import importlib.resources
import math
import os
import re
import stat
from collections.abc import Iterable, Mapping
from types import MappingProxyType
from typing import Any

import jsonschema
import yaml

from libmgsave.errors import PolicyError, Problem
from libmgsave.policy import (
    BUILTIN_POLICY,
    DEFAULT_CONNECTIONS,
    DEFAULT_POLICY_PATH,
    SETTING_NAMES,
    Autostart,
    Limits,
    Match,
    MetadataMatch,
    OnResumeFailure,
    Policy,
    Ready,
    ReadyKind,
    Rule,
    ShutdownStep,
    default_parallelism,
)

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
MAX_FILE_BYTES = 1024 * 1024  # a real policy is a few KiB
MAX_NODES = 100_000  # YAML nodes built, counting every trip through an alias
MAX_DEPTH = 64  # a real policy nests five levels deep
AGENT_READY_TIMEOUT = 120.0  # ``ready: agent`` without a timeout
INSECURE_HINT = (
    "make the file and its directory owned by root and not writable by group or others "
    "(chmod go-w), or pass --insecure-policy if you really trust it"
)

Path = tuple[str | int, ...]
_MERGE_TAG = "tag:yaml.org,2002:merge"
_DURATION_PART = re.compile(r"([0-9]+(?:\.[0-9]+)?)([hms])")
_DURATION_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0}


# -- the schema ---------------------------------------------------------------------------------


@functools.cache
def policy_schema() -> Mapping[str, Any]:
    """The policy's JSON Schema, as shipped in the package (a copy of config/policy.schema.yaml)."""
    text = importlib.resources.files("libmgsave").joinpath("policy.schema.yaml").read_text("utf-8")
    # The C loader, where PyYAML has it, reads the schema in 2 ms instead of 50.
    return yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))


@functools.cache
def _validator() -> jsonschema.protocols.Validator:
    return jsonschema.Draft202012Validator(policy_schema())


# -- public API ---------------------------------------------------------------------------------


def load_policy(path: str, *, trust_insecure: bool = False) -> Policy:
    """Read, validate and build the policy in ``path``.

    Raises ``PolicyError`` listing every problem: unreadable or missing file, a file writable by
    others than root (unless ``trust_insecure``), YAML errors, schema violations, cross-field
    errors. Never raises anything else.
    """
    data = _read_policy_file(path, trust_insecure=trust_insecure)
    return parse_policy(data, path)


def parse_policy(data: bytes | str, source: str) -> Policy:
    """Validate and build a policy from the file contents ``data``; ``source`` names the file.

    Raises ``PolicyError`` as ``load_policy`` does (without the file-system checks).
    """
    policy, problems = _parse(data, source)
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
    connection's guests are left out.
    """
    if not explicit and not os.path.lexists(path):
        return BUILTIN_POLICY, []
    try:
        data = _read_policy_file(path, trust_insecure=trust_insecure)
        policy, problems, document = _parse_document(data, path)
    except PolicyError as error:
        return BUILTIN_POLICY, error.problems
    except Exception as error:  # a bug here must not cost a guest its save: report it, carry on
        return BUILTIN_POLICY, [Problem(path, None, None, "", f"internal error reading the policy: {error!r}")]
    if not problems:
        assert policy is not None
        return policy, []
    connections = _salvage_connections(document)
    fallback = BUILTIN_POLICY.with_connections(connections) if connections else BUILTIN_POLICY
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


def parse_duration(value: int | float | str) -> float:
    """Seconds in a duration as the policy spells it: ``90``, ``2.5``, ``"90s"``, ``"5m"``, ``"1h30m"``.

    Raises ``ValueError`` for anything else.
    """
    if isinstance(value, bool):
        raise ValueError(f"not a duration: {value!r}")
    if isinstance(value, int | float):
        return float(value)
    text = str(value).strip()
    try:
        return float(text)
    except ValueError:
        pass
    parts = _DURATION_PART.findall(text)
    if not parts or "".join(number + unit for number, unit in parts) != text:
        raise ValueError(f"not a duration: {value!r}")
    return sum(float(number) * _DURATION_UNITS[unit] for number, unit in parts)


def setting_to_json(value: object) -> object:
    """A setting's value as the policy file spells it, for JSON output."""
    if isinstance(value, Ready):
        if value.kind is ReadyKind.NONE:
            return "none"
        if value.kind is ReadyKind.DELAY:
            return value.seconds
        return {"agent": value.seconds}
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, tuple | list):
        return [setting_to_json(item) for item in value]
    return value


def policy_to_dict(policy: Policy) -> dict:
    """The policy as plain JSON-able data, for ``--json`` output."""
    return {
        "source": policy.source,
        "version": policy.version,
        "connections": list(policy.connections),
        "limits": dataclasses.asdict(policy.limits),
        "defaults": {key: setting_to_json(value) for key, value in policy.defaults.items()},
        "guests": [
            {
                "index": rule.index,
                "label": rule.label,
                "name": rule.comment,
                "line": rule.line,
                "match": _match_to_dict(rule.match),
                "settings": {key: setting_to_json(value) for key, value in rule.settings.items()},
            }
            for rule in policy.rules
        ],
    }


def _match_to_dict(match: Match) -> dict:
    result: dict[str, object] = {}
    for field in dataclasses.fields(match):
        value = getattr(match, field.name)
        if not value:
            continue
        if field.name == "metadata":
            result["metadata"] = [
                {"namespace": item.namespace, **({"text": item.text} if item.text is not None else {})}
                for item in value
            ]
        else:
            result[field.name] = list(value)
    return result


# -- reading the file ---------------------------------------------------------------------------


def _read_policy_file(path: str, *, trust_insecure: bool) -> bytes:
    """The file's bytes; raises PolicyError (line None) when it cannot or must not be used."""

    def refuse(message: str, hint: str | None = None) -> PolicyError:
        return PolicyError([Problem(path, None, None, "", message, hint)])

    try:
        # O_NONBLOCK: a FIFO must not hang the boot pass; it is refused as not a regular file.
        with open(os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC), "rb") as file:
            info = os.fstat(file.fileno())
            if stat.S_ISDIR(info.st_mode):
                raise refuse("is a directory, not a policy file")
            if not stat.S_ISREG(info.st_mode):
                raise refuse("is not a regular file")
            if not trust_insecure:
                _check_ownership(path, info)
            if info.st_size > MAX_FILE_BYTES:
                raise refuse(f"is larger than {MAX_FILE_BYTES} bytes; a policy is a few KiB")
            data = file.read(MAX_FILE_BYTES + 1)
    except PolicyError:
        raise
    except FileNotFoundError:
        raise refuse("no such file", "create it (see config/policy.sample.yaml) or name another with --policy")
    except IsADirectoryError:
        raise refuse("is a directory, not a policy file")
    except PermissionError as error:
        raise refuse(f"cannot be read: {error.strerror}")
    except (OSError, ValueError) as error:
        raise refuse(f"cannot be read: {getattr(error, 'strerror', None) or error}")
    if len(data) > MAX_FILE_BYTES:
        raise refuse(f"is larger than {MAX_FILE_BYTES} bytes; a policy is a few KiB")
    return data


def _check_ownership(path: str, info: os.stat_result) -> None:
    """Refuse a file that someone other than root or us could have written: it drives root."""
    trusted_uids = {0, os.geteuid()}
    checks = [("the file", path, info)]
    # The directory of the path given and, through a symlink, the one of the real file.
    for directory in dict.fromkeys(os.path.dirname(p) for p in (os.path.abspath(path), os.path.realpath(path))):
        try:
            checks.append(("its directory", directory, os.stat(directory)))
        except OSError as error:
            raise PolicyError([Problem(path, None, None, "", f"cannot check its directory: {error.strerror}")])
    for what, where, where_info in checks:
        if where_info.st_uid not in trusted_uids:
            message = f"refusing an insecure policy: {what} {where} is owned by uid {where_info.st_uid}"
            raise PolicyError([Problem(path, None, None, "", message, INSECURE_HINT)])
        if where_info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
            mode = stat.filemode(where_info.st_mode)
            message = f"refusing an insecure policy: {what} {where} is writable by group or others ({mode})"
            raise PolicyError([Problem(path, None, None, "", message, INSECURE_HINT)])


# -- YAML, with marks ---------------------------------------------------------------------------


class _Abort(Exception):
    """Stops reading the document; ``problem`` says why."""

    def __init__(self, problem: Problem):
        super().__init__(problem.message)
        self.problem = problem


class _CountingLoader(yaml.SafeLoader):
    """SafeLoader that refuses, while composing, a document with too many nodes or too deep."""

    node_count = 0
    depth = 0

    def compose_node(self, parent, index):  # noqa: ANN001 - PyYAML's signature
        self.node_count += 1
        self.depth += 1
        if self.node_count > MAX_NODES or self.depth > MAX_DEPTH:
            mark = self.peek_event().start_mark
            message = "nested too deeply" if self.depth > MAX_DEPTH else f"more than {MAX_NODES} YAML nodes"
            raise _Abort(Problem(self.name, mark.line + 1, mark.column + 1, "", message))
        try:
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1


def _compose(text: str, source: str) -> yaml.Node | None:
    loader = _CountingLoader(text)
    loader.name = source
    try:
        return loader.get_single_node()
    finally:
        loader.dispose()


class _Builder:
    """Builds plain Python data from YAML nodes, remembering where each value and key was.

    Every node built counts, including every trip through an alias, so a "billion laughs"
    document stops at ``MAX_NODES`` instead of exhausting memory.
    """

    def __init__(self, source: str):
        self.source = source
        self.value_marks: dict[Path, tuple[int, int]] = {}
        self.key_marks: dict[Path, tuple[int, int]] = {}
        self.problems: list[Problem] = []
        self.bad_paths: set[Path] = set()  # problems already reported; schema errors there are noise
        self.count = 0
        self._constructor = yaml.SafeLoader("")

    def problem(self, node: yaml.Node, path: Path, message: str, hint: str | None = None) -> None:
        line, column = _mark(node)
        self.problems.append(Problem(self.source, line, column, format_path(path), message, hint))
        self.bad_paths.add(path)

    def build(self, node: yaml.Node, path: Path = (), depth: int = 0) -> object:
        self.count += 1
        if self.count > MAX_NODES:
            line, column = _mark(node)
            message = f"more than {MAX_NODES} YAML nodes once aliases are expanded (a YAML bomb?)"
            raise _Abort(Problem(self.source, line, column, format_path(path), message))
        if depth > MAX_DEPTH:
            line, column = _mark(node)
            raise _Abort(Problem(self.source, line, column, format_path(path), "nested too deeply"))
        self.value_marks.setdefault(path, _mark(node))
        if isinstance(node, yaml.MappingNode):
            return self._mapping(node, path, depth)
        if isinstance(node, yaml.SequenceNode):
            return [self.build(item, (*path, index), depth + 1) for index, item in enumerate(node.value)]
        return self._scalar(node, path)

    def _scalar(self, node: yaml.Node, path: Path) -> object:
        try:
            value = self._constructor.construct_object(node, deep=True)
        except Exception as error:  # any tag's constructor may raise anything on bad input
            detail = getattr(error, "problem", None) or str(error)
            self.problem(node, path, f"cannot read this value ({node.tag}): {detail}")
            return node.value
        if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 2**63:
            self.problem(node, path, "this number is too large")
            return 0
        return value

    def _mapping(self, node: yaml.MappingNode, path: Path, depth: int) -> dict[str, object]:
        if depth > MAX_DEPTH:  # merge keys recurse here without going through build()
            line, column = _mark(node)
            raise _Abort(Problem(self.source, line, column, format_path(path), "nested too deeply"))
        result: dict[str, object] = {}
        merges = []
        for key_node, value_node in node.value:
            if key_node.tag == _MERGE_TAG:
                merges.append(value_node)
                continue
            if not isinstance(key_node, yaml.ScalarNode):
                self.problem(key_node, path, "a key must be a plain word, not a list or a mapping")
                continue
            key = key_node.value
            key_path = (*path, key)
            if key in result:
                first_line = self.key_marks[key_path][0]
                self.problem(
                    key_node,
                    key_path,
                    f"duplicate key '{key}' (first given on line {first_line})",
                    "give each key once; YAML would silently keep only the last one",
                )
                continue
            self.key_marks.setdefault(key_path, _mark(key_node))
            result[key] = self.build(value_node, key_path, depth + 1)
        for merge_node in merges:
            # "<<: *anchor" or "<<: [*a, *b]": keys not given explicitly come from the anchors,
            # the first anchor winning, as YAML says.
            sources = merge_node.value if isinstance(merge_node, yaml.SequenceNode) else [merge_node]
            for source in sources:
                if not isinstance(source, yaml.MappingNode):
                    self.problem(source, path, "'<<' merges mappings only (an alias of a mapping, or a list of them)")
                    continue
                for key, value in self._mapping(source, path, depth + 1).items():
                    result.setdefault(key, value)
        return result


def _mark(node: yaml.Node) -> tuple[int, int]:
    return node.start_mark.line + 1, node.start_mark.column + 1


def format_path(path: Iterable[str | int]) -> str:
    """``('guests', 2, 'on_shutdown', 0)`` -> ``guests[2].on_shutdown[0]``."""
    text = ""
    for part in path:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else str(part)
    return text


def _line_column(text: str, offset: int) -> tuple[int, int]:
    before = text[:offset]
    return before.count("\n") + 1, offset - (before.rfind("\n") + 1) + 1


def _decode(data: bytes | str, source: str) -> str:
    if isinstance(data, str):
        return data
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        before = data[: error.start].decode("utf-8", "replace")
        line, column = _line_column(before, len(before))
        raise _Abort(Problem(source, line, column, "", f"not valid UTF-8 text (byte 0x{data[error.start]:02x})"))


def _yaml_hint(message: str) -> str | None:
    """What usually causes a YAML error of this kind."""
    if "\\t" in message:  # PyYAML shows the character as '\t'
        return "indent with spaces, not tabs"
    if "alias" in message or "anchor" in message:
        return "in YAML a value starting with * or & is an alias or an anchor: quote globs, as in \"*prod*\""
    if "mapping values are not allowed" in message:
        return "quote a value that contains ': ', or check the indentation of this line"
    return None


def _read_document(data: bytes | str, source: str) -> tuple[object, _Builder]:
    """The document as plain data plus its marks; raises _Abort when it is not readable YAML."""
    text = _decode(data, source)
    try:
        node = _compose(text, source)
    except _Abort:
        raise
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        line, column = (mark.line + 1, mark.column + 1) if mark else (None, None)
        message = "YAML syntax error: " + (error.problem or error.context or "unreadable")
        if error.context and error.problem:
            message += f" ({error.context})"
        raise _Abort(Problem(source, line, column, "", message, _yaml_hint(message)))
    except yaml.reader.ReaderError as error:
        line, column = _line_column(text, error.position)
        message = f"YAML cannot contain the character {error.character!r} ({error.reason})"
        raise _Abort(Problem(source, line, column, "", message))
    except yaml.YAMLError as error:
        raise _Abort(Problem(source, None, None, "", f"YAML error: {error}"))
    except RecursionError:
        raise _Abort(Problem(source, None, None, "", "nested too deeply"))
    builder = _Builder(source)
    if node is None:
        return None, builder
    try:
        document = builder.build(node)
    except RecursionError:
        raise _Abort(Problem(source, None, None, "", "nested too deeply"))
    return document, builder


# -- validation ---------------------------------------------------------------------------------


def _parse(data: bytes | str, source: str) -> tuple[Policy | None, list[Problem]]:
    policy, problems, _ = _parse_document(data, source)
    return policy, problems


def _parse_document(data: bytes | str, source: str) -> tuple[Policy | None, list[Problem], object]:
    """The policy or the problems, plus the document as far as YAML could read it (or None)."""
    try:
        document, builder = _read_document(data, source)
    except _Abort as abort:
        return None, [abort.problem], None
    if document is None:
        return None, [Problem(source, 1, 1, "", "the policy is empty", "it needs at least 'version: 1'")], None
    problems = list(builder.problems)
    schema_problems = _schema_problems(document, builder)
    problems += schema_problems
    bad = {format_path(path) for path in builder.bad_paths} | {problem.path for problem in schema_problems}
    problems += _cross_field_problems(document, builder, bad)
    problems = _unique_sorted(problems)
    if problems:
        return None, problems, document
    try:
        return _build_policy(document, builder, source), [], document
    except (ValueError, TypeError, KeyError) as error:  # a gap between schema and model: a bug
        return None, [Problem(source, None, None, "", f"cannot build the policy: {error}")], document


def _unique_sorted(problems: list[Problem]) -> list[Problem]:
    unique = list(dict.fromkeys(problems))
    return sorted(unique, key=lambda p: (p.line is not None, p.line or 0, p.column or 0))


_TYPE_WORDS = {
    "object": "a mapping (key: value)",
    "array": "a list",
    "string": "a string",
    "integer": "a whole number",
    "number": "a number",
    "boolean": "true or false",
    "null": "empty",
}

# Failures that mean "this alternative of an anyOf is not what the admin meant at all".
_SHAPE_VALIDATORS = {"type", "enum", "const", "pattern", "anyOf", "oneOf"}


def _describe(value: object) -> str:
    if value is None:
        return "an empty value"
    if isinstance(value, bool):
        return f"a boolean ({'true' if value else 'false'})"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, str):
        return f"a string ({_short(value)})"
    if isinstance(value, int):
        return f"a whole number ({value})"
    if isinstance(value, float):
        return f"a number ({value:g})"
    return f"a {type(value).__name__} ({_short(str(value))})"


def _short(text: str, limit: int = 40) -> str:
    text = repr(text)
    return text if len(text) <= limit else text[: limit - 4] + "...'"


class _Reporter:
    """Turns jsonschema's errors into located, admin-readable Problems."""

    def __init__(self, builder: _Builder):
        self.builder = builder
        self.problems: list[Problem] = []

    def at(self, path: Path, message: str, hint: str | None = None, *, key: bool = False) -> None:
        marks = self.builder.key_marks if key else self.builder.value_marks
        mark = marks.get(path)
        probe = path
        while mark is None and probe:
            probe = probe[:-1]
            mark = self.builder.value_marks.get(probe)
        line, column = mark if mark else (None, None)
        self.problems.append(Problem(self.builder.source, line, column, format_path(path), message, hint))

    def report(self, error: jsonschema.ValidationError) -> None:
        before = len(self.problems)
        explained_elsewhere = self._report(error)
        if len(self.problems) == before and not explained_elsewhere:
            self.at(tuple(error.absolute_path), error.message)  # never let a schema error pass unreported

    def _report(self, error: jsonschema.ValidationError) -> bool:
        """Adds the problems ``error`` stands for; True when another error explains it."""
        path: Path = tuple(error.absolute_path)
        schema = error.schema if isinstance(error.schema, dict) else {}
        value = error.instance
        kind = error.validator
        if kind in ("anyOf", "oneOf"):
            return self._alternatives(error, path, schema)
        elif kind == "additionalProperties":
            allowed = list(schema.get("properties", {}))
            for key in value:
                if key not in allowed:
                    message, hint = _unknown_key(key, allowed, path)
                    self.at((*path, key), message, hint, key=True)
        elif kind == "required":
            known = set(schema.get("properties", {}))
            misspelt = [k for k in value if k not in known] if isinstance(value, dict) else []
            explained = False
            for key in error.validator_value:
                if isinstance(value, dict) and key not in value:
                    if any(_did_you_mean(k, [key]) for k in misspelt):
                        explained = True  # the misspelt key is reported as unknown, with this as hint
                        continue
                    hint = None
                    if key == "match" and "name" in value:
                        hint = "'name:' is only a label; select guests with 'match: {name: ...}'"
                    self.at(path, f"missing required key '{key}'", hint)
            return explained
        elif kind == "type":
            expected = error.validator_value
            words = (
                " or ".join(_TYPE_WORDS.get(t, t) for t in expected)
                if isinstance(expected, list)
                else _TYPE_WORDS.get(expected, expected)
            )
            self.at(path, f"must be {words}, not {_describe(value)}", _type_hint(expected, value, path))
        elif kind == "enum":
            allowed = [str(v) for v in error.validator_value]
            hint = _did_you_mean(str(value), allowed) if isinstance(value, str) else None
            self.at(path, f"must be one of {', '.join(allowed)}; not {_describe(value)}", hint)
        elif kind == "const":
            self.at(path, f"must be {error.validator_value!r}, not {_describe(value)}")
        elif kind == "minItems":
            self.at(path, "must not be empty" if error.validator_value == 1 else error.message)
        elif kind == "uniqueItems":
            seen: list[object] = []
            for index, item in enumerate(value):
                if item in seen:
                    self.at((*path, index), f"{_short(str(item))} is listed more than once")
                else:
                    seen.append(item)
        elif kind == "minLength":
            self.at(path, "must not be empty")
        elif kind == "minimum":
            self.at(path, f"must be at least {error.validator_value}, not {_describe(value)}")
        elif kind == "exclusiveMinimum":
            self.at(path, f"must be greater than {error.validator_value}, not {_describe(value)}")
        elif kind == "pattern":
            title = schema.get("title")
            self.at(path, f"must be {title}, not {_describe(value)}" if title else error.message)
        else:
            self.at(path, error.message)
        return False

    def _alternatives(self, error: jsonschema.ValidationError, path: Path, schema: Mapping) -> None:
        # Report the errors of the one alternative whose shape fits (e.g. the mapping form of
        # `ready:` with a bad timeout inside); when none or several fit, name all the forms.
        branches: dict[int, list[jsonschema.ValidationError]] = {}
        for sub in error.context or ():
            branches.setdefault(sub.relative_schema_path[0], []).append(sub)
        fitting = [
            errors
            for errors in branches.values()
            if all(sub.relative_path or sub.validator not in _SHAPE_VALIDATORS for sub in errors)
        ]
        if len(fitting) == 1:
            for sub in fitting[0]:
                self.report(sub)
            return True
        title = schema.get("title") or "one of the allowed forms"
        hint = None
        if isinstance(error.instance, str):
            words = [v for sub in error.context or () if sub.validator == "enum" for v in sub.validator_value]
            hint = _did_you_mean(error.instance, [str(w) for w in words])
        self.at(path, f"must be {title}, not {_describe(error.instance)}", hint)
        return False


_SELECTORS = ("name", "uuid", "title", "connection", "metadata")


def _type_hint(expected: object, value: object, path: Path) -> str | None:
    """How to write what was meant, for the usual wrong shapes."""
    scalar = isinstance(value, str | int | float) and not isinstance(value, bool)
    if expected == "array" and scalar:
        return f"write a list, as in [{value}]"
    if expected == "object" and isinstance(value, str) and path and path[-1] == "match":
        return f"select guests by name with 'match: {{name: \"{value}\"}}'"
    if expected == "object" and isinstance(value, str) and len(path) == 2 and path[0] == "guests":
        return f"each rule is a mapping, as in '- match: {{name: \"{value}\"}}'"
    return None


def _unknown_key(key: str, allowed: list[str], path: Path) -> tuple[str, str | None]:
    message = f"unknown key '{key}'"
    hint = _did_you_mean(key, allowed)
    if hint:
        return message, hint
    where = [p for p in path if isinstance(p, str)]
    if key in SETTING_NAMES:
        if not where:
            hint = "per-guest settings go under 'defaults:' or in a rule under 'guests:'"
        elif where[-1] == "match":
            hint = f"'{key}' is a setting: put it beside 'match:', not inside it"
    elif key in _SELECTORS and where and where[-1] == "guests":
        hint = f"'{key}' selects guests: put it inside 'match:'"
    if hint is None:
        hint = "allowed here: " + ", ".join(allowed)
    return message, hint


def _did_you_mean(word: str, candidates: Iterable[str]) -> str | None:
    """A hint for a word one or two edits away from a candidate (or differing only in case)."""
    best = None
    for candidate in candidates:
        distance = _edit_distance(word.lower().replace("-", "_"), candidate.lower().replace("-", "_"))
        if word != candidate and distance <= 2 and distance < len(candidate) / 2 + 1:
            if best is None or distance < best[0]:
                best = (distance, candidate)
    return f"did you mean '{best[1]}'?" if best else None


def _edit_distance(a: str, b: str) -> int:
    """Damerau-Levenshtein (optimal string alignment) distance: typos swap letters too."""
    if abs(len(a) - len(b)) > 2:
        return 3
    previous2: list[int] = []
    previous = list(range(len(b) + 1))
    for i, char_a in enumerate(a, 1):
        current = [i] + [0] * len(b)
        for j, char_b in enumerate(b, 1):
            cost = char_a != char_b
            current[j] = min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + cost)
            if i > 1 and j > 1 and char_a == b[j - 2] and a[i - 2] == char_b:
                current[j] = min(current[j], previous2[j - 2] + 1)
        previous2, previous = previous, current
    return previous[-1]


def _schema_problems(document: object, builder: _Builder) -> list[Problem]:
    reporter = _Reporter(builder)
    for error in _validator().iter_errors(document):
        reporter.report(error)
    # A value YAML could not read was reported already; the schema's complaint about it is noise.
    return [
        problem
        for problem in reporter.problems
        if not any(_path_within(problem.path, format_path(bad)) for bad in builder.bad_paths)
    ]


def _path_within(path: str, ancestor: str) -> bool:
    return path == ancestor or path.startswith(ancestor + ".") or path.startswith(ancestor + "[")


# -- cross-field checks -------------------------------------------------------------------------

# Durations the schema checks when written as numbers, but not as strings such as "0s".
_POSITIVE_DURATIONS = ("save_timeout", "shutdown_timeout")
_GLOB_CHARS = re.compile(r"[*?\[]")


def _cross_field_problems(document: object, builder: _Builder, bad: set[str]) -> list[Problem]:
    if not isinstance(document, dict):
        return []
    reporter = _Reporter(builder)

    def clean(path: Path) -> bool:
        text = format_path(path)
        return not any(_path_within(b, text) for b in bad)

    def duration(path: Path, value: object, *, zero_ok: bool = False) -> None:
        if not clean(path):
            return
        try:
            seconds = parse_duration(value)  # type: ignore[arg-type]
        except (ValueError, TypeError):
            return
        if not math.isfinite(seconds):
            reporter.at(path, f"must be a finite duration, not {_describe(value)}")
        elif seconds <= 0 and not zero_ok:
            reporter.at(path, f"must be longer than 0 seconds, not {_describe(value)}")

    def settings(path: Path, mapping: object) -> None:
        if not isinstance(mapping, dict):
            return
        for key in _POSITIVE_DURATIONS:
            if key in mapping:
                duration((*path, key), mapping[key])
        ready = mapping.get("ready")
        if isinstance(ready, dict) and "agent" in ready:
            duration((*path, "ready", "agent"), ready["agent"])
        elif ready is not None and ready not in ("none", "agent"):
            duration((*path, "ready"), ready)

    limits = document.get("limits")
    if isinstance(limits, dict):
        if "shutdown_deadline" in limits:
            duration(("limits", "shutdown_deadline"), limits["shutdown_deadline"])
        if "start_delay" in limits:
            duration(("limits", "start_delay"), limits["start_delay"], zero_ok=True)
    settings(("defaults",), document.get("defaults"))
    rules = document.get("guests")
    if isinstance(rules, list):
        for index, rule in enumerate(rules):
            settings(("guests", index), rule)
            _check_self_wait(reporter, ("guests", index), rule, clean)
    return reporter.problems


def _check_self_wait(reporter: _Reporter, path: Path, rule: object, clean) -> None:  # noqa: ANN001
    """A rule for exactly one guest must not make it wait for itself (it would never start)."""
    if not isinstance(rule, dict) or not clean((*path, "match")) or not clean((*path, "after")):
        return
    match, after = rule.get("match"), rule.get("after")
    if not isinstance(match, dict) or not isinstance(after, list):
        return
    names = match.get("name")
    names = [names] if isinstance(names, str) else names
    if not isinstance(names, list) or len(names) != 1 or _GLOB_CHARS.search(names[0]):
        return
    for index, item in enumerate(after):
        if item == names[0]:
            reporter.at(
                (*path, "after", index),
                f"guest '{item}' cannot wait for itself to be up",
                "remove it from 'after'",
            )


def _salvage_connections(document: object) -> tuple[str, ...] | None:
    """A broken policy's ``connections:``, when that part alone is valid; None otherwise."""
    if not isinstance(document, dict) or "connections" not in document:
        return None
    connections = document["connections"]
    schema = policy_schema()["properties"]["connections"]
    if not jsonschema.Draft202012Validator(schema).is_valid(connections):
        return None
    return tuple(connections)


# -- building the model -------------------------------------------------------------------------


def _ready(value: object) -> Ready:
    if value == "none":
        return Ready()
    if value == "agent":
        return Ready(ReadyKind.AGENT, AGENT_READY_TIMEOUT)
    if isinstance(value, dict):
        return Ready(ReadyKind.AGENT, parse_duration(value["agent"]))
    return Ready(ReadyKind.DELAY, parse_duration(value))  # type: ignore[arg-type]


_SETTING_BUILDERS = {
    "autostart": Autostart,
    "on_shutdown": lambda value: tuple(ShutdownStep(step) for step in value),
    "order": int,
    "priority": int,
    "after": lambda value: tuple(str(name) for name in value),
    "ready": _ready,
    "save_timeout": parse_duration,
    "shutdown_timeout": parse_duration,
    "bypass_cache": bool,
    "sync_time": bool,
    "on_resume_failure": OnResumeFailure,
}
assert set(_SETTING_BUILDERS) == set(SETTING_NAMES), "policyfile and GuestSettings disagree"


def _settings(mapping: Mapping[str, object]) -> Mapping[str, object]:
    return MappingProxyType(
        {key: _SETTING_BUILDERS[key](mapping[key]) for key in SETTING_NAMES if key in mapping}
    )


def _strings(value: object, transform=str) -> tuple[str, ...]:  # noqa: ANN001
    items = [value] if isinstance(value, str) else list(value or ())  # type: ignore[call-overload]
    return tuple(transform(item) for item in items)


def _match(mapping: Mapping[str, object]) -> Match:
    metadata = mapping.get("metadata") or ()
    if isinstance(metadata, dict):
        metadata = [metadata]
    return Match(
        name=_strings(mapping.get("name")),
        uuid=_strings(mapping.get("uuid"), lambda u: str(u).replace("-", "").lower()),
        title=_strings(mapping.get("title")),
        connection=_strings(mapping.get("connection")),
        metadata=tuple(MetadataMatch(item["namespace"], item.get("text")) for item in metadata),  # type: ignore[union-attr]
    )


def _parallelism(value: object) -> int:
    return default_parallelism() if value == "auto" else int(value)  # type: ignore[call-overload]


def _build_policy(document: dict, builder: _Builder, source: str) -> Policy:
    limits_doc = document.get("limits") or {}
    limits = Limits(
        max_parallel_saves=_parallelism(limits_doc.get("max_parallel_saves", "auto")),
        max_parallel_starts=_parallelism(limits_doc.get("max_parallel_starts", "auto")),
        shutdown_deadline=parse_duration(limits_doc.get("shutdown_deadline", Limits.shutdown_deadline)),
        start_delay=parse_duration(limits_doc.get("start_delay", Limits.start_delay)),
    )
    rules = tuple(
        Rule(
            index=index,
            match=_match(rule["match"]),
            settings=_settings(rule),
            line=builder.value_marks.get(("guests", index), (None, None))[0],
            comment=rule.get("name"),
        )
        for index, rule in enumerate(document.get("guests") or ())
    )
    return Policy(
        version=int(document["version"]),
        source=source,
        connections=tuple(document.get("connections", DEFAULT_CONNECTIONS)),
        defaults=_settings(document.get("defaults") or {}),
        rules=rules,
        limits=limits,
    )
