"""The pass's one deadline: the reserve kept for a guest's last step, what a step may still
begin, how long a wait may last, and what a re-plan sees; on a clock the test moves."""

from __future__ import annotations

import pytest

from libmgsave.budget import DEADLINE_RESERVE, Budget, for_steps


class Clock:
    def __init__(self, now: float = 1000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_the_reserve_is_kept_for_the_last_step():
    clock = Clock()
    budget = Budget.starting_now(60, clock=clock)
    assert budget.ends_at() == 1060
    assert budget.give_up_at() == 1060 - DEADLINE_RESERVE
    assert budget.left_for_steps() == 60 - DEADLINE_RESERVE
    assert not budget.past()
    clock.now = 1050  # the end less the reserve: only a guest's last step may begin
    assert budget.past()
    assert budget.time_left() == 10  # a re-plan is given the whole of what is left
    assert not budget.overdue()
    clock.now = 1060.5
    assert budget.overdue() and budget.time_left() == 0


def test_a_step_may_begin_only_when_its_estimate_ends_before_the_reserve():
    clock = Clock()
    budget = Budget.starting_now(60, clock=clock)
    assert budget.may_begin(50)
    assert not budget.may_begin(50.1)
    clock.now = 1049
    assert budget.may_begin(1) and not budget.may_begin(2)


def test_a_wait_gives_up_at_its_timeout_or_the_reserve_whichever_comes_first():
    clock = Clock()
    budget = Budget.starting_now(60, clock=clock)
    assert budget.wait_until(5) == 1005
    assert budget.wait_until(300) == 1050


def test_the_plan_and_the_executor_keep_the_same_reserve():
    assert for_steps(60) == Budget.starting_now(60, clock=Clock(0)).left_for_steps()
    from libmgsave.policy import DEADLINE_RESERVE as the_policys

    assert the_policys is DEADLINE_RESERVE


def test_without_a_deadline_everything_may_begin():
    budget = Budget.unbounded()
    assert budget.may_begin(1e12) and not budget.past() and not budget.overdue()


@pytest.mark.parametrize("moved_to", [1030.0, 1200.0])
def test_a_deadline_that_moves_is_seen_by_every_question(moved_to):
    """A later change lets the deadline move (a UPS's runtime): every question reads the end
    through ``ends_at``, so a subclass that moves it changes every answer."""

    class Moving(Budget):
        def ends_at(self) -> float:
            return moved_to

    budget = Moving(1060, clock=Clock())
    assert budget.give_up_at() == moved_to - DEADLINE_RESERVE
    assert budget.may_begin(moved_to - DEADLINE_RESERVE - 1000)
    assert not budget.may_begin(moved_to - DEADLINE_RESERVE - 1000 + 1)


def test_a_listener_is_told_of_each_move_down_and_only_while_it_listens():
    clock = Clock()
    budget = Budget.starting_now(600, clock=clock)
    told = []
    with budget.listening(lambda cause, runtime: told.append((cause, runtime, budget.ends_at()))):
        assert budget.lower_end(1300, "runtime fell to 5 min", 300.0)
        assert not budget.lower_end(1400, "climbed back")  # the end never moves up: nobody is told
    assert budget.lower_end(1200)  # nobody listens any more
    assert told == [("runtime fell to 5 min", 300.0, 1300)]
