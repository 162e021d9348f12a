"""Planning again while the shutdown pass runs: the deadline moved down, and the guests whose
work has not begun are fitted into what is left, the lowest priority moved first to cheaper steps."""

from __future__ import annotations

from libmgsave.budget import DEADLINE_RESERVE
from libmgsave.history import Action, SaveRate
from libmgsave.plan.replan import NotBegun, replan

MB = 1_000_000
RATES = {"qemu:///system": SaveRate(100 * MB, "measured"), "qemu+ssh://b/system": SaveRate(100 * MB, "measured")}
CHAIN = (Action.SAVE, Action.SHUTDOWN, Action.POWEROFF)


def guest(name: str, priority: int, mb: int, *, actions=CHAIN, connection="qemu:///system") -> NotBegun:
    return NotBegun((connection, f"uuid-{name}"), name, priority, actions, mb * MB)


def moved_names(moves) -> list[str]:
    return [m.name for m in moves]


def test_the_lowest_priorities_give_up_their_saves_first():
    # 30 s left: 20 s for the steps; each save takes 8 s on the one connection: two fit
    guests = [guest("low", 1, 800), guest("high", 9, 800), guest("mid", 5, 800)]
    moves = replan(guests, seconds_left=20 + DEADLINE_RESERVE, rates=RATES, cause="runtime fell to 1 min")
    assert moved_names(moves) == ["low"]
    (low,) = moves
    assert low.actions == (Action.SHUTDOWN, Action.POWEROFF)
    assert low.dropped is Action.SAVE
    assert "runtime fell to 1 min" in low.why and "priority 1" in low.why and "shutdown -> poweroff" in low.why


def test_enough_time_moves_no_one():
    guests = [guest("a", 1, 800), guest("b", 2, 800)]
    assert replan(guests, seconds_left=16 + DEADLINE_RESERVE, rates=RATES) == ()


def test_saves_under_way_take_their_connection_first():
    guests = [guest("a", 5, 600), guest("b", 1, 600)]
    # 16 s for the steps, but 10 s of saves already under way on that connection: one more fits
    moves = replan(guests, seconds_left=16 + DEADLINE_RESERVE, rates=RATES, under_way={"qemu:///system": 1000 * MB})
    assert moved_names(moves) == ["b"]


def test_each_connection_saves_at_its_own_rate():
    other = "qemu+ssh://b/system"
    guests = [guest("a", 5, 800), guest("b", 1, 800, connection=other), guest("c", 0, 800)]
    moves = replan(guests, seconds_left=10 + DEADLINE_RESERVE, rates=RATES)
    assert moved_names(moves) == ["c"]  # b saves beside a, on its own connection


def test_a_smaller_save_of_lower_priority_still_fits_where_a_bigger_one_does_not():
    guests = [guest("big", 9, 3000), guest("small", 1, 500)]
    moves = replan(guests, seconds_left=10 + DEADLINE_RESERVE, rates=RATES)
    assert moved_names(moves) == ["big"]


def test_no_time_for_steps_moves_every_save():
    guests = [guest("a", 9, 1), guest("b", 1, 1)]
    moves = replan(guests, seconds_left=DEADLINE_RESERVE / 2, rates=RATES)
    assert moved_names(moves) == ["a", "b"]
    assert "kept for every guest's last step" in moves[0].why


def test_a_chain_without_a_save_or_with_nothing_after_it_is_left_as_it_is():
    guests = [guest("off", 0, 10_000, actions=(Action.SHUTDOWN, Action.POWEROFF)),
              guest("only", 0, 10_000, actions=(Action.SAVE,)),
              guest("migrates", 0, 10_000, actions=(Action.MIGRATE, Action.SAVE, Action.POWEROFF))]
    assert replan(guests, seconds_left=DEADLINE_RESERVE + 1, rates=RATES) == ()


def test_a_save_to_a_file_moves_like_a_managed_save():
    guests = [guest("t", 0, 5000, actions=(Action.SAVE_TO_FILE, Action.POWEROFF))]
    (moved,) = replan(guests, seconds_left=DEADLINE_RESERVE + 5, rates=RATES)
    assert moved.actions == (Action.POWEROFF,) and moved.dropped is Action.SAVE_TO_FILE


def test_the_moves_come_in_the_order_given_among_equal_priorities():
    guests = [guest("x", 0, 800), guest("y", 0, 800), guest("z", 0, 800)]
    moves = replan(guests, seconds_left=9 + DEADLINE_RESERVE, rates=RATES)
    assert moved_names(moves) == ["y", "z"]  # the first in the plan's order keeps its save


def test_a_connection_without_a_rate_saves_at_the_default():
    guests = [guest("a", 0, 100, connection="qemu+ssh://c/system")]
    assert replan(guests, seconds_left=DEADLINE_RESERVE + 1, rates={}) == ()
    moves = replan([guest("a", 0, 10_000, connection="qemu+ssh://c/system")], seconds_left=DEADLINE_RESERVE + 1,
                   rates={})
    assert moved_names(moves) == ["a"]
