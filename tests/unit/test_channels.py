"""Parallel save channels: what a connection offers (``channels.support``), how many a guest
gets (``channels.choose``, through the plan), and how the policy spells the setting."""

import struct

import pytest

from libmgsave import report
from libmgsave.channels import AUTO_MAX, ChannelSupport, choose, support
from libmgsave.errors import PolicyError
from libmgsave.history import RecordedPass
from libmgsave.plan import Action, plan_boot, plan_shutdown
from libmgsave.inventory import GuestState
from libmgsave.policy import BUILTIN_SETTINGS, Channels
from libmgsave.policyfile import parse_policy
from libmgsave.saveimages import image_format_of, is_sparse_image, is_whole_save_image
from tests.unit.test_plan import GiB_KIB, STATE_DIR, URI, by_name, guest

OFFERED = ChannelSupport(True, formats_why_not=None)
NOT_OFFERED = support("QEMU", 9_000_000, 7_002_000)


def policy(channels: str):
    return parse_policy(f"version: 1\ndefaults:\n  save_channels: {channels}\n", "policy.yaml")


# --- what a connection offers ------------------------------------------------------------------


@pytest.mark.parametrize("driver, lib, qemu, why_not", [
    ("QEMU", 9_000_000, 7_002_000, "libvirt 9.0.0 has no parallel save (needs 11.2)"),
    ("QEMU", 11_001_000, 9_002_000, "libvirt 11.1.0 has no parallel save (needs 11.2)"),
    ("QEMU", 11_003_000, 8_002_004, "QEMU 8.2.4 has no mapped-ram (needs 9.0)"),
    ("TEST", 11_003_000, None, "the test driver has no parallel save (only qemu's has)"),
    ("LXC", 11_003_000, None, "the lxc driver has no parallel save (only qemu's has)"),
])
def test_what_is_missing_is_named_with_the_version_it_needs(driver, lib, qemu, why_not):
    offered = support(driver, lib, qemu)
    assert (offered.available, offered.why_not) == (False, why_not)


def test_libvirt_11_2_with_qemu_9_offers_channels_unless_the_binding_or_the_save_dir_stands_in_the_way():
    assert support("QEMU", 11_002_000, 9_000_000) == OFFERED
    assert support("QEMU", 11_003_000, 10_000_013) == OFFERED
    assert not support("QEMU", 11_003_000, 10_000_013, managed_dir_known=False).available
    broken = support("QEMU", 11_003_000, 10_000_013, binding_problem="the binding cannot")
    assert broken == ChannelSupport(False, "the binding cannot", "the binding cannot")


# --- how many a guest gets ---------------------------------------------------------------------


def test_an_explicit_number_is_used_where_offered_and_refused_with_the_reason_elsewhere():
    g = guest("a")
    assert choose(4, g, OFFERED, at_once=8, cores=2) == (4, None)
    assert choose(4, g, NOT_OFFERED, at_once=1, cores=2) == (
        1, "save_channels 4 not available: libvirt 9.0.0 has no parallel save (needs 11.2); saved in one stream")
    assert choose(1, g, OFFERED, at_once=1, cores=64) == (1, None)


def test_auto_is_one_stream_for_small_guests_and_shares_the_cores_among_the_saves_at_once():
    small, big = guest("small", memory_kib=GiB_KIB), guest("big", memory_kib=8 * GiB_KIB)
    assert choose(Channels.AUTO, small, OFFERED, at_once=1, cores=32) == (1, None)
    assert choose(Channels.AUTO, big, OFFERED, at_once=1, cores=2) == (2, None)
    assert choose(Channels.AUTO, big, OFFERED, at_once=4, cores=16) == (4, None)
    assert choose(Channels.AUTO, big, OFFERED, at_once=1, cores=64) == (AUTO_MAX, None)
    assert choose(Channels.AUTO, big, OFFERED, at_once=8, cores=4) == (1, None)  # busy: one each
    assert choose(Channels.AUTO, big, NOT_OFFERED, at_once=1, cores=64) == (1, None)  # no news


# --- the plan ----------------------------------------------------------------------------------


def test_the_plan_holds_the_channels_of_each_save_and_says_why_fewer():
    guests = [guest("big", memory_kib=8 * GiB_KIB), guest("t", persistent=False, memory_kib=4 * GiB_KIB)]
    offered = by_name(plan_shutdown(guests, policy("auto"), state_dir=STATE_DIR, channels={URI: OFFERED}, cores=8))
    # two saves at once share the 8 cores: 4 channels each (the most auto gives)
    assert offered["big"].save_channels == 4 and offered["t"].save_channels == 4
    assert offered["big"].to_dict()["save_channels"] == 4
    refused = by_name(plan_shutdown(guests, policy("6"), state_dir=STATE_DIR, channels={URI: NOT_OFFERED}))
    assert refused["big"].save_channels == 1
    assert "save_channels 6 not available: libvirt 9.0.0 has no parallel save (needs 11.2)" in refused["big"].notes[0]
    # a connection that was not asked (absent from ``channels``) offers none
    assert by_name(plan_shutdown(guests, policy("6"), state_dir=STATE_DIR))["big"].save_channels == 1


