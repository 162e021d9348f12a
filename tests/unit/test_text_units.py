"""Sizes, rates and durations in text: binary units, a sensible precision."""

import pytest

from libmgsave import units


@pytest.mark.parametrize(("n", "text"), [
    (None, "-"), (0, "0 B"), (512, "512 B"), (2048, "2.0 KiB"), (300_000, "293 KiB"), (256 << 20, "256 MiB"),
    (4 << 30, "4.0 GiB"), (int(1.5 * (1 << 40)), "1.5 TiB"),
])
def test_sizes_are_in_binary_units(n, text):
    assert units.size(n) == text


def test_rates_and_durations():
    assert units.rate(200e6) == "191 MiB/s"
    assert [units.seconds(s) for s in (0, 0.3, 5, 90, 150, 900, 5400, 172800)] == [
        "0 s", "under 1 s", "5 s", "1 min 30 s", "2 min 30 s", "15 min 00 s", "1 h 30 min", "2 d 00 h"]


def test_a_duration_is_spelt_one_way_measured_or_not():
    assert [units.duration(s) for s in (0.012, 0.5, 42.04, 59.97, 120.2, 3725)] == [
        "0.01 s", "0.50 s", "42.0 s", "1 min 00 s", "2 min 00 s", "1 h 02 min"]
    assert units.plural(1, "file") == "1 file" and units.plural(0, "file") == "0 files"


def test_a_cell_is_cut_at_its_end_or_in_its_middle(monkeypatch):
    from libmgsave import texttable

    monkeypatch.setattr(texttable, "ellipsis", lambda: "~")
    assert texttable.cut("web-05-extra-extra", 10) == "web-05-ex~"
    assert texttable.cut("qemu+ssh://root@peer/system", 12, middle=True) == "qemu+s~ystem"
    assert texttable.cut("short", 10, middle=True) == "short"
