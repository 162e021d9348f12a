"""Words near a word: the "did you mean" of a key, a value or a guest's name the admin misspelt."""

from __future__ import annotations

from collections.abc import Iterable

# What YAML 1.1 (and people) write for yes and no, and the values of mgsave's own that mean the
# same, where a key has them: `autostart: off` means `never`.
_YES = frozenset({"yes", "y", "on", "true", "enable", "enabled"})
_NO = frozenset({"no", "n", "off", "false", "disable", "disabled", "none"})
_MEANS_YES = ("always",)
_MEANS_NO = ("never",)


def nearest(word: str, candidates: Iterable[str], most: int = 3) -> list[str]:
    """The candidates one or two edits away from ``word`` (or differing only in case, ``-`` for
    ``_``), the nearest first; a prefix of a candidate counts as near (``dns`` for ``dns1``)."""
    scored = []
    folded = _fold(word)
    for candidate in dict.fromkeys(candidates):
        if candidate == word:
            continue
        target = _fold(candidate)
        distance = _edit_distance(folded, target)
        if distance <= 2 and distance < len(candidate) / 2 + 1:
            scored.append((distance, candidate))
        elif len(folded) >= 3 and target.startswith(folded):
            scored.append((3, candidate))
    best = sorted(scored)
    return [candidate for distance, candidate in best if distance == best[0][0]][:most] if best else []


def did_you_mean(word: str, candidates: Iterable[str]) -> str | None:
    """``did you mean 'x'?`` (or ``'x' or 'y'``) for a word near a candidate; None when none is."""
    near = nearest(word, candidates)
    return "did you mean " + " or ".join(f"'{c}'" for c in near) + "?" if near else None


def same_meaning(value: object, allowed: Iterable[str]) -> str | None:
    """The allowed value a yes or no (``true``, ``off``) stands for, when the allowed values have
    one (``always``, ``never``); else None."""
    text = str(value).lower() if not isinstance(value, bool) else ("true" if value else "false")
    allowed = list(allowed)
    for words, meanings in ((_YES, _MEANS_YES), (_NO, _MEANS_NO)):
        if text in words:
            return next((m for m in meanings if m in allowed), None)
    return None


def _fold(word: str) -> str:
    return word.lower().replace("-", "_")


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
