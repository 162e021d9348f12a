"""Whether a held saved image resumes on the hypervisor installed now: what each save records
(``history.ResumeNeeds``, read from libvirt's domain XML by ``domainxml.resume_needs``), the
pure verdict (``restorable.judge``) and the boot plan of a guest whose image will not resume."""

from __future__ import annotations

import json
import uuid

import pytest

from libmgsave import state
from libmgsave.domainxml import machine_type, resume_needs
from libmgsave.history import Action, EntryError, GuestEntry, Outcome, RecordedPass, ResumeNeeds
from libmgsave.inventory import GuestInfo, GuestState
from libmgsave.plan import plan_boot
from libmgsave.policyfile import parse_policy
from libmgsave.restorable import Offer, Restorability, Verdict, judge, offer_from_xml, version_text

URI = "qemu:///system"
UUID = "6695eb01-f6a4-8304-79aa-97f2502e193f"
KEY = f"{URI} {UUID}"

DOMAIN = """<domain type='kvm'><name>db</name><uuid>6695eb01-f6a4-8304-79aa-97f2502e193f</uuid>
  <os><type arch='x86_64' machine='pc-i440fx-5.2'>hvm</type></os>
  <cpu mode='custom' match='exact'><model fallback='forbid'>Skylake-Client</model></cpu>
  <devices>
    <disk type='file' device='disk'><target dev='vda' bus='virtio'/></disk>
    <controller type='usb' model='piix3-uhci'/><controller type='pci' model='pci-root'/>
    <interface type='network'><model type='virtio'/></interface>
    <interface type='network'><model type='virtio'/></interface>
    <video><model type='cirrus' vram='16384'/></video>
    <sound model='ich6'/><watchdog model='i6300esb'/>
  </devices></domain>"""

CAPABILITIES = """<capabilities><host/><guest><os_type>hvm</os_type><arch name='x86_64'>
  <machine maxCpus='255'>pc-i440fx-8.2</machine><machine canonical='pc-i440fx-8.2' maxCpus='255'>pc</machine>
  <machine maxCpus='255'>pc-i440fx-6.0</machine><machine maxCpus='288'>pc-q35-8.2</machine>
  <domain type='qemu'/><domain type='kvm'/></arch></guest></capabilities>"""

DOMAIN_CAPABILITIES = """<domainCapabilities><path>/usr/bin/qemu-system-x86_64</path><domain>kvm</domain>
  <machine>pc-i440fx-8.2</machine><arch>x86_64</arch>
  <cpu><mode name='host-passthrough' supported='yes'/><mode name='custom' supported='yes'>
    <model usable='yes'>qemu64</model><model usable='no'>Skylake-Client</model></mode></cpu>
  <devices><video supported='yes'><enum name='modelType'><value>vga</value><value>cirrus</value>
    <value>virtio</value></enum></video></devices></domainCapabilities>"""

NEEDS = ResumeNeeds(7_002_000, 9_000_000, "pc-i440fx-5.2", "custom", "Skylake-Client",
                    ("video:cirrus", "sound:ich6", "usb:piix3-uhci", "watchdog:i6300esb", "interface:virtio"))


def offer(**changes) -> Offer:
    base = offer_from_xml(CAPABILITIES, DOMAIN_CAPABILITIES, 8_002_000, 10_000_000)
    return Offer(**{**base.__dict__, **changes})


def test_what_a_save_needs_is_read_from_the_domain_xml_with_the_versions():
    assert resume_needs(DOMAIN, 7_002_000, 9_000_000) == NEEDS
    assert machine_type("<domain><os><type>hvm</type></os></domain>") is None
    assert machine_type("not xml") is None


def test_what_this_hypervisor_offers_is_read_from_its_capabilities():
    found = offer_from_xml(CAPABILITIES, DOMAIN_CAPABILITIES, 8_002_000, 10_000_000)
    assert found.machines == {"pc-i440fx-8.2", "pc", "pc-i440fx-6.0", "pc-q35-8.2"}
    assert found.cpu_models == {"qemu64", "Skylake-Client"} and found.video_models == {"vga", "cirrus", "virtio"}
    # a driver that lists no machine types (the test driver), or no XML at all, says nothing of them
    nothing = offer_from_xml("<capabilities><host/></capabilities>", None, 2, None)
    assert nothing.machines is None and nothing.cpu_models is None and nothing.video_models is None


