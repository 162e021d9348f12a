"""Which entries a new shutdown record starts with (``state.carry_over``), across boots of the
host: the boot ID changes between passes as it does at every reboot."""

from pathlib import Path

from libmgsave.inventory import GuestInfo, GuestState
from libmgsave.plan import plan_shutdown
from libmgsave.policyfile import parse_policy
from libmgsave.state import guest_record_key
from libmgsave.state.carry_over import starting_entries

URI = "test:///default"
PEER = "qemu+ssh://peer/system"
STATE_DIR = Path("/nonexistent/state")
BOOT_1, BOOT_2, BOOT_3 = "boot-1", "boot-2", "boot-3"
SAVED, OFF, RUNNING = "saved", "off", "running"


def guest(name, now=SAVED, *, persistent=True):
    """``now``: running, off with its managed-save image (saved), or off without one."""
    return GuestInfo(connection=URI, name=name, uuid=f"00000000-0000-4000-8000-{sum(map(ord, name)):012d}",
                     state=GuestState.RUNNING if now == RUNNING else GuestState.SHUTOFF, persistent=persistent,
                     has_managed_save=now == SAVED, memory_kib=1024)


def key(name):
    return guest_record_key(URI, guest(name).uuid)


def entry(name, outcome, **more):
    return {"connection": URI, "name": name, "uuid": guest(name).uuid, "outcome": outcome, **more}


def shutdown_record(started, boot_id, **outcomes):
    return {"started": started, "boot_id": boot_id, "guests": {key(n): entry(n, o) for n, o in outcomes.items()}}


def boot_record(started, boot_id, interrupted=None, **outcomes):
    return {"started": started, "boot_id": boot_id, "interrupted": interrupted,
            "guests": {key(n): entry(n, o) for n, o in outcomes.items()}}


def start(previous, boot, guests, *, boot_id, complete=()):
    plan = plan_shutdown(guests, parse_policy("version: 1\n", "policy.yaml"), state_dir=STATE_DIR)
    entries = starting_entries(previous, boot, plan, set(complete), boot_id=boot_id)
    return {e["name"]: e["outcome"] for e in entries.values()}


def test_the_guests_a_stopped_boot_pass_of_another_boot_never_reached_are_carried_over():
    """Boot 2's pass resumed g1 and was stopped before g2, g3, g4; the shutdown pass of boot 2
    keeps all three (their images are there): the next boot resumes them."""
    previous = shutdown_record(10, BOOT_1, g1="saved", g2="saved", g3="saved", g4="saved")
    boot = boot_record(20, BOOT_2, "SIGTERM", g1="resumed", g2="interrupted", g3="interrupted", g4="interrupted")
    guests = [guest("g1", RUNNING), guest("g2"), guest("g3"), guest("g4")]
    assert start(previous, boot, guests, boot_id=BOOT_2) == {
        "g1": "pending", "g2": "saved", "g3": "saved", "g4": "saved"}


def test_a_boot_pass_that_died_without_a_record_leaves_its_unreached_guests_carried_over():
    """No boot record since the shutdown (the boot pass was killed): the guests still saved are
    carried; the one it had resumed and the admin then stopped by hand is not (no image)."""
    previous = shutdown_record(10, BOOT_1, g1="saved", g2="saved", g3="saved")
    old_boot = boot_record(5, BOOT_1, g1="resumed")
    guests = [guest("g1", OFF), guest("g2"), guest("g3", RUNNING)]
    assert start(previous, old_boot, guests, boot_id=BOOT_2) == {"g2": "saved", "g3": "pending"}


def test_a_guest_a_finished_boot_brought_up_and_the_admin_stopped_is_not_carried_over():
    """The protection the boot ID gives stays: after a finished boot, an off guest is off."""
    previous = shutdown_record(10, BOOT_1, g1="saved", g2="shut-down", g3="pending")
    boot = boot_record(20, BOOT_2, g1="resumed", g2="started", g3="booted-fresh")
    guests = [guest("g1", OFF), guest("g2", OFF), guest("g3", OFF)]
    assert start(previous, boot, guests, boot_id=BOOT_2) == {}


def test_a_guest_saved_by_hand_after_a_boot_pass_resumed_it_is_not_carried_over():
    previous = shutdown_record(10, BOOT_1, g1="saved")
    boot = boot_record(20, BOOT_2, g1="resumed")
    assert start(previous, boot, [guest("g1", SAVED)], boot_id=BOOT_2) == {}


