"""The schema is the single source of truth: the sample, the README and the code must agree with it."""

from __future__ import annotations

import dataclasses
import importlib.machinery
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import jsonschema
import pytest
import yaml

from libmgsave.inventory import GuestInfo, GuestState
from libmgsave.matching import resolve
from libmgsave.policy import BUILTIN_SETTINGS, SETTING_NAMES, GuestSettings, Limits, Match
from libmgsave.policyfile import load_policy, policy_schema

ROOT = Path(__file__).resolve().parents[2]
SCHEMA_PATH = ROOT / "config" / "policy.schema.yaml"
SAMPLE_PATH = ROOT / "config" / "policy.sample.yaml"
GENERATOR = ROOT / "scripts" / "gen-policy-docs"


def _load_generator():
    loader = importlib.machinery.SourceFileLoader("gen_policy_docs", str(GENERATOR))
    spec = importlib.util.spec_from_loader(loader.name, loader)
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


gen = _load_generator()
SCHEMA = yaml.safe_load(SCHEMA_PATH.read_text())


def walk_properties(node: object, path: str = "") -> Iterator[tuple[str, dict]]:
    """Every (path, property schema) in the schema, $defs included, $refs not followed."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "properties":
                for name, prop in value.items():
                    yield f"{path}.{name}".lstrip("."), prop
                    yield from walk_properties(prop, f"{path}.{name}".lstrip("."))
            elif key in ("anyOf", "items"):
                yield from walk_properties(value, path)
            elif key not in ("examples", "default"):
                yield from walk_properties(value, f"{path}.{key}".lstrip("."))
    elif isinstance(node, list):
        for item in node:
            yield from walk_properties(item, path)


def walk_objects(node: object) -> Iterator[dict]:
    if isinstance(node, dict):
        if node.get("type") == "object" or "properties" in node:
            yield node
        for key, value in node.items():
            if key not in ("examples", "default"):
                yield from walk_objects(value)
    elif isinstance(node, list):
        for item in node:
            yield from walk_objects(item)


# -- the schema itself --------------------------------------------------------------------------


def test_the_schema_is_valid_draft_2020_12():
    jsonschema.Draft202012Validator.check_schema(SCHEMA)
    assert SCHEMA["$schema"] == "https://json-schema.org/draft/2020-12/schema"


def test_the_package_ships_the_same_schema():
    packaged = ROOT / "libmgsave" / "policy.schema.yaml"
    assert packaged.is_symlink() and packaged.resolve() == SCHEMA_PATH.resolve()
    assert policy_schema() == SCHEMA


def test_every_property_has_a_description_and_examples():
    seen = 0
    for path, prop in walk_properties(SCHEMA):
        seen += 1
        target = gen.resolve(SCHEMA, prop)
        assert target.get("description"), f"{path} has no description"
        assert target.get("examples") or "example" in target, f"{path} has no example"
    assert seen > 30


def test_every_object_refuses_unknown_keys():
    objects = list(walk_objects(SCHEMA))
    assert len(objects) >= 6
    for node in objects:
        assert node.get("additionalProperties") is False, f"an object without additionalProperties: false: {node}"


@pytest.mark.parametrize(
    "node",
    [SCHEMA, SCHEMA["properties"]["limits"], SCHEMA["$defs"]["guest_settings"], SCHEMA["$defs"]["rule"]],
    ids=["top", "limits", "guest_settings", "rule"],
)
def test_every_optional_key_states_its_default(node):
    required = set(node.get("required", ()))
    for name, prop in gen.properties(SCHEMA, node):
        if name not in required and name not in ("name", "match"):
            assert "default" in prop, f"{name} states no default"


def test_every_example_in_the_schema_validates():
    checked = 0
    for path, prop in walk_properties(SCHEMA):
        target = gen.resolve(SCHEMA, prop)
        validator = jsonschema.Draft202012Validator({"$defs": SCHEMA["$defs"], **prop})
        for example in target.get("examples", []) + ([target["default"]] if "default" in target else []):
            errors = [e.message for e in validator.iter_errors(example)]
            assert not errors, f"{path}: example {example!r}: {errors}"
            checked += 1
    assert checked > 50


# -- schema and code do not drift ---------------------------------------------------------------


def test_guest_settings_fields_are_the_schemas_per_guest_settings():
    in_schema = list(SCHEMA["$defs"]["guest_settings"]["properties"])
    assert in_schema == list(SETTING_NAMES)
    assert set(SETTING_NAMES) == {f.name for f in dataclasses.fields(GuestSettings)}


def test_a_rule_takes_every_setting_beside_match():
    rule_keys = set(SCHEMA["$defs"]["rule"]["properties"])
    assert rule_keys == set(SETTING_NAMES) | {"name", "match"}
    for name in SETTING_NAMES:
        assert SCHEMA["$defs"]["rule"]["properties"][name] == {"$ref": f"#/$defs/guest_settings/properties/{name}"}


def test_match_selectors_are_the_match_fields():
    selectors = set(SCHEMA["$defs"]["rule"]["properties"]["match"]["properties"])
    assert selectors == {f.name for f in dataclasses.fields(Match)}


def test_limits_are_the_limits_fields():
    assert set(SCHEMA["properties"]["limits"]["properties"]) == {f.name for f in dataclasses.fields(Limits)}


def test_the_schemas_defaults_are_the_builtin_values(tmp_path):
    settings = {name: prop["default"] for name, prop in gen.properties(SCHEMA, SCHEMA["$defs"]["guest_settings"])}
    limits = {name: prop["default"] for name, prop in gen.properties(SCHEMA, SCHEMA["properties"]["limits"])}
    path = tmp_path / "policy.yaml"
    path.write_text(yaml.safe_dump({"version": 1, "defaults": settings, "limits": limits}))
    tmp_path.chmod(0o755)
    policy = load_policy(str(path))
    guest = GuestInfo("qemu:///system", "g", "5d3f1c2e-8a4b-4f2e-9c1d-0e6a7b8c9d0f", GuestState.RUNNING)
    assert resolve(policy, guest).settings == BUILTIN_SETTINGS
    assert policy.limits == Limits()
    assert SCHEMA["properties"]["connections"]["default"] == ["qemu:///system"]


# -- generated files ----------------------------------------------------------------------------


def test_the_sample_is_up_to_date_with_the_generator():
    assert SAMPLE_PATH.read_text() == gen.render_sample(SCHEMA), "run scripts/gen-policy-docs"


def test_the_sample_validates_and_shows_every_key():
    text = SAMPLE_PATH.read_text()
    document = yaml.safe_load(text)
    jsonschema.Draft202012Validator(SCHEMA).validate(document)
    assert set(document) == set(SCHEMA["properties"])
    assert set(document["defaults"]) == set(SETTING_NAMES)
    assert set(document["limits"]) == set(SCHEMA["properties"]["limits"]["properties"])
    for path, prop in walk_properties(SCHEMA):
        if path.endswith("ready.agent"):
            continue  # explained in the description of ready
        description = gen.resolve(SCHEMA, prop)["description"]
        first_words = " ".join(description.split()[:4])
        assert first_words in " ".join(line.lstrip("# ") for line in text.splitlines()), first_words
    load_policy(str(SAMPLE_PATH))


def test_the_readme_reference_is_up_to_date():
    readme = (ROOT / "README.md").read_text()
    assert readme.count(gen.BEGIN_MARKER) == 1 and readme.count(gen.END_MARKER) == 1
    assert gen.replace_section(readme, gen.render_reference(SCHEMA)) == readme, "run scripts/gen-policy-docs"
    for name in SETTING_NAMES:
        assert f"| `{name}` |" in readme


def test_the_generator_check_mode_passes():
    result = subprocess.run([sys.executable, str(GENERATOR), "--check"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


def test_replace_section_touches_only_the_section():
    text = f"before\n{gen.BEGIN_MARKER}\nold\n{gen.END_MARKER}\nafter\n"
    assert gen.replace_section(text, "new\n") == f"before\n{gen.BEGIN_MARKER}\nnew\n{gen.END_MARKER}\nafter\n"


# -- the installed default policy ---------------------------------------------------------------

DEFAULT_PATH = ROOT / "config" / "policy.default.yaml"


def test_the_installed_default_is_up_to_date_with_the_generator():
    assert DEFAULT_PATH.read_text() == gen.render_sample(SCHEMA, commented=True), "run scripts/gen-policy-docs"


def test_the_installed_default_sets_nothing_but_the_version():
    text = DEFAULT_PATH.read_text()
    assert text.splitlines()[0] == "# yaml-language-server: $schema=/usr/share/mgsave/policy.schema.yaml"
    assert yaml.safe_load(text) == {"version": 1}
    policy = load_policy(str(DEFAULT_PATH))
    assert policy.rules == () or list(policy.rules) == []
    guest = GuestInfo("qemu:///system", "db1", "5d3f1c2e-8a4b-4f2e-9c1d-0e6a7b8c9d0f", GuestState.RUNNING)
    assert resolve(policy, guest).settings == BUILTIN_SETTINGS
    assert policy.limits == Limits() and policy.connections == ("qemu:///system",)


def test_the_sample_names_the_installed_schema_for_editors():
    assert SAMPLE_PATH.read_text().splitlines()[0] == DEFAULT_PATH.read_text().splitlines()[0]


def test_uncommenting_the_installed_default_gives_the_sample():
    """Every commented-out line is the sample's line behind a '#': deleting it restores the setting."""
    restored = yaml.safe_load(gen.uncomment(DEFAULT_PATH.read_text()))
    assert restored == yaml.safe_load(SAMPLE_PATH.read_text())
    jsonschema.Draft202012Validator(SCHEMA).validate(restored)


