"""The schema check, with jsonschema's errors turned into located, admin-readable problems."""

from __future__ import annotations

import functools
import importlib.resources
from collections.abc import Mapping
from typing import Any

import jsonschema
import yaml

from libmgsave.errors import Problem
from libmgsave.policy import SETTING_NAMES
from libmgsave.policyfile.core_schema import SEXAGESIMAL, YAML11_BOOLEANS
from libmgsave.policyfile.marks import KeyPath, MarkedDocument, format_path
from libmgsave.spelling import did_you_mean, same_meaning


def policy_schema() -> Mapping[str, Any]:
    """The policy's JSON Schema, as shipped in the package (a copy of config/policy.schema.yaml)."""
    text = importlib.resources.files("libmgsave").joinpath("policy.schema.yaml").read_text("utf-8")
    # The C loader, where PyYAML has it, reads the schema in 2 ms instead of 50.
    return yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))


@functools.cache
def _validator() -> jsonschema.protocols.Validator:
    return jsonschema.Draft202012Validator(policy_schema())


def section_is_valid(key: str, value: object) -> bool:
    """Whether ``value`` is valid as the policy's top-level ``key``: its own schema, with the
    ``$defs`` it refers to."""
    schema = policy_schema()
    return jsonschema.Draft202012Validator({**schema["properties"][key], "$defs": schema["$defs"]}).is_valid(value)




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


def describe(value: object) -> str:
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


class Reporter:
    """Turns jsonschema's errors into located, admin-readable Problems."""

    def __init__(self, marks: MarkedDocument):
        self.marks = marks
        self.problems: list[Problem] = []

    def at(self, path: KeyPath, message: str, hint: str | None = None, *, key: bool = False) -> None:
        marks = self.marks.key_marks if key else self.marks.value_marks
        mark = marks.get(path)
        probe = path
        while mark is None and probe:
            probe = probe[:-1]
            mark = self.marks.value_marks.get(probe)
        line, column = mark if mark else (None, None)
        self.problems.append(Problem(self.marks.source, line, column, format_path(path), message, hint))

    def report(self, error: jsonschema.ValidationError) -> None:
        before = len(self.problems)
        explained_elsewhere = self._report(error)
        if len(self.problems) == before and not explained_elsewhere:
            self.at(tuple(error.absolute_path), error.message)  # never let a schema error pass unreported

    def _report(self, error: jsonschema.ValidationError) -> bool:
        """Adds the problems ``error`` stands for; True when another error explains it."""
        path: KeyPath = tuple(error.absolute_path)
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
            return self._missing(error.validator_value, path, value, schema)
        elif kind == "type":
            if "enum" in schema:
                return True  # the enum's own error names the allowed values: quoting would not help
            self._wrong_type(error.validator_value, path, value)
        elif kind == "enum":
            allowed = [str(v) for v in error.validator_value]
            hint = _enum_hint(value, allowed)
            self.at(path, f"must be one of {', '.join(allowed)}; not {describe(value)}", hint)
        elif kind == "const":
            self.at(path, f"must be {error.validator_value!r}, not {describe(value)}")
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
            self.at(path, f"must be at least {error.validator_value}, not {describe(value)}")
        elif kind == "exclusiveMinimum":
            self.at(path, f"must be greater than {error.validator_value}, not {describe(value)}")
        elif kind == "pattern":
            title = schema.get("title")
            self.at(path, f"must be {title}, not {describe(value)}" if title else error.message)
        else:
            self.at(path, error.message)
        return False

    def _missing(self, required: list[str], path: KeyPath, value: object, schema: Mapping) -> bool:
        """Reports each required key ``value`` lacks; True when a misspelt key explains one (it is
        reported as unknown, with this key as its hint)."""
        known = set(schema.get("properties", {}))
        misspelt = [k for k in value if k not in known] if isinstance(value, dict) else []
        explained = False
        for key in required:
            if isinstance(value, dict) and key not in value:
                if any(did_you_mean(k, [key]) for k in misspelt):
                    explained = True
                    continue
                hint = None
                if key == "match" and "name" in value:
                    hint = "'name:' is only a label; select guests with 'match: {name: ...}'"
                self.at(path, f"missing required key '{key}'", hint)
        return explained

    def _wrong_type(self, expected: object, path: KeyPath, value: object) -> None:
        words = (
            " or ".join(_TYPE_WORDS.get(t, t) for t in expected)
            if isinstance(expected, list)
            else _TYPE_WORDS.get(expected, expected)
        )
        hint = yaml12_hint(expected, value, self.marks.plain_texts.get(path)) or _type_hint(expected, value, path)
        self.at(path, f"must be {words}, not {describe(value)}", hint)

    def _alternatives(self, error: jsonschema.ValidationError, path: KeyPath, schema: Mapping) -> None:
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
        hint = yaml12_hint("number", error.instance, self.marks.plain_texts.get(path))
        if hint is None and isinstance(error.instance, str):
            words = [v for sub in error.context or () if sub.validator == "enum" for v in sub.validator_value]
            hint = did_you_mean(error.instance, [str(w) for w in words])
        self.at(path, f"must be {title}, not {describe(error.instance)}", hint)
        return False


