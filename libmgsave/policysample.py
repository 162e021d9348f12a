"""The commented sample policy, written from the policy's schema: what ``mgsave sample-policy``
prints and the package installs as /etc/mgsave/policy.yaml (every setting commented out, so that
as installed it means the built-in defaults), and the repository's example with its rules on.

The schema is the one source: each key's description becomes its comment, its default (or first
example) its value. Only ``mgsave sample-policy`` and scripts/gen-policy-docs import this.
"""

from __future__ import annotations

import importlib.resources
import re
import textwrap
from collections.abc import Iterator, Mapping
from typing import Any

import yaml

# Where the packages install the schema (make install: under its PREFIX).
INSTALLED_SCHEMA = "/usr/share/mgsave/policy.schema.yaml"
WIDTH = 92
INDENT = "  "

Schema = Mapping[str, Any]


def load_schema() -> Schema:
    """The policy's schema as shipped in the package (a copy of config/policy.schema.yaml)."""
    return yaml.safe_load(importlib.resources.files("libmgsave").joinpath("policy.schema.yaml").read_text("utf-8"))


def resolve(schema: Schema, node: Schema) -> Schema:
    """``node`` with a local ``$ref`` replaced by its target, the node's own keys winning."""
    if "$ref" not in node:
        return node
    target: Any = schema
    for part in node["$ref"].removeprefix("#/").split("/"):
        target = target[part]
    merged = dict(resolve(schema, target))
    merged.update({key: value for key, value in node.items() if key != "$ref"})
    return merged


def properties(schema: Schema, node: Schema) -> Iterator[tuple[str, Schema]]:
    for name, prop in resolve(schema, node).get("properties", {}).items():
        yield name, resolve(schema, prop)


def flow(value: object) -> str:
    """``value`` as one line of YAML."""
    text = yaml.safe_dump(value, default_flow_style=True, sort_keys=False, width=10_000)
    return text.removesuffix("\n").removesuffix("\n...").strip()


def comment(text: str, indent: str = "", width: int = WIDTH) -> list[str]:
    return [
        f"{indent}# {line}" if line else f"{indent}#"
        for line in textwrap.wrap(" ".join(text.split()), width - len(indent) - 2)
    ]


def commented_out(lines: list[str]) -> list[str]:
    return ["#" + line for line in lines]


def sample_value(prop: Schema) -> object:
    return prop["default"] if "default" in prop else prop["examples"][0]


# How values are read, at the top of the sample and the installed default.
_DURATIONS_AND_VALUES = [
    "# Durations are seconds, or strings with units as systemd writes them: 90s, 5m, 1h30m,",
    "# 1h 30min, 2 days. Values are YAML 1.2: only true and false are booleans (yes, no, on",
    "# and off are strings), and 1:30 is a string, not a number.",
]


