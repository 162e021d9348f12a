"""YAML 1.2's core schema for plain values, in place of PyYAML's YAML 1.1 one.

PyYAML resolves plain scalars as YAML 1.1 does: ``1:30`` is the base-60 number 90, ``010`` is
octal 8, ``yes``/``no``/``on``/``off`` are booleans and ``2026-12-02`` is a date. In a policy
each of those is a surprise (``on_shutdown: [off]`` would be ``[False]``), and YAML 1.2, which
editors and yaml-language-server speak, reads them differently. So the policy is read with the
1.2 core schema: ``true``/``false`` are the only booleans, numbers are decimal (or ``0o``/``0x``),
and everything else is a string. The schema's checks then name what was written, with a hint.
"""

from __future__ import annotations

import re

import yaml

_BOOL = re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$")
_NULL = re.compile(r"^(?:~|null|Null|NULL|)$")
_INT = re.compile(r"^(?:[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+)$")
_FLOAT = re.compile(
    r"^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?"
    r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"
)
_MERGE = re.compile(r"^<<$")  # not core YAML 1.2, but policies use "<<: *anchor" (marks.py merges)

# Looks like a YAML 1.1 base-60 number (1:30, 1:30:00): what the admin probably meant as a time.
SEXAGESIMAL = re.compile(r"^[-+]?[0-9]+(?::[0-5]?[0-9])+(?:\.[0-9]*)?$")
YAML11_BOOLEANS = frozenset(
    word for base in ("yes", "no", "on", "off", "y", "n") for word in (base, base.capitalize(), base.upper())
)


class CoreLoader(yaml.SafeLoader):
    """SafeLoader with YAML 1.2's core schema for untagged plain scalars."""

    yaml_implicit_resolvers: dict = {}  # replaced, not added to: SafeLoader's are YAML 1.1's

    def construct_yaml_int(self, node: yaml.Node) -> int:
        # PyYAML's reads "010" as octal and "1:30" as base 60 (also behind an explicit !!int).
        text = str(self.construct_scalar(node)).replace("_", "")
        if text.startswith(("0o", "0x")):
            return int(text, 0)
        return int(text, 10)


class CoreDumper(yaml.SafeDumper):
    """SafeDumper that quotes every string CoreLoader would read as something else (``-.0``,
    ``true``), and none that only YAML 1.1 would (``yes``): its output reads back the same."""

    yaml_implicit_resolvers: dict = {}


for _tag, _pattern, _first in (
    ("tag:yaml.org,2002:bool", _BOOL, "tTfF"),
    ("tag:yaml.org,2002:null", _NULL, ["~", "n", "N", ""]),
    ("tag:yaml.org,2002:int", _INT, "-+0123456789"),
    ("tag:yaml.org,2002:float", _FLOAT, "-+0123456789."),
    ("tag:yaml.org,2002:merge", _MERGE, "<"),
):
    CoreLoader.add_implicit_resolver(_tag, _pattern, list(_first))
    CoreDumper.add_implicit_resolver(_tag, _pattern, list(_first))
CoreLoader.add_constructor("tag:yaml.org,2002:int", CoreLoader.construct_yaml_int)
