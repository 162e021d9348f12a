"""Files where someone else may have put something else: never read or written through a link,
never waited for (a FIFO), never read without bound (a device), and never removed or moved
through a directory swapped for a link (real files in ``tmp_path``)."""

import os
import stat

import pytest

from libmgsave import safefiles
from libmgsave.state import images
from libmgsave.state.kept import KEPT_BESIDE

UUID = "0f6c9a4e-8f0e-4a53-9d8c-2b7f7b0c1a11"


@pytest.mark.parametrize("kind", ["link", "fifo", "dev-zero", "directory", "big"])
def test_a_small_file_is_read_only_when_it_is_a_regular_file_of_a_bounded_size(tmp_path, kind):
    path = tmp_path / "file"
    good = tmp_path / "good"
    good.write_bytes(b"x")
    {"link": lambda: path.symlink_to(good), "fifo": lambda: os.mkfifo(path),
     "dev-zero": lambda: path.symlink_to("/dev/zero"), "directory": path.mkdir,
     "big": lambda: path.write_bytes(b"y" * 101)}[kind]()
    with pytest.raises(safefiles.UnsafeFile):
        safefiles.read_small_file(path, 100)
    assert safefiles.read_small_file(good, 100) == b"x"


def test_the_policy_may_be_read_through_a_link_but_never_from_a_device(tmp_path):
    (tmp_path / "link").symlink_to("/dev/zero")
    with pytest.raises(safefiles.UnsafeFile):
        safefiles.read_small_file(tmp_path / "link", 100, follow_symlinks=True)


@pytest.mark.parametrize("kind", ["link", "fifo"])
def test_a_file_is_never_written_through_a_link_nor_into_a_fifo(tmp_path, kind):
    victim = tmp_path / "victim"
    victim.write_text("kept")
    path = tmp_path / "out"
    path.symlink_to(victim) if kind == "link" else os.mkfifo(path)
    with pytest.raises(safefiles.UnsafeFile):
        safefiles.write_file(path, "new")
    assert victim.read_text() == "kept" and (path.is_symlink() or stat.S_ISFIFO(os.lstat(path).st_mode))
    safefiles.write_file(path, "new", replace_anything=True)  # a name of our own: replaced, not followed
    assert path.read_text() == "new" and not path.is_symlink() and victim.read_text() == "kept"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "victim"], "no temporary file left"


def test_a_write_is_atomic_and_has_the_mode_asked(tmp_path):
    path = tmp_path / "out"
    path.write_text("old")
    safefiles.write_file(path, "new", mode=0o644, durable=False, suffix=".tmp")
    assert path.read_text() == "new" and stat.S_IMODE(path.stat().st_mode) == 0o644


def test_a_pass_never_removes_or_moves_a_file_through_a_swapped_images_directory(tmp_path):
    state_dir = tmp_path / "state"
    state_dir.mkdir()
    elsewhere = tmp_path / "etc"
    elsewhere.mkdir()
    victim = elsewhere / f"{UUID}.save"
    victim.write_bytes(b"root's file")
    (state_dir / "images").symlink_to(elsewhere)
    path = str(state_dir / "images" / f"{UUID}.save")
    assert images.remove_used_image(path, "g") is not None, "not removed: an error"
    images.discard_partial_save(path, "g", "its save failed")
    assert images.set_aside_failed_file(path, state_dir / "failed-images", "g") is None
    assert victim.read_bytes() == b"root's file"
    assert not any((state_dir / "failed-images").iterdir())


def test_a_kept_image_is_never_linked_into_a_swapped_failed_images_directory(tmp_path):
    state_dir = tmp_path / "state"
    state_dir.mkdir()
    elsewhere = tmp_path / "public"
    elsewhere.mkdir()
    (state_dir / "failed-images").symlink_to(elsewhere)
    image = tmp_path / "guest.save"
    image.write_bytes(b"guest memory")
    (tmp_path / KEPT_BESIDE).write_text("in the way")  # so that failed-images/ is tried
    assert images.keep_failed_image(str(image), state_dir / "failed-images", "g") is None
    assert list(elsewhere.iterdir()) == [] and image.read_bytes() == b"guest memory"


def test_images_are_still_removed_and_moved_in_their_own_directories(tmp_path):
    state_dir = tmp_path / "state"
    (state_dir / "images").mkdir(parents=True)
    first, second = (state_dir / "images" / f"{UUID}.save"), (state_dir / "images" / f"{UUID[:-1]}2.save")
    first.write_bytes(b"1")
    second.write_bytes(b"2")
    assert images.remove_used_image(str(first), "g") is None and not first.exists()
    moved = images.set_aside_failed_file(str(second), state_dir / "failed-images", "g")
    assert moved is not None and moved.read_bytes() == b"2" and not second.exists()
    kept = images.keep_failed_image(str(moved), state_dir / "failed-images", "g")
    assert kept is not None and os.path.samefile(kept, moved)


def test_a_save_images_header_is_never_read_from_a_fifo_or_through_a_link(tmp_path):
    import threading

    from libmgsave import saveimages

    fifo, link, image = tmp_path / "fifo.save", tmp_path / "link.save", tmp_path / "real.save"
    os.mkfifo(fifo)
    image.write_bytes(b"LibvirtQemudPart" + b"\0" * 64)
    link.symlink_to(image)
    box = {}
    thread = threading.Thread(target=lambda: box.setdefault("problem", saveimages.saved_image_problem(str(fifo))),
                              daemon=True)
    thread.start()
    thread.join(30)
    if thread.is_alive():
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))  # lets the reader go, so the test ends
        pytest.fail("reading a save image's header hung on a FIFO")
    assert box["problem"] is None and not saveimages.saved_image_is_partial(str(link))
    assert saveimages.saved_image_is_partial(str(image))
