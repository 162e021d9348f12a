"""The validated policy kept in the state directory (``policyfile.cache``): a pass reuses it while
the file's bytes, mgsave's version and the schema are the same, and gets exactly the Policy a
fresh validation gives; anything it could not trust is ignored and rewritten, never an error.

Real files in ``tmp_path``; a "planted" cache (a valid cache entry whose policy differs from the
file's) shows whether a read used the cache or validated the file afresh."""

import dataclasses
import json
import os
import textwrap
from pathlib import Path

import pytest

from libmgsave.policy import SETTING_NAMES, Limits, Match
from libmgsave.policyfile import cache, load_policy, read_policy_for_pass

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "config" / "policy.sample.yaml"

# Every key of the schema, each set to something other than its default where it has one.
EVERY_SETTING = """\
version: 1
connections: [qemu:///system, "qemu+ssh://root@other/system"]
limits:
  max_parallel_saves: 3
  max_parallel_starts: auto
  max_parallel_migrations: 4
  shutdown_deadline: 1h30m
  start_delay: 2.5
  kept_images_warn_share: 12.5
metrics:
  textfile: /var/lib/node_exporter/mgsave.prom
power:
  ups: "ups1@[::1]:3494"
  credentials: /etc/mgsave/nut.credentials
  margin: 2m
  poll: 3
  on_unreadable: fixed-deadline
  shutdown_command: [systemctl, halt]
upgrades:
  on_saved_images: refuse
defaults:
  autostart: always
  on_shutdown: [migrate, save, shutdown, poweroff]
  on_reboot: [migrate, shutdown, poweroff]
  order: -5
  priority: 7
  after: [dns1, ldap1]
  ready: 45s
  save_timeout: 5m
  shutdown_timeout: 90
  bypass_cache: true
  sync_time: true
  on_resume_failure: leave-off
  save_channels: auto
  image_format: sparse
  migrate:
    peers: ["qemu+tls://peer1/system", "qemu+ssh://peer2/system"]
    live: false
    timeout: 120
    bandwidth: 500
    disks: copy
    come_back: true
    home: qemu+tls://here/system
guests:
  - name: first
    match:
      uuid: [5D3F1C2E-8A4B-4F2E-9C1D-0E6A7B8C9D0F]
      title: "*prod*"
      connection: "qemu:*"
      metadata:
        - {namespace: "https://example.org/a"}
        - {namespace: "https://example.org/b", text: "tier=db*"}
    ready: {agent: 3m}
    save_channels: 4
  - match: {name: [a*, b*]}
    ready: agent
    on_shutdown: [shutdown]
    save_channels: 1
    image_format: zstd
    migrate: {peers: ["qemu+tls://peer3/system"]}
"""


@pytest.fixture
def files(tmp_path: Path):
    tmp_path.chmod(0o755)
    state = tmp_path / "state"

    def write(text: str) -> str:
        path = tmp_path / "policy.yaml"
        path.write_text(textwrap.dedent(text))
        path.chmod(0o644)
        return str(path)

    return write, state


def _read(path: str, state: Path):
    read = read_policy_for_pass(path, explicit=True, cache_dir=state)
    assert read.problems == (), read.problems
    return read.policy


def _plant(path: str, state: Path) -> object:
    """A cache entry for the file's bytes as they are, holding another policy than theirs."""
    planted = load_policy(path).with_connections(("test:///planted",))
    cache.remember(state, path, Path(path).read_bytes(), planted)
    return planted


@pytest.mark.parametrize("text", [SAMPLE.read_text(), EVERY_SETTING, "version: 1\n"], ids=["sample", "every", "minimal"])
def test_a_cached_policy_is_the_policy_a_fresh_validation_builds(files, text):
    write, state = files
    path = write(text)
    fresh = load_policy(path)
    assert _read(path, state) == fresh  # a miss: validated, and kept
    cached = cache.cached_policy(state, path, Path(path).read_bytes())
    assert cached is not None
    assert cached == fresh and repr(cached) == repr(fresh)  # repr: 1 and 1.0, a dict and a mappingproxy differ
    assert _read(path, state) == fresh


def test_every_setting_policy_sets_every_field_of_the_model(files):
    """So that the round trip above goes through every field, not only the defaults."""
    write, _state = files
    policy = load_policy(write(EVERY_SETTING))
    assert set(policy.defaults) == set(SETTING_NAMES)
    assert all(getattr(policy.limits, f.name) != getattr(Limits(), f.name) or f.name == "max_parallel_starts"
               for f in dataclasses.fields(Limits))
    assert policy.power is not None and policy.power.credentials and policy.metrics.textfile
    assert policy.upgrades != type(policy.upgrades)()
    assert all(getattr(policy.rules[0].match, f.name) for f in dataclasses.fields(Match) if f.name != "name")


