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
    assert [units.seconds(s) for s in (5, 90, 150, 900, 5400, 172800)] == [
        "5 s", "1.5 min", "2.5 min", "15 min", "1.5 h", "2.0 d"]


def test_a_cell_is_cut_at_its_end_or_in_its_middle(monkeypatch):
    from libmgsave import texttable

    monkeypatch.setattr(texttable, "ellipsis", lambda: "~")
    assert texttable.cut("web-05-extra-extra", 10) == "web-05-ex~"
    assert texttable.cut("qemu+ssh://root@peer/system", 12, middle=True) == "qemu+s~ystem"
    assert texttable.cut("short", 10, middle=True) == "short"
