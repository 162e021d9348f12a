"""The scheduler on its own: slots, their order and their give-up times; groups and dependencies."""

from __future__ import annotations

import threading
import time

import pytest

from libmgsave import interrupt
from libmgsave.errors import OperationTimeout
from libmgsave.execute.scheduler import Cancelled, Schedule, Slots, dependencies_first, group_by_order
from libmgsave.inventory import GuestInfo, GuestState
from libmgsave.matching import resolve
from libmgsave.outcomes import GuestResult, Outcome
from libmgsave.plan import Action, GuestPlan, PassKind, Plan
from libmgsave.policy import BUILTIN_POLICY, Limits

URI = "test:///default"


def entry(name: str, order: int = 0, after: tuple[str, ...] = ()) -> GuestPlan:
    guest = GuestInfo(URI, name, f"uuid-{name}", GuestState.SHUTOFF)
    return GuestPlan(guest, resolve(BUILTIN_POLICY, guest), (Action.START,), "test", order,
                     tuple((URI, f"uuid-{n}") for n in after))


def plan(*entries: GuestPlan) -> Plan:
    return Plan(PassKind.BOOT, entries, Limits(), None)


def names(entries) -> list[str]:
    return [e.guest.name for e in entries]


@pytest.fixture
def stop_request():
    interrupt.reset()
    yield interrupt.request
    interrupt.reset()


def hold_in_threads(slots: Slots, keys, hold: float = 0.05, stagger: float = 0.0) -> list:
    """Each key asks for a slot from its own thread (``stagger`` s apart, in the order given)
    and holds it ``hold`` s; returns the order in which they were admitted, and the most
    holders seen at once."""
    admitted, lock, inside, most = [], threading.Lock(), [0], [0]

    def holder(key):
        with slots.held(key):
            with lock:
                admitted.append(key)
                inside[0] += 1
                most[0] = max(most[0], inside[0])
            time.sleep(hold)
            with lock:
                inside[0] -= 1

    threads = []
    for key in keys:
        thread = threading.Thread(target=holder, args=(key,))
        thread.start()
        threads.append(thread)
        time.sleep(stagger)
    for thread in threads:
        thread.join(10)
    return admitted, most[0]


def hold_one(slots: Slots) -> tuple[threading.Event, threading.Thread]:
    """Take the one slot in a thread and keep it until the event returned is set."""
    release, holding = threading.Event(), threading.Event()

    def hold():
        with slots.held():
            holding.set()
            release.wait(10)

    thread = threading.Thread(target=hold)
    thread.start()
    assert holding.wait(5)
    return release, thread


def test_slots_never_admit_more_holders_than_their_size():
    _, most = hold_in_threads(Slots(3), [None] * 12, hold=0.05)
    assert most == 3


def test_slots_admit_in_rank_order_whatever_order_the_holders_ask_in():
    ranks = {"a": 0, "b": 1, "c": 2, "d": 3}
    slots = Slots(1, ranks=ranks, expected=ranks)
    admitted, _ = hold_in_threads(slots, ["d", "c", "b", "a"], stagger=0.05)
    assert admitted == ["a", "b", "c", "d"]


def test_a_withdrawn_key_keeps_nobody_waiting():
    slots = Slots(1, ranks={"a": 0, "b": 1}, expected=["a", "b"])
    done = threading.Event()

    def ask():
        with slots.held("b"):
            done.set()

    thread = threading.Thread(target=ask)
    thread.start()
    assert not done.wait(0.2), "b went ahead of a, which was expected to ask first"
    slots.withdraw("a")
    assert done.wait(5), "b still waits for a, which withdrew"
    thread.join(5)


def test_a_cancelled_turn_ends_its_wait_and_lets_the_next_one_in():
    """A re-plan moved a waiting guest off its save: it stops waiting at once, and the holder
    ranked behind it is no longer kept waiting for its turn."""
    slots = Slots(1, ranks={"a": 0, "b": 1, "c": 2}, expected=["a", "b", "c"])
    release, holding = threading.Event(), threading.Event()
    outcome: dict[str, str] = {}
    cancelled_b, admitted_c = threading.Event(), threading.Event()

    def ask(key: str) -> None:
        try:
            with slots.held(key, give_up_at=time.monotonic() + 10):
                outcome[key] = "admitted"
                holding.set()
                admitted_c.set() if key == "c" else release.wait(10)
        except Cancelled:
            outcome[key] = "cancelled"
            cancelled_b.set()

    threads = [threading.Thread(target=ask, args=(key,), daemon=True) for key in ("a", "b", "c")]
    threads[0].start()
    assert holding.wait(5)
    for thread in threads[1:]:
        thread.start()
    slots.cancel("b")
    assert cancelled_b.wait(5), outcome
    assert outcome == {"a": "admitted", "b": "cancelled"}
    release.set()
    assert admitted_c.wait(5), outcome
    for thread in threads:
        thread.join(5)
    with pytest.raises(Cancelled):  # a later ask of a cancelled key is cancelled too
        with slots.held("b", give_up_at=time.monotonic() + 1):
            pass


