"""A transient guest's save to a file that fails: the file is removed only when the guest is
known to still run. Stand-in guests make the failure exact: libvirt's test driver cannot drop
its connection half-way through a save, and the real rig cannot make it drop at a chosen moment
after the save completed."""

from __future__ import annotations

import os
import time

import pytest

from libmgsave.errors import GuestGone, HypervisorUnavailable, OperationRefused
from libmgsave.budget import Budget
from libmgsave.execute import ShutdownPass
from libmgsave.hypervisor import Connections
from libmgsave.inventory import GuestInfo, GuestState
from libmgsave.plan import plan_shutdown
from libmgsave.policy import BUILTIN_POLICY

COMPLETE = b"LibvirtQemudSave" + b"\0" * 64
PARTIAL = b"LibvirtQemudPart" + b"\0" * 64
INFO = GuestInfo("qemu:///system", "t", "6b3c0f5e-0000-4000-8000-0000000000aa", GuestState.RUNNING,
                 persistent=False, memory_kib=1024)


class StandIn:
    """A transient guest whose saves write ``writes`` in turn, each then raising what ``raises``
    gives (None: the save succeeds); gone once a save wrote a whole file."""

    name, uuid = INFO.name, INFO.uuid

    def __init__(self, writes, raises):
        self.writes, self.raises, self.gone, self.saves = list(writes), list(raises), False, 0

    def is_active(self):
        if self.gone:
            raise GuestGone("gone")
        return True

    def state(self):
        return GuestState.RUNNING, 0

    def being_saved(self):
        return False

    def save_to_file(self, path, **_flags):
        self.saves += 1
        data = self.writes.pop(0)
        with open(path, "wb") as file:
            file.write(data)
        self.gone = data == COMPLETE
        error = self.raises.pop(0)
        if error is not None:
            raise error
        return 1  # the channels it saved with


class OneGuest(Connections):
    """One stand-in guest; a 'reconnect' succeeds at once."""

    def __init__(self, guest):
        super().__init__({}, give_up_at=time.monotonic() + 60)
        self.stand_in = guest

    def guest(self, uri, uuid):
        if self.stand_in.gone:
            raise GuestGone("Domain not found")
        return self.stand_in

    def _reconnect(self, uri):
        pass


def _save(tmp_path, guest):
    plan = plan_shutdown([INFO], BUILTIN_POLICY, state_dir=tmp_path)
    (entry,) = plan.active
    [result] = ShutdownPass(plan, OneGuest(guest), record=None, budget=Budget.starting_now(60)).run()
    return result, entry.image


def test_a_save_that_completed_as_the_connection_dropped_keeps_its_file(tmp_path):
    """Before: the file was removed on any error, so a completed save lost on a dropped
    connection was deleted, and the guest (gone: it was saved) reported 'vanished'."""
    guest = StandIn([COMPLETE], [HypervisorUnavailable("connection lost")])
    result, image = _save(tmp_path, guest)
    assert result.outcome == "saved-to-file", result.messages
    with open(image, "rb") as file:
        assert file.read() == COMPLETE
    assert guest.saves == 1


def test_a_save_cut_by_a_dropped_connection_while_the_guest_runs_is_done_again(tmp_path):
    guest = StandIn([PARTIAL, COMPLETE], [HypervisorUnavailable("connection lost"), None])
    result, image = _save(tmp_path, guest)
    assert result.outcome == "saved-to-file", result.messages
    assert guest.saves == 2
    with open(image, "rb") as file:
        assert file.read() == COMPLETE


def test_a_refused_save_while_the_guest_runs_leaves_no_partial_file(tmp_path, monkeypatch):
    from libmgsave.execute import shutdown
    monkeypatch.setattr(shutdown, "SHUTDOWN_POLL", 0.01)
    guest = StandIn([PARTIAL], [OperationRefused("no room")])
    guest.request_shutdown = lambda: setattr(guest, "gone", True)  # then it shuts down when asked
    result, image = _save(tmp_path, guest)
    assert result.outcome == "shut-down", result.messages
    assert not os.path.lexists(image), "a partial file of a guest that still ran is removed"


@pytest.mark.parametrize("error", [OperationRefused("I/O error after the save"), HypervisorUnavailable("gone")])
def test_a_failed_save_of_a_guest_that_is_gone_keeps_its_file(tmp_path, error):
    """libvirt reports an error, but the guest is gone: the file may be its only saved state."""
    guest = StandIn([COMPLETE], [error])
    result, image = _save(tmp_path, guest)
    assert os.path.exists(image)
    assert result.outcome == "saved-to-file", result.messages