def render_sample(schema: Schema, commented: bool = False) -> str:
    """The sample policy; with ``commented``, the installed default: every setting but
    ``version`` commented out, so that the file as installed means the built-in defaults.

    A commented-out line is ``#`` followed by the YAML line itself (its indentation is an even
    number of spaces), so deleting the ``#`` restores it; every line of explanation is ``#``
    followed by an odd number of spaces (``uncomment`` relies on it)."""
    if commented:
        lines = [
            f"# yaml-language-server: $schema={INSTALLED_SCHEMA}",
            "# The mgsave policy: what happens to every libvirt guest when the host shuts down and boots.",
            "#",
            "# As installed, this file changes nothing: every setting below is commented out and shows",
            "# its built-in default, and the rules under 'guests:' are examples. To change a setting,",
            "# remove the '#' in front of it and of its section ('limits:', 'defaults:'), then run",
            "# 'mgsave check' and 'mgsave plan'. The file must stay owned by root and not writable by",
            "# others. mgsave-policy(5) describes every key.",
            "# (Generated from mgsave's policy schema: 'mgsave sample-policy' prints it.)",
            "#",
            *_DURATIONS_AND_VALUES,
        ]
    else:
        lines = [
            f"# yaml-language-server: $schema={INSTALLED_SCHEMA}",
            "# The mgsave policy: what happens to every libvirt guest when the host shuts down and boots.",
            "#",
            "# GENERATED from config/policy.schema.yaml by scripts/gen-policy-docs: edit the schema, not",
            "# this file. Copy it to /etc/mgsave/policy.yaml (owned by root, not writable by others),",
            "# adapt the rules under 'guests:', and see what would happen with 'mgsave plan'.",
            "#",
            *_DURATIONS_AND_VALUES,
            "# Every value shown outside 'guests:' is the built-in default.",
        ]
    off = "#" if commented else ""
    for name, prop in properties(schema, schema):
        lines.append("")
        lines += comment(prop["description"])
        if name == "guests":
            lines += _rule_comment(schema)
            lines.append(f"{off}guests:")
            for rule in prop["examples"][0]:
                lines += [off + line for line in _render_rule(rule)]
        elif "properties" in prop:
            lines.append(f"{off}{name}:")
            for index, (child_name, child) in enumerate(properties(schema, prop)):
                if index:
                    lines.append(off)
                lines += _sample_key(schema, child_name, child, INDENT, off, commented)
        elif name == "power":
            lines += _power_comment(schema)
            lines.append(f"{off}{name}: {flow(sample_value(prop))}")
        elif name in schema.get("required", ()):
            lines.append(f"{name}: {flow(sample_value(prop))}")
        else:
            lines.append(f"{off}{name}: {flow(sample_value(prop))}")
    return "\n".join(lines) + "\n"


def _sample_key(schema: Schema, name: str, prop: Schema, indent: str, off: str, commented: bool) -> list[str]:
    """One key of the sample with its explanation; a mapping (``migrate``) key by key."""
    lines = commented_out(comment(prop["description"], indent, WIDTH - 1)) if commented else \
        comment(prop["description"], indent)
    if "properties" not in prop:
        return lines + [f"{off}{indent}{name}: {flow(sample_value(prop))}"]
    lines.append(f"{off}{indent}{name}:")
    for child_name, child in properties(schema, prop):
        lines += _sample_key(schema, child_name, child, indent + INDENT, off, commented)
    return lines


_COMMENTED_OUT = re.compile(r"^#(?=(?:  )*\S)")


def uncomment(text: str) -> str:
    """``text`` (the installed default) with every commented-out setting restored."""
    return "\n".join(_COMMENTED_OUT.sub("", line) for line in text.split("\n"))


def _rule_comment(schema: Schema) -> list[str]:
    rule = resolve(schema, schema["$defs"]["rule"])
    props = dict(properties(schema, rule))
    lines = ["#", "# Each rule has these keys, and any per-guest setting of 'defaults:':"]
    for name in ("name", "match"):
        lines += _hanging(f"{name}: {props[name]['description']}", "#   ")
    for name, selector in properties(schema, props["match"]):
        lines += _hanging(f"{name}: {selector['description']}", "#     ")
        if name == "metadata":
            for key, prop in properties(schema, schema["$defs"]["metadata_match"]):
                lines += _hanging(f"{key}: {prop['description']}", "#       ")
    lines.append("# There are no rules by default; these are examples:")
    return lines


def _power_comment(schema: Schema) -> list[str]:
    """The keys of ``power:`` (none by default: no UPS), explained as the rules' are."""
    power = schema["$defs"]["power"]
    lines = ["#", "# Its keys (docs/POWER.md has an example):"]
    for name, prop in properties(schema, power):
        lines += _hanging(f"{name}: {prop['description']}", "#   ")
    return lines


def _hanging(text: str, prefix: str) -> list[str]:
    """``text`` wrapped as a comment, its continuation lines indented under the first."""
    return textwrap.wrap(
        " ".join(text.split()), WIDTH, initial_indent=prefix, subsequent_indent=prefix + "    "
    )


def _render_rule(rule: Mapping[str, object]) -> list[str]:
    lines = []
    for index, (key, value) in enumerate(rule.items()):
        prefix = f"{INDENT}- " if index == 0 else INDENT * 2
        lines.append(f"{prefix}{key}: {flow(value)}")
    return lines
