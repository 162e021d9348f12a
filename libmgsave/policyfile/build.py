"""Building the ``Policy`` model from a document that passed every check, and writing it back out."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import TYPE_CHECKING

from libmgsave.policy import (DEFAULT_CONNECTIONS, NUT_PORT, Limits, Match, MetadataMatch, Metrics, OnSavedImages,
                              OnUnreadable, Policy, Power, Rule, Upgrades, UpsAddress, default_parallelism)
from libmgsave.policyfile.settings import build_settings, parse_duration, setting_to_json

if TYPE_CHECKING:  # marks imports yaml, which a pass on a cached policy does without
    from libmgsave.policyfile.marks import MarkedDocument


def build_policy(document: dict, marks: MarkedDocument, source: str) -> Policy:
    limits_doc = document.get("limits") or {}
    limits = Limits(
        max_parallel_saves=_parallelism(limits_doc.get("max_parallel_saves", "auto")),
        max_parallel_starts=_parallelism(limits_doc.get("max_parallel_starts", "auto")),
        max_parallel_migrations=int(limits_doc.get("max_parallel_migrations", Limits.max_parallel_migrations)),
        shutdown_deadline=parse_duration(limits_doc.get("shutdown_deadline", Limits.shutdown_deadline)),
        start_delay=parse_duration(limits_doc.get("start_delay", Limits.start_delay)),
        kept_images_warn_share=float(limits_doc.get("kept_images_warn_share", Limits.kept_images_warn_share)),
    )
    rules = tuple(
        Rule(
            index=index,
            match=_match(rule["match"]),
            settings=build_settings(rule),
            line=marks.value_marks.get(("guests", index), (None, None))[0],
            comment=rule.get("name"),
        )
        for index, rule in enumerate(document.get("guests") or ())
    )
    return Policy(
        version=int(document["version"]),
        source=source,
        connections=tuple(document.get("connections", DEFAULT_CONNECTIONS)),
        connections_named="connections" in document,
        defaults=build_settings(document.get("defaults") or {}),
        defaults_line=marks.key_marks.get(("defaults",), (None, None))[0],
        rules=rules,
        limits=limits,
        metrics=Metrics(textfile=(document.get("metrics") or {}).get("textfile")),
        power=power_section(document.get("power"), marks),
        upgrades=Upgrades(OnSavedImages((document.get("upgrades") or {}).get("on_saved_images", "warn"))),
    )


def power_section(mapping: dict | None, marks: MarkedDocument) -> Power | None:
    if mapping is None:
        return None
    credentials_mark = marks.value_marks.get(("power", "credentials"), (None, None))
    return Power(
        ups=ups_address(mapping["ups"]),
        credentials=mapping.get("credentials"),
        margin=parse_duration(mapping.get("margin", Power.margin)),
        poll=parse_duration(mapping.get("poll", Power.poll)),
        on_unreadable=OnUnreadable(mapping.get("on_unreadable", Power.on_unreadable)),
        shutdown_command=tuple(str(word) for word in mapping.get("shutdown_command", Power.shutdown_command)),
        ups_line=marks.value_marks.get(("power", "ups"), (None, None))[0],
        credentials_line=credentials_mark[0],
        credentials_column=credentials_mark[1],
    )


def ups_address(text: str) -> UpsAddress:
    """``name@host[:port]`` (the schema's pattern checked it) as a ``UpsAddress``; ValueError
    for a port out of range."""
    name, _, rest = text.partition("@")
    host, port = rest, NUT_PORT
    if rest.startswith("["):
        host, _, after = rest[1:].partition("]")
        if after:
            port = int(after[1:])
    elif ":" in rest:
        host, _, port_text = rest.partition(":")
        port = int(port_text)
    if not 1 <= port <= 65535:
        raise ValueError(f"port {port} is not between 1 and 65535")
    return UpsAddress(name, host, port)


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


def policy_to_dict(policy: Policy) -> dict:
    """The policy as plain JSON-able data, for ``--json`` output."""
    return {
        "source": policy.source,
        "version": policy.version,
        "connections": list(policy.connections),
        "limits": dataclasses.asdict(policy.limits),
        "metrics": dataclasses.asdict(policy.metrics),
        "power": _power_to_dict(policy.power),
        "upgrades": {"on_saved_images": str(policy.upgrades.on_saved_images)},
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


def _power_to_dict(power: Power | None) -> dict | None:
    if power is None:
        return None
    return {"ups": str(power.ups), "credentials": power.credentials, "margin": power.margin, "poll": power.poll,
            "on_unreadable": str(power.on_unreadable), "shutdown_command": list(power.shutdown_command)}
