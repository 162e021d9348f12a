"""``image_format``: how the policy spells it, the combinations it refuses (a compressed image
with channels) at their file:line:key, and the format the plan gives a guest, and why
(``imageformat.choose``, through the plan), where the connection can take a format per save and
where it cannot (libvirt 9.0)."""

from pathlib import Path

import pytest

from libmgsave import imageformat
from libmgsave.channels import ChannelSupport, support
from libmgsave.errors import PolicyError
from libmgsave.inventory import GuestState
from libmgsave.plan import plan_shutdown
from libmgsave.policy import BUILTIN_SETTINGS, ImageFormat
from tests.unit.test_plan import GiB_KIB, URI, by_name, guest, policy

LIBVIRT_11 = support("QEMU", 11_003_000, 10_000_013)
LIBVIRT_9 = support("QEMU", 9_000_000, 7_002_000)
OLD_QEMU = support("QEMU", 11_003_000, 8_002_004)


def test_the_default_asks_libvirt_for_no_format_as_before_the_setting():
    assert BUILTIN_SETTINGS.image_format is ImageFormat.LIBVIRT
    made = imageformat.choose(ImageFormat.LIBVIRT, 1, LIBVIRT_11, source="built-in")
    assert made.image_format is None and made.note is None and made.shown == "libvirt"
    assert made.why.startswith("libvirt's own format (raw, unless save_image_format in qemu.conf")


@pytest.mark.parametrize("asked", [f for f in ImageFormat if f is not ImageFormat.LIBVIRT])
def test_a_format_is_asked_per_save_where_libvirt_takes_it(asked):
    made = imageformat.choose(asked, 1, LIBVIRT_11, source="defaults")
    assert (made.image_format, made.channels, made.note) == (asked, 1, None)
    assert made.why == f"image_format {asked} (defaults)"


def test_where_libvirt_cannot_take_a_format_per_save_the_guest_is_saved_in_its_own_and_the_plan_says_why():
    made = imageformat.choose(ImageFormat.ZSTD, 1, LIBVIRT_9, source="guests[0]")
    assert made.image_format is None and made.channels == 1
    assert made.note == ("image_format zstd not available: libvirt 9.0.0 has no per-call image format (needs 11.2); "
                         "saved in libvirt's own format (raw, unless save_image_format in qemu.conf says otherwise)")
    # a compressed format needs no mapped-ram; sparse does, even in one stream
    assert imageformat.choose(ImageFormat.XZ, 1, OLD_QEMU, source="d").image_format is ImageFormat.XZ
    assert "QEMU 8.2.4 has no mapped-ram" in imageformat.choose(ImageFormat.SPARSE, 1, OLD_QEMU, source="d").note


def test_channels_write_sparse_and_a_compressed_format_takes_one_stream():
    assert imageformat.choose(ImageFormat.LIBVIRT, 4, LIBVIRT_11, source="d").image_format is ImageFormat.SPARSE
    assert imageformat.choose(ImageFormat.SPARSE, 4, LIBVIRT_11, source="d").channels == 4
    made = imageformat.choose(ImageFormat.GZIP, 4, LIBVIRT_11, source="guests[1] (small)")
    assert (made.image_format, made.channels) == (ImageFormat.GZIP, 1)
    assert made.note == "image_format gzip (guests[1] (small)) cannot go with save_channels 4: saved gzip in one stream"


# --- the policy ----------------------------------------------------------------------------------


def test_every_format_is_spelt_as_libvirt_spells_it():
    for value in ImageFormat:
        assert policy(f"version: 1\ndefaults:\n  image_format: {value}\n").defaults["image_format"] is value


def _problems(text: str) -> list[str]:
    with pytest.raises(PolicyError) as caught:
        policy(text)
    return [str(p) for p in caught.value.problems]


def test_an_unknown_format_is_refused_at_its_line():
    [problem] = _problems("version: 1\ndefaults:\n  image_format: lz4\n")
    assert problem.startswith("policy.yaml:3:") and "image_format" in problem, problem


