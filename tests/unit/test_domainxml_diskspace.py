"""A domain's XML read without libvirt (``domainxml``), free space asked of the file system
(``diskspace``), and the libvirt wrapper keeping to libvirt: nothing in ``hypervisor/`` parses
XML or asks the kernel for free space."""

import ast
import os
from pathlib import Path

import pytest

from libmgsave import diskspace, domainxml
from libmgsave.inventory import GuestState

HYPERVISOR = Path(__file__).resolve().parents[2] / "libmgsave" / "hypervisor"
SAVED = """<domain type='kvm'>
  <name>db1</name><uuid>0F8C6A0E-0000-4000-8000-00000000DB01</uuid>
  <title> Database one </title>
  <memory unit='GiB'>4</memory><currentMemory unit='MiB'>1024</currentMemory>
  <metadata><app:tags xmlns:app='https://example.org/app'> tier=db
     zone=a </app:tags><plain>no namespace: ignored</plain></metadata>
</domain>"""


@pytest.mark.parametrize(("xml", "kib"), [
    ("<memory unit='MiB'>256</memory>", 256 * 1024),
    ("<memory unit='GiB'>2</memory>", 2 * 1024 * 1024),
    ("<memory unit='G'>1</memory>", 1024 * 1024),
    ("<memory unit='GB'>1</memory>", 10**9 // 1024),
    ("<memory unit='bytes'>2048</memory>", 2),
    ("<memory>4096</memory>", 4096),  # KiB by default
    ("<memory unit='furlongs'>3</memory>", 3),  # an unknown unit is taken as KiB
    ("<memory unit='MiB'>lots</memory>", 0),
])
def test_memory_in_its_units(xml, kib):
    import xml.etree.ElementTree as ET

    assert domainxml.memory_kib(ET.fromstring(xml)) == kib
    assert domainxml.memory_kib(None) == 0


def test_title_and_namespaced_metadata():
    title, metadata = domainxml.title_and_metadata(SAVED)
    assert title == "Database one"
    assert metadata == {"https://example.org/app": "tier=db zone=a"}


def test_the_guest_a_save_file_defines():
    guest = domainxml.stopped_transient_guest(SAVED, "qemu:///system")
    assert (guest.name, guest.uuid, guest.connection) == ("db1", "0f8c6a0e-0000-4000-8000-00000000db01",
                                                          "qemu:///system")
    assert guest.state is GuestState.SHUTOFF and not guest.persistent
    assert guest.memory_kib == 1024 * 1024  # currentMemory before memory
    assert guest.title == "Database one" and guest.metadata["https://example.org/app"] == "tier=db zone=a"


@pytest.mark.parametrize(("xml", "why"), [
    ("<domain><name>x</name", "not XML"),
    ("<domain><name>x</name></domain>", "no name or UUID"),
    ("<domain><uuid>u</uuid><name> </name></domain>", "no name or UUID"),
])
def test_a_definition_without_a_guest_is_refused(xml, why):
    with pytest.raises(domainxml.DefinitionError, match=why):
        domainxml.stopped_transient_guest(xml, "qemu:///system")


def test_uuid_of():
    assert domainxml.uuid_of(SAVED) == "0F8C6A0E-0000-4000-8000-00000000DB01"
    assert domainxml.uuid_of("<domain/>") is None
    assert domainxml.uuid_of("not xml") is None


def test_free_bytes_of_a_path_not_made_yet_is_its_parents(tmp_path):
    st = os.statvfs(tmp_path)
    free = diskspace.free_bytes(str(tmp_path / "not" / "yet"))
    assert free is not None and abs(free - st.f_bavail * st.f_frsize) < 64 * 1024 * 1024
    assert diskspace.free_bytes(None) is None
    assert diskspace.save_room("test:///default") is None  # the test driver keeps no images on disk


def test_the_libvirt_wrapper_keeps_to_libvirt():
    for module in sorted(HYPERVISOR.glob("*.py")):
        text = module.read_text()
        names = {alias.name for node in ast.walk(ast.parse(text)) if isinstance(node, (ast.Import, ast.ImportFrom))
                 for alias in node.names} | {node.module for node in ast.walk(ast.parse(text))
                                             if isinstance(node, ast.ImportFrom) and node.module}
        assert not {n for n in names if n.startswith("xml")}, f"{module.name} parses XML: domainxml does"
        assert "statvfs" not in text, f"{module.name} asks for free space: diskspace does"
