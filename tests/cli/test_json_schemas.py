"""Every --json output names its format and version and validates against its JSON Schema
(libmgsave/schemas/, draft 2020-12); no command prints JSON without one."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import jsonschema
import pytest

from libmgsave import cli, jsonout
from libmgsave.inventory import ON_PEER, GuestState
from libmgsave.outcomes import Outcome
from libmgsave.plan import Action
from libmgsave.policy import PolicyOrigin
from tests.testdriver import URI, define, hv, migrated_record  # noqa: F401

SCHEMAS = Path(jsonout.__file__).parent / "schemas"
# Each command's outputs: a command with --json and no entry here fails the test below.
COMMAND_FORMATS = {"check": ["check"], "plan": ["plan"], "status": ["status"], "report": ["report"],
                   "images": ["images", "images-remove"], "shutdown": ["pass"], "boot": ["pass"],
                   "evacuate": ["pass"], "return": ["pass"], "watch": [],  # watch prints nothing
                   "power": [],  # power watch logs, prints nothing
                   "sample-policy": [],  # a policy file: YAML, with --json too
                   "_complete-guests": []}  # names for the shell, one a line


def schema_of(format_name: str) -> dict:
    return json.loads((SCHEMAS / f"mgsave.{format_name}.schema.json").read_text())


def test_every_command_with_json_output_has_a_schema():
    sub = next(a for a in cli.build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    with_json = {name for name, p in sub.choices.items() if any("--json" in a.option_strings for a in p._actions)}
    assert with_json == set(COMMAND_FORMATS), "give the new command's output a format and a schema"
    formats = {f for names in COMMAND_FORMATS.values() for f in names}
    assert formats == set(jsonout.FORMATS)
    assert {p.name for p in SCHEMAS.glob("*.schema.json")} == {f"mgsave.{f}.schema.json" for f in formats}
    for name in formats:
        jsonschema.Draft202012Validator.check_schema(schema_of(name))


def test_the_schemas_closed_sets_are_the_codes():
    for name in ("pass", "status"):
        assert schema_of(name)["$defs"]["outcome"]["enum"] == [o.value for o in Outcome]
    for name in ("pass", "plan"):
        assert schema_of(name)["$defs"]["action"]["enum"] == [a.value for a in Action]
    for name in ("pass", "plan", "status"):
        origins = schema_of(name)["properties"]["policy_used"]["properties"]["origin"]["enum"]
        assert origins == [o.value for o in PolicyOrigin], name
    states = [jsonout.word(s) for s in GuestState]
    for name in ("plan", "status"):
        assert schema_of(name)["$defs"]["state"]["enum"] == states + [jsonout.word(ON_PEER)]


@pytest.fixture
def mgsave(tmp_path, capsys):
    def run(*args, policy: str | None = None) -> dict:
        argv = ["--connect", URI, "--state-dir", str(tmp_path / "state"), "--json"]
        if policy is not None:
            path = tmp_path / "policy.yaml"
            path.write_text(policy)
            os.chmod(path, 0o644)
            argv += ["--policy", str(path)]
        capsys.readouterr()
        cli.main(argv + list(args))
        return json.loads(capsys.readouterr().out)
    return run


def valid(document: dict, format_name: str) -> dict:
    assert document["format"] == f"mgsave.{format_name}" and document["format_version"] == 1
    jsonschema.Draft202012Validator(schema_of(format_name)).validate(document)
    return document


def test_every_output_validates_against_its_schema(hv, mgsave, tmp_path):  # noqa: F811
    define(hv, "db", "web")
    define(hv, "off", running=False)
    policy = "version: 1\nguests:\n  - match: {name: web}\n    after: [db]\n    ready: 1 sec\n"
    valid(mgsave("check", policy=policy), "check")
    valid(mgsave("check", policy="version: 1\ndefaults: {sync_time: yes}\n"), "check")
    plan = valid(mgsave("plan", policy=policy), "plan")
    shutdown = {g["name"]: g for g in plan["plans"][0]["guests"]}
    assert shutdown["db"]["wait_for"][0]["connection"] == URI, "db stops after web"
    assert shutdown["web"]["estimated_save_end_seconds"] > 0
    assert shutdown["web"]["settings"]["after"] == {"value": ["db"], "from": "guests[0]", "line": 3}
    assert shutdown["db"]["settings"]["after"] == {"value": [], "from": "built-in", "line": None}
    assert shutdown["web"]["settings"]["ready"] == {"value": 1.0, "from": "guests[0]", "line": 3}
    one = valid(mgsave("plan", "boot", "web", policy=policy), "plan")
    assert [g["name"] for g in one["plans"][0]["guests"]] == ["web"]
    valid(mgsave("shutdown", "--dry-run", policy=policy), "pass")
    valid(mgsave("shutdown", policy=policy), "pass")
    status = valid(mgsave("status", policy=policy), "status")
    assert {g["name"]: g["last_shutdown_outcome"] for g in status["guests"]} == {"db": "saved", "web": "saved",
                                                                                "off": None}
    boot = valid(mgsave("boot", policy=policy), "pass")
    assert boot["started"].endswith("Z") and jsonout.epoch(boot["finished"]) >= jsonout.epoch(boot["started"])
    valid(mgsave("report"), "report")
    valid(mgsave("images", "list"), "images")
    valid(mgsave("images", "remove", "nothing-such"), "images-remove")
    valid(mgsave("images", "remove", "--all", "--dry-run"), "images-remove")
    valid(mgsave("plan", "boot", policy="version: 1\nlimits: {start_delay: 1:30}\n"), "plan")


def test_a_guest_living_on_a_peer_validates_in_every_output(hv, mgsave, tmp_path):  # noqa: F811
    """status, plan and the boot pass show it "on-peer" with the policy's autostart for it."""
    define(hv, "here")
    migrated_record(tmp_path / "state", URI)
    for come_back in ("false", "true"):
        policy = (f'version: 1\ndefaults:\n  autostart: always\n  migrate: {{peers: ["{URI}"], '
                  f'come_back: {come_back}, home: "{URI}"}}\n')
        status = valid(mgsave("status", policy=policy), "status")
        [row] = [g for g in status["guests"] if g["name"] == "gone1"]
        assert row["state"] == "on-peer" and row["autostart"] == "always" and row["peer"] == URI, row
        plan = valid(mgsave("plan", "boot", policy=policy), "plan")
        [entry] = [g for g in plan["plans"][0]["guests"] if g["name"] == "gone1"]
        assert entry["state"] == "on-peer" and entry["peer"] == URI, entry
        valid(mgsave("boot", "--dry-run", policy=policy), "pass")
        valid(mgsave("return", "--dry-run", policy=policy), "pass")


def test_the_outputs_of_a_broken_policy_validate_with_the_policy_they_went_by(hv, mgsave):  # noqa: F811
    define(hv, "a")
    good, broken = "version: 1\ndefaults: {autostart: never}\n", "version: 1\ndefaults: {autostart: nevr}\n"
    assert valid(mgsave("shutdown", policy=broken), "pass")["policy_used"]["origin"] == "built-in"
    assert valid(mgsave("shutdown", policy=good), "pass")["policy_used"]["origin"] == "file"
    boot = valid(mgsave("boot", "--dry-run", policy=broken), "pass")
    assert boot["policy_used"]["origin"] == "last-valid-copy" and boot["policy_used"]["copy_saved"].endswith("Z")
    for command, format_name in (("plan", "plan"), ("status", "status")):
        assert valid(mgsave(command, policy=broken), format_name)["policy_used"] == boot["policy_used"]


def test_timestamps_are_iso_8601_utc_and_sort_as_the_times_do():
    assert jsonout.timestamp(0) == "1970-01-01T00:00:00.000000Z"
    assert jsonout.timestamp(1.5) < jsonout.timestamp(1.500001) < jsonout.timestamp(10)
    assert jsonout.epoch(jsonout.timestamp(1796172300.25)) == 1796172300.25
