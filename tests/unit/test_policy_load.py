"""policyfile: reading real policy files, and every kind of problem, located by line, column and path."""

from __future__ import annotations

import json
import os
import textwrap
import time
from pathlib import Path

import pytest
import yaml

from libmgsave.errors import PolicyError, Problem
from libmgsave.policy import (
    BUILTIN_POLICY,
    DEFAULT_CONNECTIONS,
    DEFAULT_POLICY_PATH,
    Autostart,
    Limits,
    Match,
    MetadataMatch,
    OnResumeFailure,
    Ready,
    ReadyKind,
    ShutdownStep,
    default_parallelism,
)
from libmgsave.policyfile import (
    MAX_FILE_BYTES,
    load_policy,
    load_policy_for_pass,
    parse_duration,
    policy_path_from,
    policy_to_dict,
)

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "config" / "policy.sample.yaml"


def write(directory: Path, text: str | bytes, name: str = "policy.yaml") -> str:
    path = directory / name
    if isinstance(text, str):
        text = textwrap.dedent(text).encode()
    path.write_bytes(text)
    path.chmod(0o644)
    return str(path)


def problems_of(path: str, **kwargs) -> list[Problem]:
    with pytest.raises(PolicyError) as caught:
        load_policy(path, **kwargs)
    problems = caught.value.problems
    assert problems, "a PolicyError must carry problems"
    return problems


def only_problem(path: str, **kwargs) -> Problem:
    problems = problems_of(path, **kwargs)
    assert len(problems) == 1, "\n".join(map(str, problems))
    return problems[0]


@pytest.fixture
def policy_dir(tmp_path: Path) -> Path:
    tmp_path.chmod(0o755)
    return tmp_path


# -- good files ---------------------------------------------------------------------------------


def test_the_sample_policy_loads():
    policy = load_policy(str(SAMPLE))
    assert policy.source == str(SAMPLE)
    assert policy.connections == ("qemu:///system",)
    assert [rule.comment for rule in policy.rules] == [
        "name server, up first, down last",
        "databases",
        "scratch machines, never started at boot",
    ]
    dns, databases, scratch = policy.rules
    assert dns.match == Match(name=("dns1",))
    assert dns.settings["ready"] == Ready(ReadyKind.AGENT, 120.0)
    assert databases.settings["after"] == ("dns1",)
    assert databases.settings["order"] == 10
    assert databases.settings["save_timeout"] == 1200.0
    assert scratch.settings["autostart"] is Autostart.NEVER
    assert scratch.match.name == ("scratch-*", "tmp-*")
    assert dns.line is not None and dns.line < databases.line < scratch.line


def test_a_minimal_policy_gets_every_default(policy_dir):
    policy = load_policy(write(policy_dir, "version: 1\n"))
    assert policy.connections == DEFAULT_CONNECTIONS
    assert dict(policy.defaults) == {}
    assert policy.rules == ()
    assert policy.limits == Limits()
    assert policy.limits.max_parallel_saves == default_parallelism()
    assert not policy.is_builtin


