"""The shutdown pass's deadline against the battery (``power.deadline``, pure), and the budget's
end moved down as the runtime falls (``power.battery.RuntimeFollower.follow``, on a clock the
test turns: no UPS, no thread)."""

from __future__ import annotations

import pytest

from libmgsave.budget import DEADLINE_RESERVE, Budget
from libmgsave.policy import Power, UpsAddress
from libmgsave.power.battery import RuntimeFollower
from libmgsave.power.deadline import FINAL_FLUSH, battery_deadline
from libmgsave.power.reading import UpsReading


def reading(status="OB", runtime="600", error=None) -> UpsReading:
    if error:
        return UpsReading("ups1@localhost", 0.0, error)
    values = {"ups.status": status, **({"battery.runtime": runtime} if runtime is not None else {})}
    return UpsReading.from_values("ups1@localhost", 0.0, values)


def test_on_battery_the_deadline_is_the_runtime_less_margin_and_flush():
    found = battery_deadline(reading(runtime="600"), limit=900, margin=60, flush=5)
    assert found.seconds == 535 and found.runtime == 600 and found.warning is None
    assert "the deadline is 8 min 55 s: runtime 10 min 00 s less the 1 min 00 s margin and 5 s" in found.why


def test_the_final_flush_is_counted_by_default():
    assert battery_deadline(reading(runtime="600"), limit=900, margin=60).seconds == 540 - FINAL_FLUSH


def test_a_long_runtime_leaves_the_fixed_deadline():
    found = battery_deadline(reading(runtime="3600"), limit=900, margin=60, flush=5)
    assert found.seconds == 900 and found.runtime == 3600 and found.warning is None
    assert "leaves more than the fixed deadline of 15 min 00 s" in found.why


@pytest.mark.parametrize("status", ["OB LB", "FSD OB"])
def test_low_battery_and_forced_shutdown_plan_against_the_runtime_too(status):
    assert battery_deadline(reading(status, runtime="200"), limit=900, margin=60, flush=5).seconds == 135


def test_a_runtime_below_the_reserve_gives_every_guest_its_last_step_only():
    found = battery_deadline(reading(runtime="70"), limit=900, margin=60, flush=5)
    assert found.seconds == DEADLINE_RESERVE and found.runtime == 70
    assert "each guest gets only that step" in found.why


def test_on_line_the_fixed_deadline_without_a_warning():
    found = battery_deadline(reading("OL", runtime="100"), limit=900, margin=60)
    assert found.seconds == 900 and found.runtime is None and found.warning is None


@pytest.mark.parametrize(("ups", "said"), [
    (reading(error="connection refused"), "cannot be read (connection refused)"),
    (reading(runtime=None), "the UPS does not report its runtime"),
    (reading(runtime="-5"), "its runtime is negative: -5"),
    (reading(runtime="99999999999"), "its runtime is absurd"),
    (reading("WAIT"), "says neither on line nor on battery ('WAIT')"),
])
def test_a_ups_that_cannot_be_used_leaves_the_fixed_deadline_with_a_warning(ups, said):
    found = battery_deadline(ups, limit=900, margin=60)
    assert found.seconds == 900 and found.runtime is None
    assert said in found.warning
    assert found.warning.endswith("the shutdown pass plans against the fixed deadline of 15 min 00 s")


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def follower(seconds=300.0):
    clock = Clock()
    budget = Budget.starting_now(seconds, clock=clock)
    power = Power(UpsAddress("ups1", "localhost"), margin=60)
    return RuntimeFollower(power, budget), budget, clock


def test_the_end_moves_down_when_the_runtime_falls_faster_than_planned():
    follow, budget, clock = follower(300)
    assert follow.follow(reading(runtime="365")) is None  # as planned: 365 - 60 - 5 = 300
    clock.now += 10
    move = follow.follow(reading(runtime="200"))  # 135 s left, where 290 were planned
    assert move is not None and move.runtime == 200 and move.seconds_left == 135
    assert budget.ends_at() == clock.now + 135
    assert follow.moves == [move]
    assert "runtime fell to 3 min 20 s: the shutdown deadline moved down to 2 min 15 s" in move.describe()


def test_the_end_never_moves_up_nor_on_a_reading_that_cannot_be_used():
    follow, budget, clock = follower(300)
    follow.follow(reading(runtime="200"))
    end = budget.ends_at()
    for later in (reading(runtime="3600"), reading("OL"), reading(error="refused"), reading(runtime="-1")):
        clock.now += 1
        assert follow.follow(later) is None
        assert budget.ends_at() == end


def test_a_runtime_gone_below_the_reserve_leaves_only_last_steps():
    follow, budget, _clock = follower(300)
    follow.follow(reading(runtime="30"))
    assert budget.time_left() == DEADLINE_RESERVE and budget.past()


def test_budget_lower_end_only_lowers():
    budget = Budget(100.0, clock=lambda: 0.0)
    assert not budget.lower_end(150.0) and budget.ends_at() == 100.0
    assert budget.lower_end(80.0) and budget.ends_at() == 80.0