def test_a_chain_without_a_save_takes_no_channels():
    p = parse_policy("version: 1\ndefaults:\n  save_channels: 4\n  on_shutdown: [shutdown, poweroff]\n", "p.yaml")
    entry = by_name(plan_shutdown([guest("a")], p, state_dir=STATE_DIR, channels={URI: OFFERED}))["a"]
    assert entry.save_channels == 1 and entry.notes == ()


def test_plan_text_shows_the_channels_in_the_actions_column():
    plan = plan_shutdown([guest("big"), guest("one")], parse_policy(
        "version: 1\nguests:\n  - match: {name: big}\n    save_channels: 3\n", "p.yaml"),
        state_dir=STATE_DIR, channels={URI: OFFERED})
    text = report.render_plan(plan)
    assert "save,shutdown,poweroff (3 channels)" in text
    assert text.count("channels)") == 1


def test_at_boot_save_files_and_managed_images_are_read_with_channels():
    record = {"guests": {f"{URI} {t.uuid}": {
        "connection": URI, "name": t.name, "uuid": t.uuid, "outcome": "saved-to-file", "image": "/x.save",
        "memory_kib": 8 * GiB_KIB}
        for t in [guest("t", persistent=False)]} | {f"{URI} {g.uuid}": {
            "connection": URI, "name": g.name, "uuid": g.uuid, "outcome": "saved"}
        for g in [guest("p", image=True)]}}
    plan = plan_boot([guest("p", GuestState.SHUTOFF, image=True)], policy("4"), RecordedPass.from_dict(record),
                     channels={URI: OFFERED})
    entries = by_name(plan)
    assert entries["t"].actions == (Action.RESTORE,) and entries["t"].save_channels == 4
    # read with channels if its image is sparse (the executor reads the header); a transient
    # guest's file or a persistent guest's managed image alike (virDomainRestoreParams)
    assert entries["p"].actions == (Action.RESUME,) and entries["p"].save_channels == 4


# --- the setting in the policy -----------------------------------------------------------------


def test_the_setting_is_auto_or_a_number_from_1_to_16_and_1_by_default():
    assert BUILTIN_SETTINGS.save_channels == 1
    assert policy("auto").defaults["save_channels"] is Channels.AUTO
    assert policy("16").defaults["save_channels"] == 16


@pytest.mark.parametrize("value, says", [
    ("0", "must be at least 1"), ("17", "greater than the maximum of 16"),
    ("many", "must be auto, or a whole number from 1 to 16"), ("2.5", "must be auto, or a whole number"),
    ("true", "must be auto, or a whole number"),
])
def test_bad_values_are_refused_at_their_line(value, says):
    with pytest.raises(PolicyError) as caught:
        policy(value)
    [problem] = caught.value.problems
    assert str(problem).startswith("policy.yaml:3:") and says in str(problem), str(problem)


# --- reading a save image's format -------------------------------------------------------------


def _image(path, magic=b"LibvirtQemudSave", fmt=6):
    path.write_bytes(magic + struct.pack("<5I", 2, 4096, 1, fmt, 0) + b"\0" * 64)
    return str(path)


def test_a_sparse_image_is_told_from_its_header(tmp_path):
    assert is_sparse_image(_image(tmp_path / "sparse.save"))
    assert not is_sparse_image(_image(tmp_path / "raw.save", fmt=0))
    assert not is_sparse_image(_image(tmp_path / "part.save", magic=b"LibvirtQemudPart"))
    assert not is_sparse_image(str(tmp_path / "missing.save"))
    assert is_whole_save_image(_image(tmp_path / "whole.save", fmt=0))
    assert not is_whole_save_image(_image(tmp_path / "partial.save", magic=b"LibvirtQemudPart"))
    (tmp_path / "link.save").symlink_to(tmp_path / "whole.save")
    assert not is_whole_save_image(str(tmp_path / "link.save"))


def test_a_save_dir_in_qemu_conf_moves_the_managed_images_away_from_where_mgsave_looks(tmp_path):
    from libmgsave.saveimages import save_dir_moved
    conf = tmp_path / "qemu.conf"
    conf.write_text('#save_dir = "/elsewhere"\nuser = "root"\n')
    assert not save_dir_moved("qemu:///system", str(conf))
    conf.write_text('save_dir = "/elsewhere"\n')
    assert save_dir_moved("qemu:///system", str(conf))
    assert not save_dir_moved("test:///default", str(conf))  # no managed-save directory known anyway
    assert not save_dir_moved("qemu:///system", str(tmp_path / "missing.conf"))


def test_an_images_format_is_named_from_its_header(tmp_path):
    names = ["raw", "gzip", "bzip2", "xz", "lzop", "zstd", "sparse"]
    for number, name in enumerate(names):
        assert image_format_of(_image(tmp_path / f"{name}.save", fmt=number)) == name
    assert image_format_of(_image(tmp_path / "future.save", fmt=7)) is None
    assert image_format_of(_image(tmp_path / "part.save", magic=b"LibvirtQemudPart")) is None
