"""The save rate learned from a shutdown pass: per connection, bounded, never from the test driver."""

import time
import uuid
from pathlib import Path

from libmgsave.history import SaveRate
from libmgsave.inventory import GuestInfo, GuestState
from libmgsave.outcomes import GuestResult, Outcome, StepResult
from libmgsave.plan import Action, plan_shutdown
from libmgsave.policyfile import parse_policy
from libmgsave.state.throughput import (MAX_RATE, MIN_RATE, is_test_driver, kept_rates, learned_rates,
                                        measured_rates)

REAL = "qemu:///system"
OTHER = "qemu+ssh://peer/system"
TEST = "test:///default"
GiB = 2**30


def saved(uri, name, seconds, memory_bytes=GiB):
    info = GuestInfo(uri, name, str(uuid.uuid5(uuid.NAMESPACE_URL, name)), GuestState.RUNNING,
                     memory_kib=memory_bytes // 1024)
    policy = parse_policy("version: 1\n", "policy.yaml")
    (entry,) = plan_shutdown([info], policy, state_dir=Path("/nonexistent")).active
    return GuestResult(entry, Outcome.SAVED, steps=[StepResult(Action.SAVE, True, 100.0, 100.0 + seconds)])


def test_rates_are_measured_per_connection_and_never_on_the_test_driver():
    rates = measured_rates([saved(REAL, "a", 4.0), saved(REAL, "b", 4.0), saved(OTHER, "c", 2.0),
                            saved(TEST, "d", 0.0000024), saved("test+unix:///default", "e", 2.0)], now=1.0)
    assert set(rates) == {REAL, OTHER}
    assert rates[REAL]["bytes_per_second"] == 2 * GiB / 4.0  # the two saves ran side by side
    assert rates[OTHER]["bytes_per_second"] == GiB / 2.0


def test_a_sample_of_less_than_a_second_of_saving_teaches_nothing():
    assert measured_rates([saved(REAL, "a", 0.2)]) == {}


def test_rates_are_kept_for_connections_a_pass_did_not_measure():
    first = {"save_rates": kept_rates(None, measured_rates([saved(REAL, "a", 4.0), saved(OTHER, "b", 2.0)]))}
    second = kept_rates(first, measured_rates([saved(OTHER, "c", 8.0)]))
    assert second[REAL] == first["save_rates"][REAL]
    assert second[OTHER]["bytes_per_second"] == GiB / 8.0


def test_the_rate_assumed_says_where_it_came_from_and_is_bounded():
    record = {"save_rates": {
        REAL: {"bytes_per_second": 450e9, "measured": 1.7e9, "memory_bytes": 4.5e9, "seconds": 0.01},
        OTHER: {"bytes_per_second": "fast", "measured": 1.7e9, "memory_bytes": 1, "seconds": 1},  # not trusted
        TEST: {"bytes_per_second": 450e9, "measured": 1.7e9, "memory_bytes": 4.5e9, "seconds": 0.01},
    }}
    rates = learned_rates(record, [REAL, OTHER, TEST])
    assert rates[REAL].bytes_per_second == MAX_RATE
    assert "measured by the shutdown pass of" in rates[REAL].source and "bounded to 18.6 GiB/s" in rates[REAL].source
    assert rates[OTHER] == SaveRate(200e6, "built-in default (no shutdown pass has measured this connection yet)")
    assert rates[TEST] == SaveRate(200e6, "built-in default (libvirt's test driver: its saves say nothing of a "
                                          "real host, so none is learned)")
    assert learned_rates({"save_rates": ["not", "a", "table"]}, [REAL])[REAL].bytes_per_second == 200e6
    # a record of the previous version: one rate for all, of unknown origin, is not used
    assert learned_rates({"measured_throughput": 450e9}, [REAL])[REAL].bytes_per_second == 200e6


def test_only_saves_that_succeeded_count_and_a_save_to_a_file_is_a_save():
    failed = saved(REAL, "a", 4.0)
    failed.steps[0] = StepResult(Action.SAVE, False, 100.0, 104.0)
    to_file = saved(REAL, "b", 2.0)
    to_file.steps[0] = StepResult(Action.SAVE_TO_FILE, True, 100.0, 102.0)
    stopped = saved(OTHER, "c", 2.0)
    stopped.steps[0] = StepResult(Action.SHUTDOWN, True, 100.0, 102.0)
    assert measured_rates([failed, to_file, stopped], now=5.0) == {
        REAL: {"bytes_per_second": GiB / 2.0, "measured": 5.0, "memory_bytes": GiB, "seconds": 2.0}}


def test_a_second_of_saving_is_enough_and_the_time_is_now_unless_given(monkeypatch):
    monkeypatch.setattr(time, "time", lambda: 1234.0)
    assert measured_rates([saved(REAL, "a", 1.0)]) == {
        REAL: {"bytes_per_second": GiB, "measured": 1234.0, "memory_bytes": GiB, "seconds": 1.0}}
    assert measured_rates([saved(REAL, "a", 1.23456)], now=1.0)[REAL]["seconds"] == 1.235
    assert measured_rates([saved(REAL, "a", 4.0, memory_bytes=0)]) == {}, "nothing saved: nothing learned"


def test_kept_rates_drop_what_is_not_well_formed_and_the_test_driver():
    good = {"bytes_per_second": 1e8, "measured": 1.7e9, "memory_bytes": 2**30, "seconds": 10}
    previous = {"save_rates": {REAL: good, TEST: good, OTHER: {**good, "seconds": 0}}}
    assert kept_rates(previous, {}) == {REAL: good}
    assert kept_rates(None, {OTHER: good}) == {OTHER: good}
    assert kept_rates(["not a record"], {}) == {}
    for name in good:
        for bad in (0, -1, True, float("inf"), float("nan"), "1", None):
            assert kept_rates({"save_rates": {REAL: {**good, name: bad}}}, {}) == {}, (name, bad)
    assert kept_rates({"save_rates": {REAL: ["not", "an", "entry"]}}, {}) == {}


def test_a_rate_too_slow_to_be_true_is_bounded_and_one_in_bounds_is_said_as_measured():
    when = time.mktime((2026, 3, 4, 5, 6, 0, 0, 0, -1))
    slow = {"bytes_per_second": 1000.0, "measured": when, "memory_bytes": 2 * GiB, "seconds": 125}
    rate = learned_rates({"save_rates": {REAL: slow}}, [REAL])[REAL]
    assert rate.bytes_per_second == MIN_RATE
    assert rate.source == ("measured by the shutdown pass of 2026-03-04 05:06: 2.0 GiB in 2 min 05 s "
                           "(1000 B/s, bounded to 977 KiB/s)")
    fine = {**slow, "bytes_per_second": 3e8}
    rate = learned_rates({"save_rates": {REAL: fine}}, [REAL])[REAL]
    assert rate.bytes_per_second == 3e8
    assert rate.source == "measured by the shutdown pass of 2026-03-04 05:06: 2.0 GiB in 2 min 05 s"
    assert learned_rates({"save_rates": {REAL: {**fine, "bytes_per_second": MIN_RATE}}},
                         [REAL])[REAL].bytes_per_second == MIN_RATE


def test_which_connections_are_the_test_driver():
    assert is_test_driver("test:///default") and is_test_driver("test+unix:///default")
    assert is_test_driver("test:///tmp/a+b:c.xml")  # only the scheme counts
    assert not is_test_driver("qemu:///system") and not is_test_driver("qemu+ssh://test/system")
    assert not is_test_driver("testing:///x") and not is_test_driver("qemu+test:///x")


def test_a_connection_that_teaches_nothing_does_not_stop_the_others_from_teaching():
    rates = measured_rates([saved(TEST, "a", 4.0), saved(OTHER, "b", 0.5), saved(REAL, "c", 4.0)], now=1.0)
    assert set(rates) == {REAL}
