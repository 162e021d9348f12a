"""The last valid copy of a policy file (``state.policy_copy``): kept byte for byte, read back
only when every field checks out, refused with the reason otherwise. Real files in tmp_path."""

import hashlib
import json
import os

import pytest

from libmgsave.state.policy_copy import COPY_FORMAT, CopyUnusable, copy_path, digest_of, keep, read

POLICY = b"version: 1\nguests:\n  - match: {name: keep-off}\n    autostart: never\n"


@pytest.fixture
def state_dir(tmp_path):
    return tmp_path / "var" / "state"


def written(state_dir, source="/etc/mgsave/policy.yaml"):
    keep(state_dir, source, POLICY, "mgsave check")
    return copy_path(state_dir, source)


def test_a_copy_is_kept_byte_for_byte_root_only_and_read_back(state_dir):
    copy = keep(state_dir, "/etc/mgsave/policy.yaml", POLICY, "mgsave check")
    assert (copy.source, copy.data, copy.accepted_by) == ("/etc/mgsave/policy.yaml", POLICY, "mgsave check")
    assert copy.digest == "sha256:" + hashlib.sha256(POLICY).hexdigest() == digest_of(POLICY)
    path = copy_path(state_dir, "/etc/mgsave/policy.yaml")
    assert os.stat(state_dir).st_mode & 0o777 == 0o700 and os.stat(path).st_mode & 0o777 == 0o600
    assert json.loads(path.read_text()) == {
        "format": COPY_FORMAT, "version": 1, "source": "/etc/mgsave/policy.yaml", "digest": copy.digest,
        "saved": copy.saved, "accepted_by": "mgsave check", "policy": POLICY.decode()}
    assert read(state_dir, "/etc/mgsave/policy.yaml") == copy
    assert read(state_dir, "/etc/mgsave/other.yaml") is None