def test_not_reached_guests_stay_carried_over_through_several_boots():
    """Boot 2's pass stopped before g2 and g3; boot 3's pass stopped again before g3: g3 is still
    carried at the shutdown of boot 3, its image from boot 1's shutdown."""
    first = shutdown_record(10, BOOT_1, g1="saved", g2="saved", g3="saved")
    boot2 = boot_record(20, BOOT_2, "SIGTERM", g1="resumed", g2="interrupted", g3="interrupted")
    guests = [guest("g1", RUNNING), guest("g2"), guest("g3")]
    assert start(first, boot2, guests, boot_id=BOOT_2) == {"g1": "pending", "g2": "saved", "g3": "saved"}
    second = shutdown_record(30, BOOT_2, g1="saved", g2="saved", g3="saved")
    boot3 = boot_record(40, BOOT_3, "SIGTERM", g1="resumed", g2="resumed", g3="interrupted")
    guests = [guest("g1", RUNNING), guest("g2", RUNNING), guest("g3")]
    assert start(second, boot3, guests, boot_id=BOOT_3) == {"g1": "pending", "g2": "pending", "g3": "saved"}


def test_a_guest_not_reached_by_a_stopped_boot_pass_is_carried_over_whatever_it_was_recorded_as():
    """Shut down (policy) at the last shutdown and never reached: it was running then, so the next
    boot still starts it (if-running); one the admin started meanwhile is simply running."""
    previous = shutdown_record(10, BOOT_1, g1="shut-down", g2="powered-off")
    boot = boot_record(20, BOOT_2, "SIGTERM", g1="interrupted", g2="interrupted")
    assert start(previous, boot, [guest("g1", OFF), guest("g2", RUNNING)], boot_id=BOOT_2) == {
        "g1": "shut-down", "g2": "pending"}


def test_guests_on_a_peer_are_carried_over_until_they_are_back():
    """g1's return failed at boot (on-peer), g2 has come_back off (skipped), g3 came home."""
    previous = shutdown_record(10, BOOT_1)
    for name in ("g1", "g2", "g3"):
        previous["guests"][key(name)] = entry(name, "migrated", peer=PEER)
    boot = boot_record(20, BOOT_2, g1="on-peer", g2="skipped", g3="returned")
    guests = [guest("g3", OFF)]
    assert start(previous, boot, guests, boot_id=BOOT_2) == {"g1": "migrated", "g2": "migrated"}


def test_a_transient_guests_whole_save_file_is_carried_over_until_restored():
    image = str(STATE_DIR / "images" / f"{guest('t1').uuid}.save")
    previous = shutdown_record(10, BOOT_1)
    previous["guests"][key("t1")] = entry("t1", "saved-to-file", image=image)
    assert start(previous, None, [], boot_id=BOOT_2, complete=[image]) == {"t1": "saved-to-file"}
    assert start(previous, None, [], boot_id=BOOT_2) == {}  # the file is gone or cut short
    restored = boot_record(20, BOOT_2, t1="restored")
    assert start(previous, restored, [], boot_id=BOOT_2, complete=[image]) == {}


def test_an_entry_added_by_evacuate_after_the_boot_pass_is_not_judged_by_that_pass():
    """The boot pass brought g1 home; evacuate then sent it away again: it is on its peer."""
    previous = shutdown_record(10, BOOT_1)
    previous["guests"][key("g1")] = entry("g1", "migrated", peer=PEER, recorded_by="evacuate", recorded=30)
    boot = boot_record(20, BOOT_2, g1="returned")
    assert start(previous, boot, [], boot_id=BOOT_2) == {"g1": "migrated"}


def test_a_record_of_this_boot_with_no_boot_since_is_continued_whole():
    previous = shutdown_record(10, BOOT_2, g1="saved", g2="shut-down", g3="pending")
    boot = boot_record(5, BOOT_1, g1="resumed")
    guests = [guest("g1"), guest("g2", OFF), guest("g3", OFF)]
    assert start(previous, boot, guests, boot_id=BOOT_2) == {"g1": "saved", "g2": "shut-down", "g3": "pending"}


def test_entries_a_killed_shutdown_pass_left_pending_are_settled_then_carried_when_still_saved():
    """The shutdown pass of boot 1 was cut short (a power loss): three entries 'pending'. g1's
    save had completed (its image is there), t1's file is whole; g2 was never saved. The boot
    pass of boot 2 died before it wrote a record; the shutdown of boot 2 keeps g1 and t1, saved
    (g2, off with nothing saved, may have been stopped by the admin: not carried)."""
    image = str(STATE_DIR / "images" / f"{guest('t1').uuid}.save")
    previous = shutdown_record(10, BOOT_1, g1="pending", g2="pending")
    previous["guests"][key("t1")] = entry("t1", "pending", image=image)
    guests = [guest("g1"), guest("g2", OFF), guest("g3", RUNNING)]
    assert start(previous, None, guests, boot_id=BOOT_2, complete=[image]) == {
        "g1": "saved", "t1": "saved-to-file", "g3": "pending"}