def test_every_setting_is_converted_to_the_model(policy_dir):
    path = write(
        policy_dir,
        """\
        version: 1
        connections: [qemu:///system, "qemu+ssh://root@other/system"]
        limits:
          max_parallel_saves: 3
          max_parallel_starts: auto
          shutdown_deadline: 1h30m
          start_delay: 2.5
        defaults:
          autostart: always
          on_shutdown: [shutdown, poweroff]
          order: -5
          priority: 7
          after: [dns1, ldap1]
          ready: 45s
          save_timeout: 5m
          shutdown_timeout: 90
          bypass_cache: true
          sync_time: true
          on_resume_failure: leave-off
        guests:
          - match:
              uuid: [5D3F1C2E-8A4B-4F2E-9C1D-0E6A7B8C9D0F]
              title: "*prod*"
              connection: "qemu:*"
              metadata:
                - {namespace: "https://example.org/a"}
                - {namespace: "https://example.org/b", text: "tier=db*"}
            ready: {agent: 3m}
          - match: {}
            ready: agent
        """,
    )
    policy = load_policy(path)
    assert policy.connections == ("qemu:///system", "qemu+ssh://root@other/system")
    assert policy.limits == Limits(3, default_parallelism(), 5400.0, 2.5)
    assert dict(policy.defaults) == {
        "autostart": Autostart.ALWAYS,
        "on_shutdown": (ShutdownStep.SHUTDOWN, ShutdownStep.POWEROFF),
        "order": -5,
        "priority": 7,
        "after": ("dns1", "ldap1"),
        "ready": Ready(ReadyKind.DELAY, 45.0),
        "save_timeout": 300.0,
        "shutdown_timeout": 90.0,
        "bypass_cache": True,
        "sync_time": True,
        "on_resume_failure": OnResumeFailure.LEAVE_OFF,
    }
    first, second = policy.rules
    assert first.match == Match(
        uuid=("5d3f1c2e8a4b4f2e9c1d0e6a7b8c9d0f",),
        title=("*prod*",),
        connection=("qemu:*",),
        metadata=(MetadataMatch("https://example.org/a"), MetadataMatch("https://example.org/b", "tier=db*")),
    )
    assert first.settings["ready"] == Ready(ReadyKind.AGENT, 180.0)
    assert second.settings["ready"] == Ready(ReadyKind.AGENT, 120.0)
    assert second.match == Match()
    assert first.label == "guests[0]" and first.comment is None


def test_yaml_anchors_and_merge_keys_work(policy_dir):
    path = write(
        policy_dir,
        """\
        version: 1
        defaults: &base
          save_timeout: 10m
          order: 1
        guests:
          - match: {name: "db*"}
            <<: *base
            order: 2
        """,
    )
    rule = load_policy(path).rules[0]
    assert dict(rule.settings) == {"order": 2, "save_timeout": 600.0}


def test_policy_to_dict_is_json_and_round_trips(policy_dir):
    original = load_policy(str(SAMPLE))
    data = policy_to_dict(original)
    json.dumps(data)
    rebuilt = {
        "version": data["version"],
        "connections": data["connections"],
        "defaults": data["defaults"],
        "guests": [{"name": g["name"], "match": g["match"], **g["settings"]} for g in data["guests"]],
    }
    again = load_policy(write(policy_dir, yaml.safe_dump(rebuilt)))
    assert again.defaults == original.defaults
    assert [r.settings for r in again.rules] == [r.settings for r in original.rules]
    assert [r.match for r in again.rules] == [r.match for r in original.rules]


@pytest.mark.parametrize(
    ("text", "seconds"),
    [(90, 90.0), (2.5, 2.5), ("90", 90.0), ("90s", 90.0), ("5m", 300.0), ("1h", 3600.0), ("1h30m", 5400.0),
     ("1.5m", 90.0),
     ("5 minutes", 300.0), ("1h 30min", 5400.0), ("2 days", 172800.0), ("1w", 604800.0), ("10sec", 10.0),
     ("1 hr 2 min 3 s", 3723.0)],
)
def test_durations(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "m", "5 mins", "1h30", "-5s", "5x", "5ms", "1:30", "90 5m", "1 month", True])
def test_bad_durations(text):
    with pytest.raises(ValueError):
        parse_duration(text)


# -- every kind of problem, located -------------------------------------------------------------

