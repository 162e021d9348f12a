"""Key paths of the policy file: which problems hide which (a value already reported is not
reported again by a later stage), answered without comparing every path with every other."""

import collections
import re

from libmgsave.policyfile.schema_errors import PathSet, path_prefixes


def test_prefixes_of_a_path():
    assert list(path_prefixes("guests[2].after[0]")) == ["guests", "guests[2]", "guests[2].after", "guests[2].after[0]"]
    assert list(path_prefixes("version")) == ["version"]


def test_covers_a_path_inside_one_held():
    held = PathSet(["guests[2].on_shutdown", "limits"])
    assert held.covers("guests[2].on_shutdown") and held.covers("guests[2].on_shutdown[1]")
    assert held.covers("limits.start_delay")
    assert not held.covers("guests[2]") and not held.covers("guests[20].on_shutdown")
    assert not held.covers("guests[2].on_shutdown_x")


def test_touches_a_path_with_one_held_inside():
    held = PathSet(["guests[2].after[0]"])
    assert held.touches("guests[2].after") and held.touches("guests[2]") and held.touches("guests")
    assert held.touches("guests[2].after[0]")
    assert not held.touches("guests[2].match") and not held.touches("guests[3]")
    assert not PathSet([]).touches("guests")


def test_a_file_full_of_mistakes_reports_each_once(tmp_path):
    """Thousands of rules, three mistakes each: every one reported once, none hidden by another
    rule's (the quick lookup must not mix up guests[1] and guests[10])."""
    from libmgsave.errors import PolicyError
    from libmgsave.policyfile import load_policy

    rules = 300
    text = "version: 1\nguests:\n" + "".join(
        f"  - match: {{name: 'g{i}-*'}}\n    autostrat: always\n    order: x{i}\n    on_shutdown: [save, shutdwn]\n"
        for i in range(rules))
    path = tmp_path / "policy.yaml"
    path.write_text(text)
    path.chmod(0o644)
    try:
        load_policy(str(path), trust_insecure=True)
    except PolicyError as error:
        problems = error.problems
    else:
        raise AssertionError("no problems reported")
    per_rule = collections.Counter(int(re.match(r"guests\[(\d+)\]", p.path).group(1)) for p in problems)
    assert per_rule == {i: 3 for i in range(rules)}