def test_a_holder_gives_up_at_its_deadline_not_when_a_slot_frees():
    slots = Slots(1)
    release, thread = hold_one(slots)
    t0 = time.monotonic()
    with pytest.raises(OperationTimeout, match="too late"):
        with slots.held(give_up_at=time.monotonic() + 0.2, late="too late"):
            pass
    assert time.monotonic() - t0 < 2
    release.set()
    thread.join(5)
    with slots.held(give_up_at=time.monotonic() + 1):  # the slot given up is free again
        pass


def test_a_stop_request_ends_the_wait_for_a_slot(stop_request):
    slots = Slots(1)
    release, thread = hold_one(slots)
    outcome = []

    def wait_for_slot():
        try:
            with slots.held():
                outcome.append("admitted")
        except interrupt.Interrupted:
            outcome.append("interrupted")

    waiter = threading.Thread(target=wait_for_slot)
    waiter.start()
    time.sleep(0.1)
    stop_request()
    waiter.join(5)
    assert outcome == ["interrupted"]
    release.set()
    thread.join(5)


def test_groups_follow_the_plan_and_dependencies_come_first_within_a_group():
    entries = [entry("x", 5, after=("z",)), entry("y", 5), entry("z", 5), entry("w", 0)]
    groups = group_by_order(entries)
    assert [names(g) for g in groups] == [["x", "y", "z"], ["w"]]
    assert names(dependencies_first(groups[0])) == ["y", "z", "x"]
    assert [names(g) for g in Schedule(plan(*entries)).groups] == [["y", "z", "x"], ["w"]]


def test_a_cycle_left_in_a_plan_is_a_bug_not_a_hang():
    with pytest.raises(AssertionError, match="cycle"):
        dependencies_first([entry("a", after=("b",)), entry("b", after=("a",))])


def test_run_starts_a_guest_only_after_the_ones_it_waits_for_with_their_results():
    schedule = Schedule(plan(entry("app", after=("db",)), entry("db"), entry("later", 1)))
    finished, seen = {}, {}

    def work(e: GuestPlan, deps: dict) -> GuestResult:
        seen[e.guest.name] = ({k[1]: r.outcome for k, r in deps.items()}, dict(finished))
        time.sleep(0.05)
        finished[e.guest.name] = time.monotonic()
        return GuestResult(e, Outcome.STARTED)

    results = schedule.run(work)
    assert {k[1]: r.outcome for k, r in results.items()} == dict.fromkeys(["uuid-app", "uuid-db", "uuid-later"],
                                                                         Outcome.STARTED)
    assert seen["app"][0] == {"uuid-db": Outcome.STARTED}
    assert "db" in seen["app"][1], "app began before db had finished"
    assert set(seen["later"][1]) == {"app", "db"}, "the next order group began early"


def test_many_dependents_on_few_threads_do_not_deadlock():
    entries = [entry(f"g{i:02d}", after=("last",)) for i in range(20)] + [entry("last")]
    schedule = Schedule(plan(*entries))
    done = []
    thread = threading.Thread(
        target=lambda: done.append(schedule.run(lambda e, _d: GuestResult(e, Outcome.STARTED), max_workers=2)),
        daemon=True)
    thread.start()
    thread.join(20)
    assert done and len(done[0]) == 21, "deadlock: dependents held every thread"


def test_a_bug_in_one_guest_fails_that_guest_alone():
    def work(e: GuestPlan, _deps) -> GuestResult:
        if e.guest.name == "bad":
            raise RuntimeError("a bug")
        return GuestResult(e, Outcome.STARTED)

    results = Schedule(plan(entry("bad"), entry("good"))).run(work)
    assert results[(URI, "uuid-bad")].outcome is Outcome.FAILED
    assert "internal error" in results[(URI, "uuid-bad")].messages[0]
    assert results[(URI, "uuid-good")].outcome is Outcome.STARTED