def _plan(policy_args: list[str], state_dir: Path, capsys) -> dict:
    from libmgsave import cli

    assert cli.main(["plan", "--json", "--connect", "test:///default", "--state-dir", str(state_dir),
                     *policy_args]) == 0
    plan = json.loads(capsys.readouterr().out)
    for each in plan["plans"]:
        each.pop("policy")  # the policy's source: "built-in defaults" or the file's path
    return plan


def test_the_installed_default_plans_like_no_policy_at_all(tmp_path, monkeypatch, capsys):
    from libmgsave import policyfile

    monkeypatch.delenv("MGSAVE_POLICY", raising=False)
    monkeypatch.setattr(policyfile, "DEFAULT_POLICY_PATH", str(tmp_path / "no-policy.yaml"))
    without = _plan([], tmp_path / "state", capsys)
    installed = tmp_path / "etc"
    installed.mkdir(mode=0o755)
    shutil.copy(DEFAULT_PATH, installed / "policy.yaml")
    with_default = _plan(["--policy", str(installed / "policy.yaml")], tmp_path / "state", capsys)
    assert with_default.pop("policy_used")["origin"] == "file" and without.pop("policy_used")["origin"] == "built-in"
    assert with_default == without
    assert [g["name"] for g in without["plans"][0]["guests"]] == ["test"]