@pytest.mark.parametrize("needs, machine, changes, verdict, words", [
    (ResumeNeeds(8_002_000, 10_000_000, "pc-i440fx-6.0", "custom", "qemu64", ()), None, {},
     Verdict.RESUMES, "resumes"),
    (NEEDS, "pc-i440fx-6.0", {}, Verdict.CHANGED,
     "QEMU changed since the save (7.2.0 -> 8.2.0); libvirt changed since the save (9.0.0 -> 10.0.0): "
     "expected to resume"),
    (NEEDS, None, {}, Verdict.WILL_NOT_RESUME,
     "will not resume: machine type pc-i440fx-5.2 is not offered by this QEMU (8.2.0)"),
    # the image's own definition (edited by the admin) wins over the record
    (NEEDS, "pc", {}, Verdict.CHANGED, "QEMU changed since the save (7.2.0 -> 8.2.0)"),
    (ResumeNeeds(1, 1, "pc", "custom", "Opteron_G1", ()), None, {}, Verdict.WILL_NOT_RESUME,
     "will not resume: CPU model Opteron_G1 is not offered by this QEMU (8.2.0)"),
    (ResumeNeeds(1, 1, "pc", "host-passthrough", "Opteron_G1", ()), None, {}, Verdict.CHANGED,
     "QEMU changed"),
    (ResumeNeeds(1, 1, "pc", None, None, ("video:qxl",)), None, {}, Verdict.WILL_NOT_RESUME,
     "will not resume: video device model qxl is not offered by this QEMU (8.2.0)"),
    # saved before mgsave recorded needs: the image's definition alone
    (None, "pc-i440fx-6.0", {}, Verdict.RESUMES, "resumes (machine type pc-i440fx-6.0 is offered)"),
    (None, "pc-1.0", {}, Verdict.WILL_NOT_RESUME, "will not resume: machine type pc-1.0 is not offered"),
    (None, None, {}, Verdict.UNKNOWN, "not known whether it resumes"),
    # a hypervisor that lists no machine types judges none
    (NEEDS, None, {"machines": None, "cpu_models": None, "video_models": None}, Verdict.CHANGED, "QEMU changed"),
])
def test_the_verdict(needs, machine, changes, verdict, words):
    found = judge(needs, machine, offer(**changes))
    assert found.verdict is verdict and words in found.why
    assert bool(found.advice) == (verdict is Verdict.WILL_NOT_RESUME)


def test_without_capabilities_nothing_is_claimed():
    assert judge(NEEDS, None, None).verdict is Verdict.UNKNOWN
    assert version_text(7_002_001) == "7.2.1" and version_text(None) == "unknown"


# ----- the record -----

SAVED = {"connection": URI, "name": "db", "uuid": UUID, "outcome": "saved", "persistent": True,
         "needs": {"cpu_mode": "custom", "cpu_model": "Skylake-Client", "devices": ["video:cirrus"],
                   "libvirt_version": 9000000, "machine": "pc-i440fx-5.2", "qemu_version": 7002000}}


def as_written(entry: dict) -> str:
    return json.dumps(entry, indent=1, sort_keys=True)


def test_the_needs_are_typed_and_written_back_byte_for_byte():
    entry = GuestEntry.from_dict(json.loads(as_written(SAVED)), KEY)
    assert entry.needs == ResumeNeeds(7002000, 9000000, "pc-i440fx-5.2", "custom", "Skylake-Client", ("video:cirrus",))
    assert as_written(entry.to_dict()) == as_written(SAVED)
    old = {key: value for key, value in SAVED.items() if key != "needs"}
    assert GuestEntry.from_dict(old, KEY).needs is None and "needs" not in GuestEntry.from_dict(old).to_dict()


