"""The order guests go in: ``after`` resolved to guests, cycles broken, order groups adjusted."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from libmgsave.inventory import GuestInfo
from libmgsave.matching import Effective, resolve
from libmgsave.plan.model import GuestKey
from libmgsave.policy import Policy
from libmgsave.spelling import did_you_mean


@dataclass(frozen=True)
class AfterProblem:
    """Something wrong with one guest's ``after``; ``source`` is who set it (a rule's label,
    "defaults"), so that ``check`` can point at the line."""

    source: str
    message: str

    def __str__(self) -> str:
        return self.message


def after_problems(guests: Iterable[GuestInfo], policy: Policy) -> list[AfterProblem]:
    """What is wrong with the guests' ``after`` settings (names that match no guest, cycles),
    each with the rule that set it."""
    problems: list[AfterProblem] = []
    _dependencies({g.key: (g, resolve(policy, g)) for g in guests}, problems)
    return problems


def dependencies(
    resolved: Mapping[GuestKey, tuple[GuestInfo, Effective]], warnings: list[str]
) -> dict[GuestKey, tuple[GuestKey, ...]]:
    """For each guest, the guests it is ``after`` (they must be up before it starts).

    A name is looked up on the guest's own connection first, then on any connection.
    Unknown names and cycles are warnings: a cycle's edges are dropped so that no guest is
    ever left waiting forever (at shutdown, an unsaved guest is a lost guest).
    """
    problems: list[AfterProblem] = []
    deps = _dependencies(resolved, problems)
    warnings.extend(str(p) for p in problems)
    return deps


def _dependencies(
    resolved: Mapping[GuestKey, tuple[GuestInfo, Effective]], problems: list[AfterProblem]
) -> dict[GuestKey, tuple[GuestKey, ...]]:
    def problem(guest: GuestInfo, eff: Effective, message: str) -> None:
        problems.append(AfterProblem(eff.sources["after"], message))

    by_name: dict[str, list[GuestKey]] = {}
    for key, (guest, _eff) in resolved.items():
        by_name.setdefault(guest.name, []).append(key)
    deps: dict[GuestKey, tuple[GuestKey, ...]] = {}
    for key, (guest, eff) in resolved.items():
        found = []
        for name in eff.settings.after:
            candidates = by_name.get(name, [])
            same_connection = [k for k in candidates if k[0] == guest.connection]
            chosen = same_connection or candidates
            if not chosen:
                near = did_you_mean(name, by_name)
                problem(guest, eff, f"{guest.name}: 'after' names {name!r}, which is not a guest here; ignored"
                        + (f" ({near})" if near else ""))
            elif chosen[0] == key:
                problem(guest, eff, f"{guest.name}: 'after' names the guest itself; ignored")
            else:
                found.append(chosen[0])
        deps[key] = tuple(found)
    _break_cycles(deps, resolved, problems)
    return deps


def _break_cycles(
    deps: dict[GuestKey, tuple[GuestKey, ...]],
    resolved: Mapping[GuestKey, tuple[GuestInfo, Effective]],
    problems: list[AfterProblem],
) -> None:
    WHITE, GREY, BLACK = 0, 1, 2
    colour = dict.fromkeys(deps, WHITE)
    for root in deps:
        if colour[root] != WHITE:
            continue
        stack = [(root, iter(deps[root]))]
        colour[root] = GREY
        path = [root]
        while stack:
            node, children = stack[-1]
            for child in children:
                if colour[child] == GREY:
                    cycle = path[path.index(child):] + [child]
                    names = " -> ".join(resolved[k][0].name for k in cycle)
                    guest, eff = resolved[node]
                    problems.append(AfterProblem(eff.sources["after"], (
                        f"'after' forms a cycle ({names}); ignoring "
                        f"'{guest.name} after {resolved[child][0].name}'")))
                    deps[node] = tuple(d for d in deps[node] if d != child)
                elif colour[child] == WHITE:
                    colour[child] = GREY
                    stack.append((child, iter(deps[child])))
                    path.append(child)
                    break
            else:
                colour[node] = BLACK
                stack.pop()
                path.pop()


def effective_orders(
    resolved: Mapping[GuestKey, tuple[GuestInfo, Effective]], deps: Mapping[GuestKey, tuple[GuestKey, ...]]
) -> dict[GuestKey, int]:
    """A guest starts no earlier than the order group of anything it is ``after``.

    Without this, "x (order 0) after y (order 10)" would wait for a group that waits for it.
    """
    memo: dict[GuestKey, int] = {}

    def order_of(key: GuestKey) -> int:
        if key in memo:
            return memo[key]
        memo[key] = resolved[key][1].settings.order  # provisional; deps are acyclic now
        memo[key] = max([resolved[key][1].settings.order] + [order_of(d) for d in deps[key]])
        return memo[key]

    return {key: order_of(key) for key in resolved}
