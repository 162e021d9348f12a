"""The terminal's extras: colour only on a terminal and never with NO_COLOR, one live progress
line on a terminal's standard error (nothing in the journal or a file), and STATUS= counts that
never go backwards."""

from __future__ import annotations

import io
import re
from types import SimpleNamespace

import pytest

from libmgsave import console, notify
from libmgsave.budget import Budget
from libmgsave.events import Events
from libmgsave.execute import progress, waiting
from libmgsave.hypervisor import JobProgress


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture(autouse=True)
def _clean():
    console.reset()
    yield
    console.reset()


def test_colour_only_on_a_terminal_and_never_with_no_color(monkeypatch):
    monkeypatch.delenv("NO_COLOR", raising=False)
    monkeypatch.setenv("TERM", "xterm")
    monkeypatch.setattr("sys.stdout", io.StringIO())
    assert console.paint("FAILED", "red") == "FAILED"
    monkeypatch.setattr("sys.stdout", Terminal())
    assert console.paint("FAILED", "red") == "\033[31mFAILED\033[0m"
    monkeypatch.setenv("NO_COLOR", "1")
    assert console.paint("FAILED", "red") == "FAILED"
    monkeypatch.setenv("NO_COLOR", "")  # no-color.org: set and not empty
    assert console.paint("FAILED", "red") != "FAILED"


def test_the_live_line_is_for_a_terminal_only(monkeypatch):
    journal_stream = io.StringIO()
    monkeypatch.setattr("sys.stderr", journal_stream)
    console.live("saving 1/2: db1 45%")
    console.err("a log line")
    assert journal_stream.getvalue() == "a log line\n"
    terminal = Terminal()
    monkeypatch.setattr("sys.stderr", terminal)
    console.live("saving 1/2: db1 45%")
    console.err("a log line")
    console.clear_live()
    assert terminal.getvalue() == ("\r\033[Ksaving 1/2: db1 45%" "\r\033[K" "a log line\n" "saving 1/2: db1 45%"
                                   "\r\033[K")


def test_progress_says_percent_rate_and_time_left():
    text = progress.progress_text(JobProgress(512 << 20, 2048 << 20), 4.0)
    assert text == "25% 128 MiB/s 12 s left"
    assert progress.progress_text(JobProgress(3 << 20, 0), 1.0) == "3.0 MiB"


def _guest(name):
    guest = SimpleNamespace(name=name, uuid=name, job_progress=lambda: JobProgress(1, 2))
    return guest, SimpleNamespace(guest=SimpleNamespace(name=name, memory_bytes=2))


def test_status_counts_never_go_backwards_across_the_rounds_of_a_pass(monkeypatch):
    sent = []
    monkeypatch.setattr(notify, "status", sent.append)
    budget, waits = Budget(1e9), waiting.Waits()
    with progress.SaveProgress(2, budget, waits, Events()) as first:
        for name in ("a", "b"):
            guest, plan = _guest(name)
            first.begin(guest, plan, 60)
            first.end(guest)
    # a guest started during the pass: a round of its own, after the first round's saves
    with progress.SaveProgress(1, budget, waits, Events(), settled_before=2) as late:
        guest, plan = _guest("c")
        late.begin(guest, plan, 60)
        late.end(guest)
    counts = [tuple(map(int, re.match(r"saving (\d+)/(\d+)", s).groups())) for s in sent]
    assert counts[-1] == (3, 3)
    assert all(a[0] <= b[0] for a, b in zip(counts, counts[1:], strict=False)), counts


def test_a_wait_says_for_whom_and_for_how_long(monkeypatch):
    clock = iter([100.0, 100.0, 112.0, 130.0])
    monkeypatch.setattr(waiting.time, "monotonic", lambda: next(clock))
    waits = waiting.Waits()
    with waits.waiting("web-1", "db-1"), waits.waiting("app-1", "db-1, web-1"):
        assert waits.describe() == "web-1 for db-1 (12 s), app-1 for db-1, web-1 (12 s)"
    assert waits.describe() == ""


def test_a_guest_waiting_for_a_slot_is_named_while_it_waits():
    import threading
    import time

    from libmgsave.execute.scheduler import Slots

    waits = waiting.Waits()
    slots = Slots(1, waits=waits)
    got = threading.Event()

    def second():
        with slots.held("b", who="db-2", what="a save slot"):
            got.set()

    with slots.held("a", who="db-1"):
        worker = threading.Thread(target=second)
        worker.start()
        for _ in range(100):
            if waits.describe():
                break
            time.sleep(0.01)
        assert waits.describe().startswith("db-2 for a save slot (")
    worker.join(5)
    assert got.is_set() and waits.describe() == ""
