"""The rig tier's tests on Debian 13: its libvirtd 11, QEMU 10, python3 3.13 and python3-libvirt.

One ``systemd-nspawn`` run over an overlay of the cached Debian 13 root (``tests.rig.debian_root``)
runs ``python3 -m pytest`` on ``tests.rig.inroot.DEFAULT_TESTS`` (the e2e cycle, the faults, the save channels,
the channelled resume, the image formats)
inside, with this checkout bound in read-only: there, the rig starts the root's own
libvirtd and QEMU, and every ``mgsave`` the tests run is this checkout's, on the root's python3
and Debian's python3-libvirt binding. The guest image is built here first and bound in.

The inner session runs with ``CI=true``; this test fails if any inner test fails or errors or is
skipped (an expected failure, ``xfail``, is reported by name). ``-s`` streams the inner output.
``MGSAVE_DEBIAN13_TESTS="tests/x.py -k y"`` (pytest arguments) runs those inside instead.
"""

from __future__ import annotations

import os
import time

import pytest

from tests.rig.container import unavailable
from tests.rig.debian_root import RootBuildError, ensure_root, format_versions, versions
from tests.rig.image import ImageBuildError, ensure_image
from tests.rig.inroot import DEFAULT_TESTS, InrootError, run_tests, unavailable_reason

pytestmark = [pytest.mark.rig, pytest.mark.debian13]

TIMEOUT = 3600  # the inner session: ~14 min on 2 busy cores


def uncaptured(config):
    """A print that reaches the terminal at once, past pytest's capture."""
    capture = config.pluginmanager.getplugin("capturemanager")

    def show(line: str) -> None:
        with capture.global_and_fixture_disabled():
            print(line, flush=True)
    return show


def per_file(durations) -> list[tuple[str, float]]:
    totals: dict[str, float] = {}
    for seconds, name in durations:
        module = name.split("::", 1)[0]
        totals[module] = totals.get(module, 0.0) + seconds
    return sorted(totals.items())


def test_rig_tests_on_debian13(pytestconfig):
    reason = unavailable_reason()
    if reason:
        unavailable(reason)
    show = uncaptured(pytestconfig)
    started = time.monotonic()
    try:
        image = ensure_image()
    except ImageBuildError as error:
        unavailable(f"cannot build the test guest: {error}")
    try:
        root = ensure_root(log=show)
    except RootBuildError as error:
        unavailable(f"cannot build the Debian 13 root: {error}")
    prepared = time.monotonic() - started
    tests = os.environ.get("MGSAVE_DEBIAN13_TESTS", "").split() or list(DEFAULT_TESTS)
    streaming = pytestconfig.getoption("capture") == "no"
    try:
        run = run_tests(root, ["-ra", *tests], timeout=TIMEOUT,
                        log=show if streaming else None)
    except InrootError as error:
        unavailable(f"cannot run the tests in the Debian 13 root: {error}")

    xfailed = [name for name, kind in run.outcomes if kind == "xfail"]
    report = [
        f"Debian 13 root: {format_versions(versions(root))}",
        "inside: " + ", ".join(f"{k} {v}" for k, v in run.versions.items()),
        f"inner session ({' '.join(tests)}): {run.summary}; exit {run.returncode}; "
        f"{run.seconds:.0f} s in nspawn, {prepared:.0f} s to get the root and the image ({image.kernel_package})",
        "per file: " + ", ".join(f"{module} {seconds:.0f} s" for module, seconds in per_file(run.durations)),
        "slowest: " + ", ".join(f"{name.rsplit('::', 1)[-1]} {seconds:.0f} s" for seconds, name in run.durations[:3]),
    ] + [f"expected failure: {name}" for name in xfailed]
    show("\n" + "\n".join(report))
    tail = run.output[-12000:]
    assert run.counts, f"the inner session wrote no junit report:\n{tail}"
    assert run.counts["tests"] > 0, f"the inner session ran no test:\n{tail}"
    bad = {kind: [name for name, k in run.outcomes if k == kind] for kind in ("failed", "error", "skipped")}
    assert not any(bad.values()) and run.returncode == 0, f"inner session: {bad}; exit {run.returncode}:\n{tail}"
    assert run.versions.get("binding", "").startswith("/usr/lib/python3/dist-packages/"), \
        f"the inner mgsave did not use Debian's python3-libvirt: {run.versions}"
    assert str(run.versions.get("libvirt library", "")).startswith("11"), run.versions