def _enum_hint(value: object, allowed: list[str]) -> str | None:
    """A near allowed word, or the one a yes or no stands for (``off``: ``never``)."""
    meant = same_meaning(value, allowed) if isinstance(value, bool | str) else None
    if meant:
        return f"did you mean '{meant}'?"
    return did_you_mean(value, allowed) if isinstance(value, str) else None


def yaml12_hint(expected: object, value: object, written: str | None) -> str | None:
    """What to write instead of a value YAML 1.1 read one way and YAML 1.2 (mgsave) another;
    ``written`` is the plain (unquoted) scalar as it stood in the file, or None."""
    wanted = set(expected) if isinstance(expected, list) else {expected}
    if "boolean" in wanted and isinstance(value, str) and value in YAML11_BOOLEANS:
        return f"use true or false: in YAML 1.2 '{value}' is a string, not a boolean"
    if wanted & {"number", "integer"} and isinstance(value, str) and SEXAGESIMAL.match(value):
        return (f"YAML 1.2 has no base-60 numbers ('{value}' is a string): write seconds or a duration "
                f"such as 90 or 1m 30s; quote it if a string was meant")
    if "string" in wanted and written is not None and not isinstance(value, str | dict | list):
        return f"quote it, as in \"{written}\", to keep it as written"
    return None


_SELECTORS = ("name", "uuid", "title", "connection", "metadata")


def _type_hint(expected: object, value: object, path: KeyPath) -> str | None:
    """How to write what was meant, for the usual wrong shapes."""
    scalar = isinstance(value, str | int | float) and not isinstance(value, bool)
    if expected == "array" and scalar:
        return f"write a list, as in [{value}]"
    if expected == "object" and isinstance(value, str) and path and path[-1] == "match":
        return f"select guests by name with 'match: {{name: \"{value}\"}}'"
    if expected == "object" and isinstance(value, str) and len(path) == 2 and path[0] == "guests":
        return f"each rule is a mapping, as in '- match: {{name: \"{value}\"}}'"
    return None


def _unknown_key(key: str, allowed: list[str], path: KeyPath) -> tuple[str, str | None]:
    message = f"unknown key '{key}'"
    hint = did_you_mean(key, allowed)
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


def schema_problems(document: object, marks: MarkedDocument) -> list[Problem]:
    reporter = Reporter(marks)
    for error in _validator().iter_errors(document):
        reporter.report(error)
    # A value YAML could not read was reported already; the schema's complaint about it is noise.
    unreadable = PathSet(format_path(bad) for bad in marks.bad_paths)
    return [problem for problem in reporter.problems if not unreadable.covers(problem.path)]


def path_prefixes(path: str):
    """``guests[2].after[0]`` -> ``guests``, ``guests[2]``, ``guests[2].after``, ``guests[2].after[0]``."""
    for index, char in enumerate(path):
        if index and char in ".[":
            yield path[:index]
    yield path


class PathSet:
    """Key paths (as ``format_path`` writes them), asked about in time proportional to the length
    of the path asked about, not to the number of paths held: a file with thousands of mistakes
    is checked in linear time (comparing every path with every other took minutes)."""

    def __init__(self, paths):
        self._paths = set(paths)
        self._and_ancestors = {prefix for path in self._paths for prefix in path_prefixes(path)}

    def covers(self, path: str) -> bool:
        """``path`` is one of the paths or lies inside one of them."""
        return any(prefix in self._paths for prefix in path_prefixes(path))

    def touches(self, path: str) -> bool:
        """One of the paths is ``path`` or lies inside it."""
        return path in self._and_ancestors