# (policy text, path, line, column, words in the message, words in the hint or None)
LOCATED_PROBLEMS = [
    pytest.param("version: 2\n", "version", 1, 10, "must be 1", None, id="version"),
    pytest.param("connections: []\nversion: 1\n", "connections", 1, 14, "must not be empty", None, id="no-connections"),
    pytest.param(
        "version: 1\nlimits:\n  max_parallel_saves: 0\n",
        "limits.max_parallel_saves", 3, 23, "at least 1", None, id="parallelism-zero",
    ),
    pytest.param(
        "version: 1\nlimits:\n  max_parallel_starts: lots\n",
        "limits.max_parallel_starts", 3, 24, "a whole number of at least 1, or auto", None, id="parallelism-word",
    ),
    pytest.param(
        "version: 1\nlimits: {shutdown_deadline: 0s}\n",
        "limits.shutdown_deadline", 2, 29, "longer than the 10 s kept back", None, id="deadline-zero-string",
    ),
    pytest.param(
        "version: 1\nlimits: {shutdown_deadline: .inf}\n",
        "limits.shutdown_deadline", 2, 29, "greater than the maximum of 604800", None, id="deadline-infinite",
    ),
    pytest.param(
        "version: 1\nlimits: {start_delay: -1}\n", "limits.start_delay", 2, 23, "at least 0", None, id="negative-delay",
    ),
    pytest.param(
        "version: 1\ndefaults:\n  autostart: alwyas\n",
        "defaults.autostart", 3, 14, "always, if-running, never", "did you mean 'always'?", id="enum",
    ),
    pytest.param(
        "version: 1\ndefaults:\n  on_resume_failure: boot_fresh\n",
        "defaults.on_resume_failure", 3, 22, "boot-fresh, leave-off", "did you mean 'boot-fresh'?", id="enum-underscore",
    ),
    pytest.param(
        "version: 1\ndefaults:\n  on_shutdown: [save, halt]\n",
        "defaults.on_shutdown[1]", 3, 23, "save, shutdown, poweroff", None, id="step",
    ),
    pytest.param(
        "version: 1\ndefaults:\n  on_shutdown: [save, poweroff, save]\n",
        "defaults.on_shutdown[2]", 3, 33, "more than once", None, id="step-twice",
    ),
    pytest.param(
        "version: 1\ndefaults:\n  on_shutdown: []\n", "defaults.on_shutdown", 3, 16, "must not be empty", None, id="no-steps",
    ),
    pytest.param(
        "version: 1\ndefaults:\n  order: high\n", "defaults.order", 3, 10, "a whole number, not a string ('high')", None,
        id="order-type",
    ),
    pytest.param(
        "version: 1\ndefaults:\n  bypass_cache: maybe\n", "defaults.bypass_cache", 3, 17, "true or false", None,
        id="boolean",
    ),
    pytest.param(
        "version: 1\ndefaults:\n  save_timeout: 10 mins\n",
        "defaults.save_timeout", 3, 17, "a duration greater than 0", None, id="duration-words",
    ),
    pytest.param(
        "version: 1\ndefaults:\n  shutdown_timeout: -3\n", "defaults.shutdown_timeout", 3, 21, "greater than 0", None,
        id="duration-negative",
    ),
    pytest.param(
        "version: 1\ndefaults:\n  ready: agnt\n",
        "defaults.ready", 3, 10, "none, agent, a duration", "did you mean 'agent'?", id="ready-word",
    ),
    pytest.param(
        "version: 1\ndefaults:\n  ready: {agent: soon}\n", "defaults.ready.agent", 3, 18, "a duration", None,
        id="ready-agent-timeout",
    ),
    pytest.param(
        "version: 1\ndefaults:\n  ready: {agnet: 5}\n",
        "defaults.ready.agnet", 3, 11, "unknown key 'agnet'", "did you mean 'agent'?", id="ready-agent-key",
    ),
    pytest.param(
        "version: 1\ndefaults:\n  after: ['db*']\n", "defaults.after[0]", 3, 11, "globs are not allowed", None,
        id="after-glob",
    ),
    pytest.param(
        "version: 1\ndefaults:\n  shutdown_timout: 5\n",
        "defaults.shutdown_timout", 3, 3, "unknown key 'shutdown_timout'", "did you mean 'shutdown_timeout'?",
        id="did-you-mean",
    ),
    pytest.param(
        "version: 1\ndefaults:\n  sycn_time: true\n",
        "defaults.sycn_time", 3, 3, "unknown key", "did you mean 'sync_time'?", id="did-you-mean-swap",
    ),
    pytest.param(
        "version: 1\ndefaults:\n  colour: blue\n", "defaults.colour", 3, 3, "unknown key 'colour'", "allowed here: autostart",
        id="unknown-key",
    ),
    pytest.param(
        "version: 1\nautostart: never\n", "autostart", 2, 1, "unknown key", "go under 'defaults:'", id="setting-at-top",
    ),
    pytest.param(
        "version: 1\nguests:\n  - name: db*\n    order: 1\n",
        "guests[0]", 3, 5, "missing required key 'match'", "'name:' is only a label", id="rule-without-match",
    ),
    pytest.param(
        "version: 1\nguests:\n  - match: {name: db1, order: 3}\n",
        "guests[0].match.order", 3, 24, "unknown key 'order'", "beside 'match:'", id="setting-in-match",
    ),
    pytest.param(
        "version: 1\nguests:\n  - match: {}\n    uuid: 1\n",
        "guests[0].uuid", 4, 5, "unknown key 'uuid'", "inside 'match:'", id="selector-beside-match",
    ),
    pytest.param(
        "version: 1\nguests:\n  - match: {uuid: not-a-uuid}\n",
        "guests[0].match.uuid", 3, 19, "a UUID or a list of UUIDs", None, id="uuid",
    ),
    pytest.param(
        "version: 1\nguests:\n  - match: {name: ''}\n", "guests[0].match.name", 3, 19, "must not be empty", None,
        id="empty-glob",
    ),
    pytest.param(
        "version: 1\nguests:\n  - match: {name: [a, 5]}\n", "guests[0].match.name[1]", 3, 23, "a string", None,
        id="glob-type",
    ),
    pytest.param(
        "version: 1\nguests:\n  - match: {metadata: {text: x}}\n",
        "guests[0].match.metadata", 3, 23, "missing required key 'namespace'", None, id="metadata-namespace",
    ),
    pytest.param(
        "version: 1\nguests:\n  - match: {name: dns1}\n    after: [ntp1, dns1]\n",
        "guests[0].after[1]", 4, 19, "cannot wait for itself", None, id="after-itself",
    ),
    pytest.param(
        "version: 1\nguests:\n  - match: {name: db1}\n    save_timeout: 0m\n",
        "guests[0].save_timeout", 4, 19, "longer than 0", None, id="zero-duration-string",
    ),
    pytest.param(
        "version: 1\nguests: {match: {}}\n", "guests", 2, 9, "must be a list, not a mapping", None, id="guests-type",
    ),
    pytest.param(
        "version: 1\ndefaults: {after: dns1}\n", "defaults.after", 2, 19, "must be a list", "write a list, as in [dns1]",
        id="list-wanted",
    ),
    pytest.param(
        "version: 1\nguests:\n  - match: db*\n", "guests[0].match", 3, 12, "must be a mapping",
        "'match: {name: \"db*\"}'", id="match-string",
    ),
    pytest.param(
        "version: 1\nguests:\n  - db*\n", "guests[0]", 3, 5, "must be a mapping", "each rule is a mapping",
        id="rule-string",
    ),
    pytest.param(
        "version: 1\ndefaults:\n  order: 0\n  order: 1\n",
        "defaults.order", 4, 3, "duplicate key 'order' (first given on line 3)", "only the last one", id="duplicate-key",
    ),
    pytest.param("version: 1\ndefaults:\n  order: 0x10000000000000000\n", "defaults.order", 3, 10, "too large", None, id="huge"),
    pytest.param("version: 1\ndefaults:\n  order: !!int x\n", "defaults.order", 3, 10, "cannot read this value", None,
                 id="bad-tag-value"),
    pytest.param("version: 1\ndefaults: !custom {order: 1}\nx: !thing 1\n", "x", 3, 4, "cannot read this value", None,
                 id="unknown-tag"),
    pytest.param("guests: []\n", "", 1, 1, "missing required key 'version'", None, id="no-version"),
    pytest.param("- version: 1\n", "", 1, 1, "must be a mapping", None, id="top-level-list"),
    pytest.param("version: 1\n[a, b]: 1\n", "", 2, 1, "a key must be a plain word", None, id="complex-key"),
    # URIs libvirt would run a program for, as root: refused wherever the policy names one.
    pytest.param("version: 1\ndefaults:\n  migrate: {peers: ['qemu+ext:///system']}\n", "defaults.migrate.peers[0]",
                 3, 21, "a transport a migration can use", None, id="uri-ext-transport"),
    pytest.param("version: 1\ndefaults:\n  migrate: {peers: ['qemu+ssh://root@peer/system?netcat=/tmp/x']}\n",
                 "defaults.migrate.peers[0]", 3, 21, "only parameters that run no command", None, id="uri-netcat"),
    pytest.param("version: 1\nguests:\n  - match: {name: a}\n    migrate: {home: 'qemu+tls://h/system?name=a;command=/x'}\n",
                 "guests[0].migrate.home", 4, 21, "only parameters that run no command", None, id="uri-semicolon"),
    pytest.param("version: 1\nconnections: ['qemu+ssh://h/system?command=/bin/sh']\n", "connections[0]", 2, 15,
                 "only parameters that run no command", None, id="uri-connection-command"),
    pytest.param("version: 1\nconnections: ['qemu+tls://h/system?comm%61nd=/x']\n", "connections[0]", 2, 15,
                 "only parameters that run no command", None, id="uri-escaped-name"),
]