@pytest.mark.parametrize("needs, problem", [
    ("pc", "'needs' is 'pc', not what resuming an image needs"),
    ({**SAVED["needs"], "extra": 1}, "not what resuming an image needs"),
    ({**SAVED["needs"], "qemu_version": "7.2"}, "'needs.qemu_version' is '7.2', not a version number"),
    ({**SAVED["needs"], "qemu_version": True}, "'needs.qemu_version' is True, not a version number"),
    ({**SAVED["needs"], "machine": 5}, "'needs.machine' is 5, not a string"),
    ({**SAVED["needs"], "devices": [1]}, "'needs.devices' is [1], not a list of device models"),
])
def test_needs_are_validated_on_read(needs, problem):
    with pytest.raises(EntryError) as caught:
        GuestEntry.from_dict({**SAVED, "needs": needs}, KEY)
    assert problem in str(caught.value)


# ----- the boot plan -----

def guest(name, *, persistent=True, image=True):
    return GuestInfo(connection=URI, name=name, uuid=str(uuid.uuid5(uuid.NAMESPACE_URL, name)),
                     state=GuestState.SHUTOFF, persistent=persistent, has_managed_save=image)


def record(*guests, outcome="saved"):
    return RecordedPass.from_dict({"guests": {
        state.guest_record_key(g.connection, g.uuid): {"name": g.name, "uuid": g.uuid, "connection": g.connection,
                                                       "outcome": outcome,
                                                       **({"image": "/x/t.save"} if not g.persistent else {})}
        for g in guests}})


POLICY = parse_policy("version: 1\nguests:\n  - match: {name: 'off*'}\n    on_resume_failure: leave-off\n",
                      "policy.yaml")
WONT = Restorability(Verdict.WILL_NOT_RESUME, "will not resume: machine type pc-i440fx-5.2 is not offered by this "
                     "QEMU (8.2.0)", "boot with the QEMU that saved it")


def test_a_guest_whose_image_will_not_resume_boots_fresh_with_its_image_kept_and_is_never_tried():
    fresh = guest("fresh")
    plan = plan_boot([fresh], POLICY, record(fresh), resumes={fresh.key: WONT})
    (entry,) = plan.entries
    assert entry.actions == (Action.START,) and entry.first_choice is Action.RESUME
    assert entry.will_not_resume == WONT.text and entry.short_of_first_choice
    assert "machine type pc-i440fx-5.2 is not offered" in entry.reason and "its image kept" in entry.reason
    assert "on_resume_failure: boot-fresh" in entry.boots_fresh_because
    assert entry.to_dict()["will_not_resume"] == WONT.text


def test_one_whose_on_resume_failure_is_leave_off_is_left_off_with_its_image_in_place():
    off = guest("off")
    (entry,) = plan_boot([off], POLICY, record(off), resumes={off.key: WONT}).entries
    assert entry.skipped and "left off (on_resume_failure: leave-off), its image kept where it is" in (
        entry.left_off_because)
    assert entry.first_choice is Action.RESUME and entry.will_not_resume == WONT.text


def test_a_transient_guests_file_that_will_not_resume_is_kept_and_the_guest_left_off():
    transient = guest("t", persistent=False, image=False)
    plan = plan_boot([], POLICY, record(transient, outcome=str(Outcome.SAVED_TO_FILE)),
                     resumes={transient.key: WONT})
    (entry,) = plan.entries
    assert entry.skipped and "left off (a transient guest), its image kept where it is" in entry.left_off_because
    assert entry.first_choice is Action.RESTORE


def test_a_changed_hypervisor_is_a_note_and_the_resume_is_still_tried():
    changed = guest("db")
    verdict = Restorability(Verdict.CHANGED, "QEMU changed since the save (7.2.0 -> 8.2.0): expected to resume")
    (entry,) = plan_boot([changed], POLICY, record(changed), resumes={changed.key: verdict}).entries
    assert entry.actions == (Action.RESUME,) and verdict.why in entry.notes
    assert entry.changed_since_save == verdict.why and entry.will_not_resume is None
