"""Whether the state directory, the directories in it and the files mgsave keeps there may be
trusted (``state.trust``): real directories and files in tmp_path, really chowned to another
user (the tests run as root), and real modes."""

import os

import pytest

from libmgsave.safefiles import UnsafeFile
from libmgsave.state.trust import insecure_because, insecure_subdirectory, refuse_unless_ours

OTHER_UID = 1  # not root and not us: any local user is an attacker

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="chowns to another user")


@pytest.fixture
def home(tmp_path):
    """A directory every directory above of which is trusted (tmp_path's parents are root's)."""
    path = tmp_path / "home"
    path.mkdir(mode=0o755)
    assert insecure_because(path) is None
    return path


def test_a_state_directory_owned_by_another_user_is_insecure(home):
    state = home / "state"
    state.mkdir(mode=0o700)
    os.chown(state, OTHER_UID, 0)
    assert insecure_because(state) == f"{state} is owned by uid {OTHER_UID}"


def test_a_directory_above_owned_by_another_user_makes_it_insecure_made_or_not(home):
    os.chown(home, OTHER_UID, 0)  # its owner can rename the state directory and put another there
    (home / "state").mkdir(mode=0o700)
    assert insecure_because(home / "state") == f"{home} is owned by uid {OTHER_UID}"
    assert insecure_because(home / "not-yet" / "state") == f"{home} is owned by uid {OTHER_UID}"


def test_a_state_directory_not_made_yet_is_decided_by_its_parents(home):
    assert insecure_because(home / "a" / "b" / "state") is None
    (home / "file").write_text("")
    assert insecure_because(home / "file" / "state") is None  # cannot be made: nothing to read there
    os.chmod(home, 0o775)
    assert insecure_because(home / "a" / "state") == f"{home} is writable by group or others (drwxrwxr-x)"
    os.chmod(home, 0o1777)  # sticky: only the directory itself may not be writable, and it is not made yet
    assert insecure_because(home / "a" / "state") is None


def test_a_state_directory_writable_by_its_group_is_insecure_even_when_sticky(home):
    state = home / "state"
    state.mkdir()
    os.chmod(state, 0o1770)  # sticky protects what is inside from renames, not the directory itself
    assert insecure_because(state) == f"{state} is writable by group or others (drwxrwx--T)"
    os.chmod(state, 0o700)
    os.chmod(home, 0o1777)  # a parent like /tmp: nobody else can rename what is not theirs
    assert insecure_because(state) is None
    os.chmod(home, 0o777)
    assert insecure_because(state) == f"{home} is writable by group or others (drwxrwxrwx)"


def test_a_state_directory_that_cannot_be_checked_is_insecure(home):
    state = home / ("x" * 300)  # longer than a name may be: lstat fails with something else than missing
    assert insecure_because(state) == f"{state} cannot be checked (File name too long)"


def test_a_subdirectory_owned_by_another_user_or_writable_by_others_is_insecure(home):
    images = home / "images"
    images.mkdir(mode=0o700)
    assert insecure_subdirectory(images) is None
    os.chown(images, OTHER_UID, 0)
    assert insecure_subdirectory(images) == f"{images} is owned by uid {OTHER_UID}"
    os.chown(images, 0, 0)
    os.chmod(images, 0o702)
    assert insecure_subdirectory(images) == f"{images} is writable by group or others (drwx----w-)"
    os.chmod(images, 0o720)
    assert insecure_subdirectory(images) == f"{images} is writable by group or others (drwx-w----)"


def test_anything_but_a_directory_in_a_subdirectorys_place_is_not_read_from_so_not_insecure(home):
    assert insecure_subdirectory(home / "images") is None
    (home / "images").write_text("")
    os.chown(home / "images", OTHER_UID, 0)
    assert insecure_subdirectory(home / "images") is None
    assert insecure_subdirectory(home / "images" / "below") is None
    other = home / "elsewhere"
    other.mkdir(mode=0o777)
    (home / "failed-images").symlink_to(other)
    assert insecure_subdirectory(home / "failed-images") is None


def test_a_subdirectory_that_cannot_be_checked_is_insecure(home):
    path = home / ("x" * 300)
    assert insecure_subdirectory(path) == f"{path} cannot be checked (File name too long)"


def file_info(path, uid, mode):
    path.write_text("kept\n")
    os.chown(path, uid, 0)
    os.chmod(path, mode)
    return os.stat(path)


def test_a_kept_file_is_trusted_only_when_ours_and_not_writable_by_others(home):
    refuse_unless_ours(file_info(home / "mine", 0, 0o600))
    refuse_unless_ours(file_info(home / "readable", 0, 0o644))
    with pytest.raises(UnsafeFile) as why:
        refuse_unless_ours(file_info(home / "theirs", OTHER_UID, 0o600))
    assert str(why.value) == f"others could have written it (uid {OTHER_UID}, -rw-------)"
    for mode, shown in ((0o620, "-rw--w----"), (0o602, "-rw-----w-")):
        with pytest.raises(UnsafeFile) as why:
            refuse_unless_ours(file_info(home / "shared", 0, mode))
        assert str(why.value) == f"others could have written it (uid 0, {shown})"