def test_uris_with_the_transports_and_parameters_a_migration_uses_are_accepted(policy_dir):
    peers = ["qemu+tls://p1/system", "qemu://p2/system", "qemu+ssh://root@p3:2222/system?keyfile=/root/k&no_tty=1",
             "qemu+libssh2://p4/system?known_hosts=/root/kh&sshauth=privkey", "qemu+libssh://p5/system",
             "qemu+tcp://p6/system", "qemu+unix:///system?socket=/run/libvirt/libvirt-sock&mode=direct",
             "qemu+ssh://p7/system?proxy=native&name=qemu:///system"]
    file = write(policy_dir, f"version: 1\nconnections: ['qemu:///system', 'test:///default', '{peers[-2]}']\n"
                             f"defaults:\n  migrate: {{peers: {peers}, come_back: true, home: '{peers[0]}'}}\n")
    assert load_policy(file).defaults["migrate"].peers == tuple(peers)


@pytest.mark.parametrize(("text", "path", "line", "column", "message", "hint"), LOCATED_PROBLEMS)
def test_problems_are_located(policy_dir, text, path, line, column, message, hint):
    file = write(policy_dir, text)
    problem = only_problem(file)
    assert (problem.file, problem.path, problem.line, problem.column) == (file, path, line, column), str(problem)
    assert message in problem.message, str(problem)
    if hint is not None:
        assert problem.hint and hint in problem.hint, str(problem)