# -- the man pages ------------------------------------------------------------------------------

MAN_COMMAND = ROOT / "man" / "mgsave.8"
MAN_POLICY = ROOT / "man" / "mgsave-policy.5"


def test_the_man_pages_are_up_to_date_with_the_generator():
    assert MAN_POLICY.read_text() == gen.render_policy_man(SCHEMA), "run scripts/gen-policy-docs"
    assert MAN_COMMAND.read_text() == gen.render_command_man(), "run scripts/gen-policy-docs"


def test_mgsave_8_shows_every_command_and_option_of_the_parser():
    import argparse

    from libmgsave.arguments import build_parser, commands

    text = MAN_COMMAND.read_text()
    parser = build_parser()
    shown = commands(parser)
    assert set(shown) == {"check", "plan", "status", "report", "shutdown", "boot", "images", "watch",
                          "sample-policy", "evacuate", "return", "power"}
    assert "_complete" not in text, "the completion's helper is no command of the admin's"
    for name, sub in [("", parser), *shown.items()]:
        if name:
            assert f".TP\n\\fB{name}\\fR" in text, name
        for action in sub._actions:
            for option in action.option_strings:
                assert f"\\fB{gen.roff_literal(option)}\\fR" in text, f"{name} {option}"
            for choice in action.choices or () if not action.option_strings else ():
                if isinstance(choice, str) and not isinstance(action, argparse._SubParsersAction):
                    assert f"\\fB{choice}\\fR" in text, choice


def test_mgsave_8_gives_every_exit_code():
    from libmgsave.arguments import EPILOG
    from libmgsave.errors import ExitCode

    assert set(gen.EXIT_STATUS) == {code.name for code in ExitCode}
    section = MAN_COMMAND.read_text().split(".SH EXIT STATUS", 1)[1].split(".SH ", 1)[0]
    documented = {int(n) for n in re.findall(r"^\\fB(\d+)\\fR$", section, re.M)}
    assert documented == {int(code) for code in ExitCode} | {130, 143}
    named_by_the_epilog = {int(n) for n in re.findall(r"\b(\d+)\b", EPILOG.split("exit codes:")[1])}
    readme = " ".join((ROOT / "README.md").read_text().split())
    sentence = readme.split("exits 0 only if", 1)[1].split("). ", 1)[0]
    named_by_the_readme = {int(n) for n in re.findall(r"\b(\d+)\b", sentence)}
    assert named_by_the_epilog <= documented and named_by_the_readme <= documented
    assert {0, 1, 2, 3, 4, 130, 143} <= named_by_the_epilog


def test_mgsave_policy_5_describes_every_key():
    text = MAN_POLICY.read_text()
    for path, _prop in walk_properties(SCHEMA):
        if path.endswith("ready.agent"):
            continue  # explained in the description of ready
        leaf = path.rsplit(".", 1)[-1]
        assert re.search(rf"^\\fB(?:[a-z_]+\.)*{re.escape(gen.roff_literal(leaf))}\\fR", text, re.M), path


@pytest.mark.parametrize("page", [MAN_COMMAND, MAN_POLICY], ids=lambda p: p.name)
def test_the_man_pages_render_without_warnings(page):
    if not shutil.which("man"):
        if os.environ.get("CI") == "true":
            pytest.fail("man is missing (scripts/setup installs man-db)")
        pytest.skip("man is not installed")
    env = dict(os.environ, LC_ALL="C.UTF-8", MANROFFSEQ="", MANWIDTH="80")
    out = subprocess.run(["man", "--warnings", "-E", "UTF-8", "-l", "-Tutf8", "-Z", str(page)],
                         capture_output=True, text=True, env=env)
    assert out.returncode == 0 and not out.stderr, out.stderr
    name = page.name.rsplit(".", 1)[0]
    rendered = subprocess.run(["man", "-l", str(page)], capture_output=True, text=True, env=env).stdout
    assert rendered.splitlines()[0].startswith(name.upper())
    assert f"{name} - " in rendered  # the NAME line, which whatis/apropos read