@pytest.mark.parametrize("text, line, key", [
    ("version: 1\ndefaults:\n  save_channels: 2\n  image_format: zstd\n", 4, "defaults.image_format"),
    ("version: 1\ndefaults:\n  image_format: xz\n  save_channels: auto\n", 3, "defaults.image_format"),
    ("version: 1\ndefaults:\n  save_channels: 4\nguests:\n  - match: {name: db}\n    image_format: lzop\n",
     6, "guests[0].image_format"),
    ("version: 1\ndefaults:\n  image_format: bzip2\nguests:\n  - match: {name: db}\n    save_channels: 2\n",
     6, "guests[0].save_channels"),
])
def test_a_compressed_format_with_channels_is_refused_at_its_file_line_and_key(text, line, key):
    [problem] = _problems(text)
    assert problem.startswith(f"policy.yaml:{line}:") and key in problem, problem
    assert "a compressed image is written in one stream" in problem


def test_a_compressed_format_with_one_stream_or_sparse_with_channels_is_accepted():
    policy("version: 1\ndefaults:\n  save_channels: 1\n  image_format: zstd\n")
    policy("version: 1\ndefaults:\n  save_channels: 4\n  image_format: sparse\n")
    policy("version: 1\ndefaults:\n  save_channels: 4\nguests:\n  - match: {name: db}\n"
           "    save_channels: 1\n    image_format: zstd\n")


# --- the plan ------------------------------------------------------------------------------------


def test_the_plan_gives_each_saved_guest_its_format_and_says_why():
    p = policy("version: 1\nguests:\n  - name: small\n    match: {name: s*}\n    image_format: zstd\n"
               "  - name: big\n    match: {name: b*}\n    save_channels: 2\n")
    guests = [guest("s1"), guest("b1", memory_kib=4 * GiB_KIB), guest("off", GuestState.SHUTOFF)]
    plan = by_name(plan_shutdown(guests, p, state_dir=Path("/s"), channels={URI: LIBVIRT_11}))
    assert (plan["s1"].image_format, plan["s1"].save_channels) == (ImageFormat.ZSTD, 1)
    assert plan["s1"].to_dict()["image_format"] == "zstd"
    assert plan["s1"].to_dict()["image_format_why"] == "image_format zstd (guests[0] (small))"
    assert (plan["b1"].image_format, plan["b1"].save_channels) == (ImageFormat.SPARSE, 2)
    assert plan["off"].to_dict()["image_format"] is None  # not saved: no format


def test_two_rules_that_combine_compression_and_channels_give_one_compressed_stream_with_a_note():
    p = policy("version: 1\nguests:\n  - match: {name: db}\n    save_channels: 2\n"
               "  - name: compressed\n    match: {name: d*}\n    image_format: zstd\n")
    [e] = plan_shutdown([guest("db")], p, state_dir=Path("/s"), channels={URI: LIBVIRT_11}).entries
    assert (e.image_format, e.save_channels) == (ImageFormat.ZSTD, 1)
    assert "image_format zstd (guests[1] (compressed)) cannot go with save_channels 2: saved zstd in one stream" \
        in e.notes


def test_on_libvirt_9_the_plan_falls_back_to_libvirts_own_format_with_a_note():
    p = policy("version: 1\ndefaults:\n  image_format: zstd\n")
    [e] = plan_shutdown([guest("db")], p, state_dir=Path("/s"), channels={URI: LIBVIRT_9}).entries
    assert e.image_format is None and e.to_dict()["image_format"] == "libvirt"
    assert any("libvirt 9.0.0 has no per-call image format" in n for n in e.notes)


def test_a_connection_not_asked_gets_libvirts_own_format():
    p = policy("version: 1\ndefaults:\n  image_format: raw\n")
    [e] = plan_shutdown([guest("db")], p, state_dir=Path("/s")).entries
    assert e.image_format is None and "the connection was not asked" in e.image_format_why
    assert ChannelSupport(True).formats_available is False