def test_every_problem_is_reported_at_once(policy_dir):
    file = write(
        policy_dir,
        """\
        version: 1
        limits: {max_parallel_saves: 0}
        defaults:
          autostart: sometimes
          shutdown_timout: 5
        guests:
          - match: {name: db1}
            order: first
          - match: {name: db2}
            on_shutdown: [save, save]
            ready: {agent: 0s}
        """,
    )
    problems = problems_of(file)
    assert [(p.line, p.path) for p in problems] == [
        (2, "limits.max_parallel_saves"),
        (4, "defaults.autostart"),
        (5, "defaults.shutdown_timout"),
        (8, "guests[0].order"),
        (10, "guests[1].on_shutdown[1]"),
        (11, "guests[1].ready.agent"),
    ]
    text = str(PolicyError(problems))
    assert text.startswith("6 problems in the policy:")
    assert f"{file}:5:3: at 'defaults.shutdown_timout': unknown key" in text


@pytest.mark.parametrize(
    ("text", "line", "column", "words"),
    [
        ("version: 1\ndefaults:\n  order: [1\n", 4, 1, "YAML syntax error"),
        ("version: 1\n  order: 1\n", 2, 8, "YAML syntax error"),
        ("version: 1\ndefaults: *nowhere\n", 2, 11, "undefined alias"),
        ("version: 1\n---\nversion: 1\n", 2, 1, "single document"),
        ("version: 1\ttab\n\x07", 2, 1, "cannot contain the character"),
        ("version: 1\n\t- tab\n", 2, 1, "YAML syntax error"),
    ],
)
def test_yaml_errors_have_line_and_column(policy_dir, text, line, column, words):
    problem = only_problem(write(policy_dir, text))
    assert (problem.line, problem.column, problem.path) == (line, column, "")
    assert words in problem.message


