"""matching: which rules apply to a guest, the settings it ends up with, and where each came from."""

from __future__ import annotations

import json
import textwrap
import time
from pathlib import Path

import pytest

from libmgsave.inventory import GuestInfo, GuestState
from libmgsave.matching import Effective, resolve, rule_matches
from libmgsave.policy import (
    BUILTIN_POLICY,
    BUILTIN_SETTINGS,
    SETTING_NAMES,
    Autostart,
    Match,
    MetadataMatch,
    Ready,
    ReadyKind,
    ShutdownStep,
)
from libmgsave.policyfile import load_policy

UUID = "5d3f1c2e-8a4b-4f2e-9c1d-0e6a7b8c9d0f"


def guest(name: str = "db1", **fields) -> GuestInfo:
    fields.setdefault("connection", "qemu:///system")
    fields.setdefault("uuid", UUID)
    fields.setdefault("state", GuestState.RUNNING)
    return GuestInfo(name=name, **fields)


def policy_from(tmp_path: Path, text: str):
    path = tmp_path / "policy.yaml"
    path.write_text(textwrap.dedent(text))
    path.chmod(0o644)
    tmp_path.chmod(0o755)
    return load_policy(str(path))


# -- precedence and provenance ------------------------------------------------------------------


def test_the_builtin_policy_gives_the_builtin_settings():
    effective = resolve(BUILTIN_POLICY, guest())
    assert effective.settings == BUILTIN_SETTINGS
    assert dict(effective.sources) == dict.fromkeys(SETTING_NAMES, "built-in")
    assert effective.matched == ()


def test_defaults_override_the_builtin_values(tmp_path):
    policy = policy_from(tmp_path, "version: 1\ndefaults: {autostart: always, save_timeout: 5m}\n")
    effective = resolve(policy, guest())
    assert effective.settings.autostart is Autostart.ALWAYS
    assert effective.settings.save_timeout == 300.0
    assert effective.settings.order == 0
    assert effective.sources["autostart"] == "defaults"
    assert effective.sources["save_timeout"] == "defaults"
    assert effective.sources["order"] == "built-in"


def test_rules_apply_in_file_order_and_a_later_one_wins(tmp_path):
    policy = policy_from(
        tmp_path,
        """\
        version: 1
        defaults:
          order: 1
          priority: 1
          ready: 10s
        guests:
          - name: everything
            match: {}
            order: 5
            sync_time: true
          - name: databases
            match: {name: "db*"}
            order: 10
            after: [dns1]
          - match: {name: "web*"}
            order: 20
          - name: the primary
            match: {name: db1}
            priority: 100
            ready: agent
        """,
    )
    effective = resolve(policy, guest("db1"))
    assert effective.matched == ("guests[0] (everything)", "guests[1] (databases)", "guests[3] (the primary)")
    settings = effective.settings
    assert (settings.order, settings.priority, settings.after, settings.sync_time) == (10, 100, ("dns1",), True)
    assert settings.ready == Ready(ReadyKind.AGENT, 120.0)
    assert dict(effective.sources) == {
        "autostart": "built-in",
        "on_shutdown": "built-in",
        "on_reboot": "built-in",
        "order": "guests[1] (databases)",
        "priority": "guests[3] (the primary)",
        "after": "guests[1] (databases)",
        "ready": "guests[3] (the primary)",
        "save_timeout": "built-in",
        "shutdown_timeout": "built-in",
        "bypass_cache": "built-in",
        "sync_time": "guests[0] (everything)",
        "on_resume_failure": "built-in",
        "save_channels": "built-in",
        "image_format": "built-in",
        "migrate": "built-in",
    }
    web = resolve(policy, guest("web7"))
    assert web.matched == ("guests[0] (everything)", "guests[2]")
    assert web.settings.order == 20 and web.sources["order"] == "guests[2]"
    assert web.settings.ready == Ready(ReadyKind.DELAY, 10.0) and web.sources["ready"] == "defaults"
    other = resolve(policy, guest("mail"))
    assert other.matched == ("guests[0] (everything)",) and other.settings.order == 5


def test_a_rule_without_settings_still_shows_as_matched(tmp_path):
    policy = policy_from(tmp_path, "version: 1\nguests:\n  - name: noted\n    match: {name: db1}\n")
    effective = resolve(policy, guest("db1"))
    assert effective.matched == ("guests[0] (noted)",)
    assert effective.settings == BUILTIN_SETTINGS
    assert set(effective.sources.values()) == {"built-in"}


def test_the_sample_policy(tmp_path):
    policy = load_policy(str(Path(__file__).resolve().parents[2] / "config" / "policy.sample.yaml"))
    db = resolve(policy, guest("db-orders"))
    assert db.settings.order == 10 and db.settings.after == ("dns1",) and db.settings.bypass_cache
    scratch = resolve(policy, guest("tmp-build"))
    assert scratch.settings.autostart is Autostart.NEVER
    assert scratch.settings.on_shutdown == (ShutdownStep.SHUTDOWN, ShutdownStep.POWEROFF)


def test_effective_to_dict_is_json(tmp_path):
    policy = policy_from(tmp_path, "version: 1\nguests:\n  - match: {}\n    ready: {agent: 1m}\n")
    data = resolve(policy, guest()).to_dict()
    json.dumps(data)
    assert data["settings"]["ready"] == {"agent": 60.0}
    assert data["settings"]["on_shutdown"] == ["save", "shutdown", "poweroff"]
    assert data["sources"]["ready"] == "guests[0]" and data["matched"] == ["guests[0]"]