def test_an_unchanged_file_is_read_from_the_cache(files):
    write, state = files
    path = write("version: 1\n")
    planted = _plant(path, state)
    assert _read(path, state) == planted


@pytest.mark.parametrize("change", [
    lambda text: text + "# a comment\n",
    lambda text: text.replace("version: 1", "version:  1"),
    lambda text: text.replace("\n", "\r\n"),
])
def test_any_change_of_the_bytes_is_a_miss(files, change):
    write, state = files
    path = write(EVERY_SETTING)
    _plant(path, state)
    path = write(change(EVERY_SETTING))
    assert _read(path, state) == load_policy(path)
    assert _read(path, state).connections != ("test:///planted",)


@pytest.mark.parametrize("field, value", [("mgsave", "0.0.1"), ("schema", "sha256:" + "0" * 64),
                                          ("auto_parallelism", 1000), ("source", "/elsewhere/policy.yaml")])
def test_another_version_schema_or_machine_is_a_miss(files, field, value):
    write, state = files
    path = write("version: 1\n")
    _plant(path, state)
    [cached] = state.glob("validated-policy-*.json")
    document = json.loads(cached.read_text())
    document["key"][field] = value  # as an older mgsave, another schema or machine wrote it
    cached.write_text(json.dumps(document))
    assert _read(path, state) == load_policy(path)


def test_a_broken_policy_is_never_cached(files):
    write, state = files
    path = write("version: 1\n")
    _read(path, state)
    path = write("version: 1\nlimits: {max_parallel_saves: lots}\n")
    read = read_policy_for_pass(path, explicit=True, cache_dir=state)
    assert read.policy is None and read.problems
    assert cache.cached_policy(state, path, Path(path).read_bytes()) is None


@pytest.mark.parametrize("damage", [b"", b"{not json", b'{"format": "mgsave-validated-policy"}', b"\xff\xfe",
                                    b'{"format": "mgsave-validated-policy", "version": 1, "key": null}'])
def test_a_damaged_cache_is_ignored_and_rewritten(files, damage):
    write, state = files
    path = write(EVERY_SETTING)
    _read(path, state)
    [cached] = state.glob("validated-policy-*.json")
    cached.write_bytes(damage)
    assert _read(path, state) == load_policy(path)
    assert cache.cached_policy(state, path, Path(path).read_bytes()) == load_policy(path)


def test_a_cache_holding_what_is_not_a_policy_is_ignored(files):
    write, state = files
    path = write("version: 1\n")
    _plant(path, state)
    [cached] = state.glob("validated-policy-*.json")
    document = json.loads(cached.read_text())
    document["policy"] = {"class": "Popen", "fields": {"args": "id"}}
    cached.write_text(json.dumps(document))
    assert _read(path, state) == load_policy(path)


@pytest.mark.parametrize("mode", [0o620, 0o602, 0o666])
def test_a_cache_others_could_write_is_ignored(files, mode):
    write, state = files
    path = write("version: 1\n")
    _plant(path, state)
    [cached] = state.glob("validated-policy-*.json")
    cached.chmod(mode)
    assert _read(path, state) == load_policy(path)


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a file to another user needs root")
def test_a_cache_owned_by_another_user_is_ignored(files):
    write, state = files
    path = write("version: 1\n")
    _plant(path, state)
    [cached] = state.glob("validated-policy-*.json")
    os.chown(cached, 65534, 65534)
    assert _read(path, state) == load_policy(path)


def test_a_cache_that_is_a_symlink_is_ignored_and_replaced(files, tmp_path):
    write, state = files
    path = write("version: 1\n")
    _plant(path, state)
    [cached] = state.glob("validated-policy-*.json")
    target = tmp_path / "elsewhere.json"
    cached.rename(target)
    cached.symlink_to(target)
    assert _read(path, state) == load_policy(path)
    assert not cached.is_symlink() and "planted" in target.read_text()  # replaced, not written through


def test_the_cache_is_written_atomically_private(files):
    write, state = files
    path = write("version: 1\n")
    _read(path, state)
    [cached] = state.glob("validated-policy-*.json")
    assert cached.stat().st_mode & 0o777 == 0o600
    assert [p.name for p in state.iterdir()] == [cached.name]  # no temporary file left


def test_without_a_cache_directory_nothing_is_kept(files):
    write, state = files
    path = write("version: 1\n")
    assert read_policy_for_pass(path, explicit=True).policy == load_policy(path)
    assert not state.exists()
