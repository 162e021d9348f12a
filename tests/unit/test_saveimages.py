"""What a save image's header says, read before a resume: libvirt itself would delete a partial
or (since libvirt 11) damaged image and boot the guest fresh without a word."""

from libmgsave.saveimages import save_file_is_complete, saved_image_problem


def write(tmp_path, name: str, data: bytes) -> str:
    path = tmp_path / name
    path.write_bytes(data)
    return str(path)


def test_a_complete_image_has_no_problem(tmp_path):
    path = write(tmp_path, "ok.save", b"LibvirtQemudSave" + b"\0" * 100)
    assert saved_image_problem(path) is None and save_file_is_complete(path)


def test_a_partial_image(tmp_path):
    path = write(tmp_path, "part.save", b"LibvirtQemudPart" + b"\0" * 100)
    assert "incomplete" in saved_image_problem(path)
    assert not save_file_is_complete(path)


def test_a_damaged_or_short_header(tmp_path):
    assert "damaged" in saved_image_problem(write(tmp_path, "bad.save", b"\xff" * 4096))
    assert "damaged" in saved_image_problem(write(tmp_path, "short.save", b"Libvirt"))
    assert "damaged" in saved_image_problem(write(tmp_path, "empty.save", b""))


def test_no_file_or_no_path_is_left_to_libvirt(tmp_path):
    assert saved_image_problem(str(tmp_path / "missing.save")) is None
    assert saved_image_problem(None) is None