@pytest.mark.parametrize(
    ("text", "hint"),
    [
        ("version: 1\n\tdefaults: {}\n", "not tabs"),
        ("version: 1\nguests:\n  - match: {title: *prod*}\n", 'quote globs, as in "*prod*"'),
        ("version: 1\nguests:\n  - match:\n      name: *db\n", "quote globs"),
        ("version: 1\nguests:\n  - name: a: b\n", "quote a value that contains ': '"),
    ],
)
def test_common_yaml_mistakes_get_a_hint(policy_dir, text, hint):
    problem = only_problem(write(policy_dir, text))
    assert problem.line is not None and hint in (problem.hint or "")


def test_a_merge_key_cycle_is_refused(policy_dir):
    problem = only_problem(write(policy_dir, "version: 1\ndefaults: &d {<<: *d}\n"))
    assert "nested too deeply" in problem.message


def test_bad_utf8_is_located(policy_dir):
    problem = only_problem(write(policy_dir, b"version: 1\ndefaults:\n  order: \xff\n"))
    assert (problem.line, problem.column) == (3, 10)
    assert "UTF-8" in problem.message


@pytest.mark.parametrize("text", ["", "# just a comment\n", "---\n"])
def test_an_empty_file_is_a_problem(policy_dir, text):
    assert "empty" in only_problem(write(policy_dir, text)).message


def test_a_yaml_bomb_is_refused_fast(policy_dir):
    lines = ['a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for level in range(1, 10):
        items = ", ".join([f"*a{level - 1}"] * 9)
        lines.append(f"a{level}: &a{level} [{items}]")
    file = write(policy_dir, "version: 1\n" + "\n".join(lines) + "\n")
    started = time.process_time()  # CPU time: other work on a busy machine does not count
    problem = only_problem(file)
    assert time.process_time() - started < 2  # expanding it would take 10**9 nodes
    assert "YAML nodes" in problem.message


def test_a_self_referencing_alias_is_refused(policy_dir):
    problem = only_problem(write(policy_dir, "version: 1\nguests: &loop [*loop]\n"))
    assert problem.message in ("nested too deeply",) or "YAML nodes" in problem.message


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("[" * 5000 + "]" * 5000, id="flow"),
        pytest.param("a:\n" + "".join(f"{' ' * i}b:\n" for i in range(1, 1000)), id="block"),
    ],
)
def test_deep_nesting_is_refused(policy_dir, text):
    problem = only_problem(write(policy_dir, text))
    assert "nested too deeply" in problem.message or "YAML" in problem.message


def test_a_huge_file_is_refused_before_parsing(policy_dir):
    file = write(policy_dir, b"version: 1\n" + b"#" * MAX_FILE_BYTES + b"\n")
    problem = only_problem(file)
    assert problem.line is None and "larger than" in problem.message


def test_too_many_nodes_are_refused(policy_dir):
    file = write(policy_dir, "version: 1\nconnections: [" + ", ".join(["1"] * 100_001) + "]\n")
    started = time.process_time()
    assert "YAML nodes" in only_problem(file).message
    assert time.process_time() - started < 10


# -- the file itself ----------------------------------------------------------------------------


def test_a_missing_file_is_a_problem_without_a_line(policy_dir):
    path = str(policy_dir / "nope.yaml")
    problem = only_problem(path)
    assert (problem.file, problem.line, problem.column) == (path, None, None)
    assert "no such file" in problem.message


def test_a_directory_is_not_a_policy(policy_dir):
    (policy_dir / "dir").mkdir()
    assert "directory" in only_problem(str(policy_dir / "dir")).message


def test_a_fifo_is_refused_without_hanging(policy_dir):
    fifo = policy_dir / "policy.yaml"
    os.mkfifo(fifo, 0o644)
    assert "not a regular file" in only_problem(str(fifo)).message


