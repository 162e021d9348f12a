"""The state directory (``state.StateDir``): where it is, its paths, and that nothing is read
from it while others can write to it. Real directories in tmp_path, really chowned to another
user (the tests run as root)."""

import json
import logging
import os
from pathlib import Path

import pytest

from libmgsave import state

OTHER_UID = 1


def test_the_state_directory_is_the_options_then_systemds_then_mgsaves_then_the_default(tmp_path):
    assert state.state_dir_from(str(tmp_path / "cli"), {"STATE_DIRECTORY": "/s", "MGSAVE_STATE_DIR": "/m"}) == \
        tmp_path / "cli"
    assert state.state_dir_from("", {"STATE_DIRECTORY": "/s:/t", "MGSAVE_STATE_DIR": "/m"}) == \
        Path("/s")
    assert state.state_dir_from(None, {"STATE_DIRECTORY": "", "MGSAVE_STATE_DIR": "/m"}) == Path("/m")
    assert state.state_dir_from(None, {"MGSAVE_STATE_DIR": ""}) == Path("/var/lib/mgsave")
    assert state.state_dir_from(None, {}) == Path(state.DEFAULT_STATE_DIR) == Path("/var/lib/mgsave")


def test_the_paths_of_a_state_directory(tmp_path):
    directory = state.StateDir(tmp_path)
    assert directory.shutdown_record == tmp_path / "last-shutdown.json"
    assert directory.boot_record == tmp_path / "last-boot.json"
    assert directory.images == tmp_path / "images"
    assert directory.failed_images == tmp_path / "failed-images"
    assert directory.trust_insecure is False


@pytest.fixture
def home(tmp_path):
    path = tmp_path / "state"
    (path / "images").mkdir(parents=True)
    (path / "failed-images").mkdir()
    os.chmod(tmp_path, 0o755)
    os.chmod(path, 0o755)
    assert state.StateDir(path).insecure is None
    return path


@pytest.mark.skipif(os.geteuid() != 0, reason="chowns to another user")
@pytest.mark.parametrize("where", ["", "images", "failed-images"])
def test_a_state_directory_or_a_directory_in_it_others_own_is_insecure_unless_trusted(home, where):
    os.chown(home / where, OTHER_UID, 0)
    assert state.StateDir(home).insecure == f"{home / where if where else home} is owned by uid {OTHER_UID}"
    assert state.StateDir(home, trust_insecure=True).insecure is None


def test_nothing_is_read_from_an_insecure_state_directory_and_it_is_said_once(home, caplog):
    caplog.set_level(logging.ERROR, logger="mgsave")
    record = {"format": "mgsave-state", "version": 1, "started": 1.0, "guests": {}}
    (home / "last-shutdown.json").write_text(json.dumps({**record, "kind": "shutdown"}))
    (home / "last-boot.json").write_text(json.dumps({**record, "kind": "boot"}))
    os.chmod(home / "images", 0o777)
    directory = state.StateDir(home)
    message = (f"the state directory {home} is not safe: {home / 'images'} is writable by group or others "
               f"(drwxrwxrwx); its records and save files are not trusted (guests are still saved into it; fix "
               f"its ownership and mode with chown root and chmod go-w, or pass --insecure-state-dir)")
    assert directory.insecure_warning() == message
    warnings, boot_warnings = [], []
    assert directory.last_shutdown(warnings=warnings) is None
    assert directory.last_boot(warnings=boot_warnings) is None
    assert boot_warnings == [message]
    assert directory.last_boot(warnings=warnings) is None
    assert warnings == [message], "said once"
    assert [r.getMessage() for r in caplog.records] == [message, message, message]
    caplog.clear()
    assert directory.last_shutdown(quiet=True) is None and directory.last_boot(quiet=True) is None
    assert caplog.records == []
    trusting = state.StateDir(home, trust_insecure=True)
    assert trusting.last_shutdown()["kind"] == "shutdown" and trusting.last_boot()["kind"] == "boot"


def test_a_secure_state_directorys_records_are_read_or_said_untrusted(home, caplog):
    directory = state.StateDir(home)
    assert directory.last_shutdown() is None and directory.last_boot() is None
    (home / "last-boot.json").write_text("{")
    (home / "last-shutdown.json").write_text("{")
    warnings = []
    assert directory.last_boot(quiet=True, warnings=warnings) is None
    assert directory.last_shutdown(quiet=True, warnings=warnings) is None
    assert [w.partition(":")[0] for w in warnings] == ["ignoring the boot record", "ignoring the shutdown record"]
    assert caplog.records == []
    assert directory.last_shutdown() is None
    assert caplog.records[-1].getMessage().startswith("ignoring the shutdown record: ")


@pytest.mark.parametrize("kind", ["shutdown", "boot"])
def test_each_kinds_untrusted_record_is_set_aside(home, kind):
    directory = state.StateDir(home)
    (home / "last-shutdown.json").write_text("{")
    (home / "last-boot.json").write_text("{")
    warnings = []
    directory.set_aside_untrusted(kind, warnings)
    assert not (home / f"last-{kind}.json").exists()
    other = "boot" if kind == "shutdown" else "shutdown"
    assert (home / f"last-{other}.json").read_text() == "{"
    assert warnings[0].startswith(f"ignoring the {kind} record: {home / f'last-{kind}.json'}: ")
