"""Applying a policy's rules to one guest: its effective settings and where each value came from.

Values combine like this: the built-in values, then ``defaults:``, then every rule in
``guests:`` whose ``match:`` matches the guest, in file order; a later rule overrides the keys
it sets. ``Effective.sources`` names, for every setting, who set the value the guest gets.
"""

from __future__ import annotations

import fnmatch
import re
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from libmgsave.inventory import GuestInfo
from libmgsave.policy import BUILTIN_SETTINGS, SETTING_NAMES, GuestSettings, Match, Policy

__all__ = ["BUILTIN_SOURCE", "DEFAULTS_SOURCE", "Effective", "resolve", "rule_matches"]

BUILTIN_SOURCE = "built-in"
DEFAULTS_SOURCE = "defaults"


@dataclass(frozen=True)
class Effective:
    """What the policy decides for one guest, and why."""

    settings: GuestSettings
    sources: Mapping[str, str]  # setting name -> "built-in", "defaults" or a rule's label
    matched: tuple[str, ...] = field(default=())  # labels of the rules that matched, in file order

    def to_dict(self) -> dict:
        """Settings as the policy file spells them, with their sources, for ``--json`` output."""
        from libmgsave.policyfile.settings import setting_to_json

        return {
            "settings": {name: setting_to_json(getattr(self.settings, name)) for name in SETTING_NAMES},
            "sources": dict(self.sources),
            "matched": list(self.matched),
        }


def rule_matches(match: Match, guest: GuestInfo) -> bool:
    """True when ``guest`` satisfies every selector given in ``match`` (an empty Match: always)."""
    return _compile_match(match)(guest)


def resolve(policy: Policy, guest: GuestInfo) -> Effective:
    """The effective settings of ``guest`` under ``policy``, with the source of every value."""
    return _compiled(policy).resolve(guest)


# -- compiled form ------------------------------------------------------------------------------

Predicate = Callable[[GuestInfo], bool]


def _globs(patterns: tuple[str, ...]) -> Callable[[str], object]:
    """One regex for a list of globs (any of them), matched against the whole string."""
    return re.compile("|".join(f"(?:{fnmatch.translate(p)})" for p in patterns)).match


def _compile_match(match: Match) -> Predicate:
    tests: list[Predicate] = []
    if match.name:
        name_matches = _globs(match.name)
        tests.append(lambda guest: name_matches(guest.name) is not None)
    if match.uuid:
        uuids = frozenset(u.replace("-", "").lower() for u in match.uuid)
        tests.append(lambda guest: guest.uuid.replace("-", "").lower() in uuids)
    if match.title:
        title_matches = _globs(match.title)
        tests.append(lambda guest: title_matches(guest.title or "") is not None)
    if match.connection:
        connection_matches = _globs(match.connection)
        tests.append(lambda guest: connection_matches(guest.connection) is not None)
    if match.metadata:
        wanted = [(m.namespace, _globs((m.text,)) if m.text is not None else None) for m in match.metadata]

        def metadata_matches(guest: GuestInfo) -> bool:
            for namespace, text_matches in wanted:
                text = guest.metadata.get(namespace)
                if text is not None and (text_matches is None or text_matches(text.strip())):
                    return True
            return False

        tests.append(metadata_matches)
    if not tests:
        return lambda guest: True
    predicate = tests[0]
    for test in tests[1:]:
        predicate = _both(predicate, test)
    return predicate


def _both(first: Predicate, second: Predicate) -> Predicate:
    return lambda guest: first(guest) and second(guest)


class _CompiledPolicy:
    """A policy with its globs compiled and its layers pre-merged, for resolving many guests."""

    def __init__(self, policy: Policy):
        base = {name: getattr(BUILTIN_SETTINGS, name) for name in SETTING_NAMES}
        sources = dict.fromkeys(SETTING_NAMES, BUILTIN_SOURCE)
        for name, value in policy.defaults.items():
            base[name] = value
            sources[name] = DEFAULTS_SOURCE
        self.base_values = base
        self.base_sources = sources
        self.base_effective = Effective(GuestSettings(**base), MappingProxyType(sources), ())
        self.rules = [
            (_compile_match(rule.match), rule.label, tuple(rule.settings.items())) for rule in policy.rules
        ]

        # Guests matched by the same rules get the same Effective: build each one once.
        self.by_matched: dict[tuple[int, ...], Effective] = {(): self.base_effective}

    def resolve(self, guest: GuestInfo) -> Effective:
        matched = tuple(index for index, (matches, _, _) in enumerate(self.rules) if matches(guest))
        effective = self.by_matched.get(matched)
        if effective is None:
            effective = self.by_matched[matched] = self._combine(matched)
        return effective

    def _combine(self, matched: tuple[int, ...]) -> Effective:
        values = dict(self.base_values)
        sources = dict(self.base_sources)
        for index in matched:
            _, label, settings = self.rules[index]
            for name, value in settings:
                values[name] = value
                sources[name] = label
        labels = tuple(self.rules[index][1] for index in matched)
        return Effective(GuestSettings(**values), MappingProxyType(sources), labels)


# Policies are not hashable (they hold mappings), so the cache is keyed by identity and
# checked through a weak reference; a handful of entries covers every real use.
_CACHE: dict[int, tuple[weakref.ref, _CompiledPolicy]] = {}
_CACHE_SIZE = 8


def _compiled(policy: Policy) -> _CompiledPolicy:
    entry = _CACHE.get(id(policy))
    if entry is not None and entry[0]() is policy:
        return entry[1]
    compiled = _CompiledPolicy(policy)
    if len(_CACHE) >= _CACHE_SIZE:
        _CACHE.pop(next(iter(_CACHE)))
    _CACHE[id(policy)] = (weakref.ref(policy), compiled)
    return compiled