def test_effective_is_frozen():
    effective = resolve(BUILTIN_POLICY, guest())
    assert isinstance(effective, Effective)
    with pytest.raises(AttributeError):
        effective.settings = BUILTIN_SETTINGS  # type: ignore[misc]
    with pytest.raises(TypeError):
        effective.sources["order"] = "me"  # type: ignore[index]


def test_two_policies_are_never_confused(tmp_path):
    first = policy_from(tmp_path, "version: 1\ndefaults: {order: 1}\n")
    assert resolve(first, guest()).settings.order == 1
    for order in range(2, 30):  # more policies than the cache holds, each freed right away
        policy = policy_from(tmp_path, f"version: 1\ndefaults: {{order: {order}}}\n")
        assert resolve(policy, guest()).settings.order == order
        del policy
    assert resolve(first, guest()).settings.order == 1


# -- selectors ----------------------------------------------------------------------------------

SELECTOR_CASES = [
    (Match(), guest(), True),
    (Match(name=("db*",)), guest("db1"), True),
    (Match(name=("db*",)), guest("DB1"), False),  # globs are case-sensitive
    (Match(name=("db?",)), guest("db12"), False),
    (Match(name=("db[0-9]",)), guest("db7"), True),
    (Match(name=("web*", "db*")), guest("db1"), True),  # a list is any of
    (Match(name=("db1",)), guest("db1.example"), False),  # the whole name
    (Match(uuid=(UUID.upper(),)), guest(), True),  # case-insensitive
    (Match(uuid=(UUID.replace("-", ""),)), guest(), True),
    (Match(uuid=("00000000-0000-0000-0000-000000000000",)), guest(), False),
    (Match(title=("*prod*",)), guest(title="Orders (production)"), True),
    (Match(title=("*prod*",)), guest(), False),  # no title
    (Match(connection=("qemu:///*",)), guest(), True),
    (Match(connection=("lxc://*",)), guest(), False),
    (Match(metadata=(MetadataMatch("https://a"),)), guest(metadata={"https://a": ""}), True),
    (Match(metadata=(MetadataMatch("https://a"),)), guest(metadata={"https://b": "x"}), False),
    (Match(metadata=(MetadataMatch("https://a", "tier=db*"),)), guest(metadata={"https://a": " tier=db1\n"}), True),
    (Match(metadata=(MetadataMatch("https://a", "tier=db*"),)), guest(metadata={"https://a": "tier=web"}), False),
    (
        Match(metadata=(MetadataMatch("https://a", "x"), MetadataMatch("https://b"))),
        guest(metadata={"https://b": "anything"}),
        True,
    ),
    # every given selector must match
    (Match(name=("db*",), connection=("lxc://*",)), guest("db1"), False),
    (Match(name=("db*",), connection=("qemu://*",), uuid=(UUID,)), guest("db1"), True),
    (Match(name=("db*",), title=("x",)), guest("db1", title="x"), True),
    (Match(name=("db*",), title=("x",)), guest("db1", title="y"), False),
]


@pytest.mark.parametrize(("match", "info", "expected"), SELECTOR_CASES)
def test_rule_matches(match, info, expected):
    assert rule_matches(match, info) is expected


def test_selectors_from_a_file(tmp_path):
    policy = policy_from(
        tmp_path,
        f"""\
        version: 1
        guests:
          - match:
              name: ["db*", "pg*"]
              uuid: {UUID.upper()}
              metadata: {{namespace: "https://example.org/ns", text: "tier=db*"}}
            order: 10
        """,
    )
    tagged = guest("pg2", metadata={"https://example.org/ns": "tier=db-primary"})
    assert resolve(policy, tagged).settings.order == 10
    assert resolve(policy, guest("pg2")).settings.order == 0
    assert resolve(policy, guest("web1", metadata=tagged.metadata)).settings.order == 0


# -- speed --------------------------------------------------------------------------------------


def test_ten_thousand_guests_and_fifty_rules_resolve_well_under_a_second(tmp_path):
    rules = "".join(
        f"  - name: rule {i}\n    match: {{name: ['g{i}*', 'h{i}?'], connection: 'qemu:*'}}\n    order: {i}\n"
        for i in range(48)
    )
    rules += "  - match: {metadata: {namespace: 'https://ns', text: 'tier=*'}}\n    ready: agent\n"
    rules += f"  - match: {{uuid: {UUID}}}\n    priority: 5\n"
    policy = policy_from(tmp_path, "version: 1\ndefaults: {priority: 3}\nguests:\n" + rules)
    assert len(policy.rules) == 50
    guests = [
        guest(f"g{i}", uuid=f"{i:08x}-0000-0000-0000-000000000000", metadata={"https://ns": f"tier={i % 3}"})
        for i in range(10_000)
    ]
    started = time.process_time()  # CPU time: other work on a busy machine does not count
    results = [resolve(policy, info) for info in guests]
    elapsed = time.process_time() - started
    assert elapsed < 0.8, f"{elapsed:.2f}s of CPU"
    assert results[47].settings.order == 47 and results[47].settings.ready.kind is ReadyKind.AGENT
    assert results[4711].sources["order"] == "guests[47] (rule 47)"
