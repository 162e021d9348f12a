"""A persistent guest's channelled (sparse) managed image resumed with channels
(``Guest.resume_with_channels``), on the test driver, which has no virDomainRestoreParams: the
image is taken aside, libvirt refuses, the image goes back where libvirt's start resumes it,
and the caller starts the guest in one stream. What a restore that went through does is on the
rig (tests/test_restore_params_rig.py)."""

import os

import pytest

from libmgsave import resuming
from libmgsave.errors import OperationRefused
from libmgsave.hypervisor import Host
from tests.testdriver import URI, define, hv  # noqa: F401


def _image(tmp_path):
    save_dir = tmp_path / "save"
    save_dir.mkdir(mode=0o711)
    image = save_dir / "g.save"
    image.write_bytes(b"LibvirtQemudSave" + b"\0" * 64)
    return image


def test_a_refused_resume_with_channels_puts_the_image_back_and_asks_for_one_stream(hv, tmp_path, caplog):
    define(hv, "g")
    hv.lookupByName("g").destroy()
    guest = Host(URI, hv).guest(hv.lookupByName("g").UUIDString())
    image = _image(tmp_path)
    assert guest.resume_with_channels(str(image), 2) is False
    assert image.read_bytes().startswith(b"LibvirtQemudSave")
    assert list((image.parent / resuming.ASIDE).iterdir()) == []
    assert "resuming it in one stream" in caplog.text and not hv.lookupByName("g").isActive()


def test_an_image_that_cannot_be_taken_aside_stays_and_asks_for_one_stream(hv, tmp_path, caplog):
    define(hv, "g")
    hv.lookupByName("g").destroy()
    guest = Host(URI, hv).guest(hv.lookupByName("g").UUIDString())
    image = _image(tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    os.symlink(elsewhere, image.parent / resuming.ASIDE)  # a link where mgsave's directory goes
    assert guest.resume_with_channels(str(image), 2) is False
    assert image.exists() and list(elsewhere.iterdir()) == []
    assert "cannot move its image aside" in caplog.text


def test_an_image_is_never_put_back_under_a_guest_that_runs(hv, tmp_path):
    """Started by someone else while libvirt refused ours: back in place, the image would be
    resumed over the guest's later state by its next start; it stays aside, and the error says where."""
    define(hv, "g")
    guest = Host(URI, hv).guest(hv.lookupByName("g").UUIDString())  # runs
    image = _image(tmp_path)
    with pytest.raises(OperationRefused, match="its image is kept at .*mgsave-resuming/g.save"):
        guest.resume_with_channels(str(image), 2)
    assert not image.exists() and (image.parent / resuming.ASIDE / "g.save").exists()


def test_a_file_left_aside_is_listed_with_the_kept_images(tmp_path):
    from libmgsave.state.kept import kept_files

    image = _image(tmp_path)
    aside = resuming.take_aside(str(image))
    [kept] = kept_files(tmp_path / "state", beside=[image.parent])
    assert str(kept.path) == aside and kept.kind == "failed-image"
    resuming.remove(aside)
    assert kept_files(tmp_path / "state", beside=[image.parent]) == []