def test_one_copy_per_policy_file_named_by_its_absolute_path(state_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    name = f"last-valid-policy-{hashlib.sha256(str(tmp_path / 'policy.yaml').encode()).hexdigest()[:16]}.json"
    assert copy_path(state_dir, "policy.yaml") == state_dir / name
    assert copy_path(state_dir, str(tmp_path / "policy.yaml")) == state_dir / name
    keep(state_dir, "policy.yaml", POLICY, "mgsave check")
    assert read(state_dir, str(tmp_path / "policy.yaml")).source == str(tmp_path / "policy.yaml")
    assert copy_path(state_dir, "/etc/mgsave/a.yaml") != copy_path(state_dir, "/etc/mgsave/b.yaml")


def test_the_same_bytes_keep_their_first_acceptance_and_new_ones_replace_them(state_dir):
    first = keep(state_dir, "/p.yaml", POLICY, "mgsave check")
    assert keep(state_dir, "/p.yaml", POLICY, "the boot pass") is None
    assert read(state_dir, "/p.yaml") == first
    newer = keep(state_dir, "/p.yaml", POLICY + b"# edited\n", "the boot pass")
    assert newer is not None and read(state_dir, "/p.yaml") == newer


def test_a_copy_that_cannot_be_used_is_replaced_by_the_next_valid_one(state_dir):
    path = written(state_dir, "/p.yaml")
    path.write_text("{damaged")
    copy = keep(state_dir, "/p.yaml", POLICY, "the shutdown pass")
    assert copy is not None and read(state_dir, "/p.yaml") == copy


def refused(state_dir, source="/etc/mgsave/policy.yaml") -> str:
    with pytest.raises(CopyUnusable) as why:
        read(state_dir, source)
    return str(why.value)


def rewrite(path, **changes):
    document = json.loads(path.read_text())
    for key, value in changes.items():
        if value is None:
            del document[key]
        else:
            document[key] = value
    path.write_text(json.dumps(document))


def test_a_copy_others_could_have_written_is_refused(state_dir):
    path = written(state_dir)
    os.chmod(path, 0o620)
    assert refused(state_dir) == f"{path}: others could have written it (uid 0, -rw--w----)"


def test_a_copy_that_cannot_be_read_is_refused(tmp_path):
    (tmp_path / "state").write_text("")  # the state directory is a file: not a missing copy
    path = copy_path(tmp_path / "state", "/etc/mgsave/policy.yaml")
    assert refused(tmp_path / "state") == f"{path}: cannot be read (Not a directory)"


@pytest.mark.parametrize("text", ["{damaged", "\xff", "[" * 100000])
def test_a_copy_that_is_not_json_is_refused(state_dir, text):
    path = written(state_dir)
    path.write_bytes(text.encode("latin-1"))
    assert refused(state_dir) == f"{path}: not valid JSON; the file is damaged"


@pytest.mark.parametrize("document", [["a", "list"], {"format": "mgsave-state"}])
def test_a_file_that_is_not_a_copy_is_refused(state_dir, document):
    path = written(state_dir)
    path.write_text(json.dumps(document))
    assert refused(state_dir) == f"{path}: not a copy of a policy kept by mgsave"


def test_a_copy_of_another_format_version_is_refused(state_dir):
    path = written(state_dir)
    rewrite(path, version=2)
    assert refused(state_dir) == f"{path}: of format 2; this mgsave reads 1"


def test_a_copy_of_another_policy_file_is_refused(state_dir):
    path = written(state_dir)
    rewrite(path, source="/etc/mgsave/other.yaml")
    assert refused(state_dir) == f"{path}: a copy of '/etc/mgsave/other.yaml', not of /etc/mgsave/policy.yaml"


@pytest.mark.parametrize("field, value", [("policy", None), ("policy", 1), ("digest", None), ("digest", 1),
                                          ("accepted_by", None), ("accepted_by", 1), ("saved", None),
                                          ("saved", "1"), ("saved", True), ("saved", float("inf"))])
def test_a_copy_with_a_field_missing_or_of_the_wrong_type_is_refused(state_dir, field, value):
    path = written(state_dir)
    document = json.loads(path.read_text())
    if value is None:
        del document[field]
    else:
        document[field] = value
    path.write_text(json.dumps(document))  # (infinity as JSON's Infinity, which Python reads)
    assert refused(state_dir) == f"{path}: a field is missing or of the wrong type; the file is damaged"


def test_a_copy_whose_saved_time_is_a_whole_number_is_read(state_dir):
    path = written(state_dir)
    rewrite(path, saved=1700000000)
    copy = read(state_dir, "/etc/mgsave/policy.yaml")
    assert copy.saved == 1700000000.0 and isinstance(copy.saved, float) and copy.data == POLICY


def test_a_copy_whose_policy_is_not_utf8_is_refused(state_dir):
    path = written(state_dir)
    path.write_text(path.read_text().replace(json.dumps(POLICY.decode())[:-1], '"\\udc80'))
    assert refused(state_dir) == f"{path}: the policy in it is not UTF-8 text; the file is damaged"


def test_a_copy_edited_by_hand_does_not_match_its_digest_and_is_refused(state_dir):
    path = written(state_dir)
    rewrite(path, policy=POLICY.decode().replace("never", "always"))
    assert refused(state_dir) == f"{path}: the policy in it does not match its digest; the file is damaged"


def test_whatever_is_in_the_copys_place_is_replaced_never_written_through(state_dir, tmp_path):
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    state_dir.mkdir(parents=True)
    copy_path(state_dir, "/p.yaml").symlink_to(victim)
    copy = keep(state_dir, "/p.yaml", POLICY, "mgsave check")
    assert victim.read_text() == "precious\n" and read(state_dir, "/p.yaml") == copy


def test_a_policy_file_whose_name_is_not_utf8_has_a_copy_of_its_own(state_dir):
    source = os.fsdecode(b"/etc/mgsave/policy-\xff.yaml")  # a byte no UTF-8 name has
    assert copy_path(state_dir, source) != copy_path(state_dir, "/etc/mgsave/policy-.yaml")
    assert copy_path(state_dir, source).name.startswith("last-valid-policy-")
