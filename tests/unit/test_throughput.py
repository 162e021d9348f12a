"""The save rate learned from a shutdown pass: per connection, bounded, never from the test driver."""

import uuid
from pathlib import Path

from libmgsave.inventory import GuestInfo, GuestState
from libmgsave.outcomes import GuestResult, Outcome, StepResult
from libmgsave.plan import Action, plan_shutdown
from libmgsave.policyfile import parse_policy
from libmgsave.state.throughput import MAX_RATE, kept_rates, learned_rates, measured_rates

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
    assert rates[OTHER].bytes_per_second == 200e6 and "no shutdown pass has measured" in rates[OTHER].source
    assert rates[TEST].bytes_per_second == 200e6 and "test driver" in rates[TEST].source
    assert learned_rates({"save_rates": ["not", "a", "table"]}, [REAL])[REAL].bytes_per_second == 200e6
    # a record of the previous version: one rate for all, of unknown origin, is not used
    assert learned_rates({"measured_throughput": 450e9}, [REAL])[REAL].bytes_per_second == 200e6
