"""Helpers for tests on libvirt's built-in ``test:///default`` driver.

Its guests live only while a connection to it is open in this process: the ``hv`` fixture
holds one for the whole test, and every in-process ``mgsave`` run opens its own beside it.
"""

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
            dom.destroy()
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