@pytest.mark.parametrize("mode", [0o664, 0o646, 0o666])
def test_a_file_writable_by_others_is_refused(policy_dir, mode):
    path = write(policy_dir, "version: 1\n")
    os.chmod(path, mode)
    problem = only_problem(path)
    assert "insecure" in problem.message and "writable by group or others" in problem.message
    assert "--insecure-policy" in problem.hint
    assert load_policy(path, trust_insecure=True).version == 1


def test_a_directory_writable_by_others_is_refused(policy_dir):
    path = write(policy_dir, "version: 1\n")
    policy_dir.chmod(0o777)
    problem = only_problem(path)
    assert "its directory" in problem.message and "--insecure-policy" in problem.hint
    assert load_policy(path, trust_insecure=True).version == 1


def test_the_directory_of_a_symlinks_target_is_checked_too(policy_dir):
    (policy_dir / "etc").mkdir(mode=0o755)
    (policy_dir / "shared").mkdir()
    (policy_dir / "shared").chmod(0o777)
    target = write(policy_dir / "shared", "version: 1\n")
    link = policy_dir / "etc" / "policy.yaml"
    link.symlink_to(target)
    problem = only_problem(str(link))
    assert "shared is writable by group or others" in problem.message


@pytest.mark.skipif(os.geteuid() != 0, reason="only root can give a file away")
def test_a_file_owned_by_someone_else_is_refused(policy_dir):
    path = write(policy_dir, "version: 1\n")
    os.chown(path, 4242, -1)
    problem = only_problem(path)
    assert "owned by uid 4242" in problem.message and "--insecure-policy" in problem.hint
    assert load_policy(path, trust_insecure=True).version == 1


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads anything")
def test_an_unreadable_file_is_a_problem(policy_dir):
    path = write(policy_dir, "version: 1\n")
    os.chmod(path, 0)
    assert only_problem(path).line is None


# -- the shutdown and boot passes ---------------------------------------------------------------


def test_pass_without_the_default_file_uses_the_builtin_policy_quietly(policy_dir):
    assert load_policy_for_pass(str(policy_dir / "policy.yaml"), explicit=False) == (BUILTIN_POLICY, [])


def test_pass_with_an_explicit_missing_file_says_so(policy_dir):
    policy, problems = load_policy_for_pass(str(policy_dir / "policy.yaml"), explicit=True)
    assert policy is BUILTIN_POLICY and policy.source is None
    assert len(problems) == 1 and "no such file" in problems[0].message


def test_pass_with_a_good_file_uses_it(policy_dir):
    path = write(policy_dir, "version: 1\ndefaults: {order: 3}\n")
    policy, problems = load_policy_for_pass(path, explicit=False)
    assert problems == [] and policy.source == path and policy.defaults["order"] == 3


def test_pass_with_a_broken_file_falls_back_and_reports(policy_dir):
    path = write(policy_dir, "version: 1\ndefaults: {ordr: 3}\nguests: [\n")
    policy, problems = load_policy_for_pass(path, explicit=False)
    assert policy is BUILTIN_POLICY
    assert problems and all(p.file == path for p in problems)


def test_pass_with_a_broken_file_keeps_its_valid_connections(policy_dir):
    path = write(policy_dir, "version: 1\nconnections: [qemu:///system, lxc:///]\ndefaults: {ordr: 3}\n")
    policy, problems = load_policy_for_pass(path, explicit=True)
    assert policy.is_builtin and policy.connections == ("qemu:///system", "lxc:///")
    assert policy.defaults == BUILTIN_POLICY.defaults and policy.rules == ()
    assert [p.path for p in problems] == ["defaults.ordr"]


def test_pass_with_a_broken_file_keeps_its_valid_ups(policy_dir):
    path = write(policy_dir, "version: 1\npower: {ups: 'rack@localhost:3493', margin: 90s}\ndefaults: {ordr: 3}\n")
    policy, problems = load_policy_for_pass(path, explicit=True)
    assert policy.is_builtin and policy.power is not None
    assert (policy.power.ups.name, policy.power.ups.host, policy.power.margin) == ("rack", "localhost", 90)
    assert [p.path for p in problems] == ["defaults.ordr"]


