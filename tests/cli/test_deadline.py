"""The shutdown deadline runs short: the guests saved must be the ones the policy ranks first.

Saves take a slot from a bounded pool; they must begin in the plan's order (guests that others
are 'after' first, then priority, then name), however the threads running them are scheduled.
The same under a real deadline on the rig: tests/test_fault_deadline.py.
"""

from __future__ import annotations

import json
import time

import pytest

from libmgsave import cli
from tests.testdriver import URI, domain_xml


def save_order(result: dict) -> list[str]:
    saves = [(g["steps"][0]["started"], g["name"]) for g in result["guests"]
             if g["steps"] and g["steps"][0]["action"] == "save"]
    return [name for _t, name in sorted(saves)]


@pytest.mark.parametrize("parallel", [1, 3])
def test_saves_begin_in_priority_order(hv, tmp_path, capsys, parallel):
    names = [f"g{i:02d}" for i in range(40)]
    for name in names:
        hv.defineXML(domain_xml(name)).create()
    rules = "".join(f"  - match: {{name: {n}}}\n    priority: {i}\n" for i, n in enumerate(names))
    policy = tmp_path / "policy.yaml"
    policy.write_text(f"version: 1\nconnections: ['{URI}']\nlimits:\n  max_parallel_saves: {parallel}\n"
                      f"guests:\n{rules}")
    capsys.readouterr()
    code = cli.main(["shutdown", "--state-dir", str(tmp_path / "state"), "--policy", str(policy), "--json"])
    result = json.loads(capsys.readouterr().out)
    assert code == 0
    order = save_order(result)
    expected = list(reversed(names))
    if parallel == 1:
        assert order == expected
    else:  # a save may begin at most parallel-1 places early
        for position, name in enumerate(order):
            assert abs(expected.index(name) - position) < parallel, (name, position, order)


def test_a_guest_others_are_after_is_saved_after_them_whatever_its_priority(hv, tmp_path, capsys):
    """'app after db': at shutdown app stops first, even though db has the higher priority;
    the slot order must not make db wait for a turn that app can only take after db."""
    for name in ("db", "app", "other1", "other2"):
        hv.defineXML(domain_xml(name)).create()
    policy = tmp_path / "policy.yaml"
    policy.write_text(f"version: 1\nconnections: ['{URI}']\nlimits:\n  max_parallel_saves: 1\nguests:\n"
                      "  - match: {name: db}\n    priority: 10\n"
                      "  - match: {name: app}\n    after: [db]\n"
                      "  - match: {name: other1}\n    priority: 5\n")
    capsys.readouterr()
    t0 = time.monotonic()
    code = cli.main(["shutdown", "--state-dir", str(tmp_path / "state"), "--policy", str(policy), "--json"])
    result = json.loads(capsys.readouterr().out)
    assert code == 0 and time.monotonic() - t0 < 30
    order = save_order(result)
    assert order.index("app") < order.index("db")
    assert set(order) == {"db", "app", "other1", "other2"}
