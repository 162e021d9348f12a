"""Helpers for tests on libvirt's built-in ``test:///default`` driver.

Its guests live only while a connection to it is open in this process: the ``hv`` fixture
holds one for the whole test, and every in-process ``mgsave`` run opens its own beside it.
"""

import json
import os

import libvirt
import pytest

URI = "test:///default"


def domain_xml(name: str, memory_kib: int = 262144) -> str:
    return (f"<domain type='test'><name>{name}</name><memory>{memory_kib}</memory>"
            f"<os><type>hvm</type></os></domain>")


@pytest.fixture
def hv():
    conn = libvirt.open(URI)
    for dom in conn.listAllDomains():  # the driver's own sample guest: keep it out of the way
        if dom.isActive():
            transient = not dom.isPersistent()
            dom.destroy()
            if transient:  # left running by an earlier test: destroying it was its end
                continue
        if dom.hasManagedSaveImage(0):  # left by an earlier test while a connection kept the driver alive
            dom.managedSaveRemove(0)
        dom.undefine()
    yield conn
    conn.close()


def define(conn, *names, running=True):
    for name in names:
        dom = conn.defineXML(domain_xml(name))
        if running:
            dom.create()


def running(conn):
    return sorted(d.name() for d in conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE))


def has_image(conn, name):
    return bool(conn.lookupByName(name).hasManagedSaveImage(0))


MIGRATED_UUID = "5d3f1c2e-8a4b-4f2e-9c1d-0e6a7b8c9d0f"


def migrated_record(state_dir, peer, name="gone1", uuid=MIGRATED_UUID):
    """A shutdown record in ``state_dir`` saying the pass migrated ``name`` to ``peer``."""
    state_dir.mkdir(mode=0o700, exist_ok=True)
    entry = {"connection": URI, "name": name, "uuid": uuid, "outcome": "migrated", "peer": peer,
             "persistent": True, "memory_kib": 2048}
    record = {"format": "mgsave-state", "kind": "shutdown", "version": 1, "started": 1.0, "finished": 2.0,
              "guests": {f"{URI} {uuid}": entry}}
    (state_dir / "last-shutdown.json").write_text(json.dumps(record))
    os.chmod(state_dir / "last-shutdown.json", 0o600)