@pytest.mark.parametrize("power", ["{ups: 'no at sign'}", "{ups: 'rack@localhost', margin: soon}",
                                   "{ups: 'rack@localhost:99999'}"])
def test_pass_with_a_broken_file_and_a_broken_ups_has_none(policy_dir, power):
    path = write(policy_dir, f"version: 1\npower: {power}\ndefaults: {{ordr: 3}}\n")
    policy, problems = load_policy_for_pass(path, explicit=True)
    assert policy.is_builtin and policy.power is None and problems


def test_pass_with_an_insecure_file_falls_back(policy_dir):
    path = write(policy_dir, "version: 1\nconnections: [test:///default]\n")
    os.chmod(path, 0o666)
    policy, problems = load_policy_for_pass(path, explicit=False)
    assert policy is BUILTIN_POLICY and "insecure" in problems[0].message
    policy, problems = load_policy_for_pass(path, explicit=False, trust_insecure=True)
    assert problems == [] and policy.connections == ("test:///default",)


@pytest.mark.parametrize(
    ("cli", "environ", "expected"),
    [
        (None, {}, (DEFAULT_POLICY_PATH, False)),
        (None, {"MGSAVE_POLICY": ""}, (DEFAULT_POLICY_PATH, False)),
        (None, {"MGSAVE_POLICY": "/srv/p.yaml"}, ("/srv/p.yaml", True)),
        ("/cli.yaml", {"MGSAVE_POLICY": "/srv/p.yaml"}, ("/cli.yaml", True)),
        ("/cli.yaml", {}, ("/cli.yaml", True)),
    ],
)
def test_policy_path_from(cli, environ, expected):
    assert policy_path_from(cli, environ) == expected


@pytest.mark.parametrize(("text", "path", "words"), [
    # valid-looking, but the boot pass used to sleep on them and crash with OverflowError
    ("defaults:\n  ready: 99999999999999h\n", "defaults.ready", "at most 7 days (604800 s)"),
    ("defaults:\n  ready: {agent: 1000000000000s}\n", "defaults.ready.agent", "at most 7 days"),
    ("limits:\n  start_delay: 1.0e+300\n", "limits.start_delay", "604800"),
    ("limits:\n  start_delay: 8d\n", "limits.start_delay", ""),  # no such unit: a plain schema error
    ("defaults:\n  save_timeout: 169h\n", "defaults.save_timeout", "at most 7 days"),
    ("guests:\n  - match: {name: a}\n    shutdown_timeout: 604801\n", "guests[0].shutdown_timeout", "604800"),
    ("limits:\n  shutdown_deadline: .inf\n", "limits.shutdown_deadline", ""),
    # the last 10 s are kept for the fallback steps: a deadline of 10 s or less would power
    # off every guest without trying anything else
    ("limits:\n  shutdown_deadline: 10\n", "limits.shutdown_deadline", "kept back at the end of the pass"),
    ("limits:\n  shutdown_deadline: 5s\n", "limits.shutdown_deadline", "kept back at the end of the pass"),
])
def test_durations_have_bounds_the_code_can_sleep_on(policy_dir, text, path, words):
    problem = only_problem(write(policy_dir, "version: 1\n" + text))
    assert problem.path == path, problem
    assert words in str(problem), problem


def test_the_longest_and_shortest_durations_that_are_allowed_load(policy_dir):
    from libmgsave.policy import DEADLINE_RESERVE, MAX_DURATION

    policy = load_policy(write(policy_dir, "version: 1\nlimits:\n  shutdown_deadline: 10.5\n  start_delay: 168h\n"
                                           "defaults:\n  ready: 604800\n"))
    assert policy.limits.shutdown_deadline == 10.5 > DEADLINE_RESERVE
    assert policy.limits.start_delay == MAX_DURATION
    from libmgsave.policyfile import policy_schema

    schema = policy_schema()["$defs"]
    assert {branch.get("maximum") for branch in schema["duration"]["anyOf"] if branch["type"] == "number"} \
        == {MAX_DURATION}
    assert {branch.get("maximum") for branch in schema["duration_or_zero"]["anyOf"] if branch["type"] == "number"} \
        == {MAX_DURATION}
