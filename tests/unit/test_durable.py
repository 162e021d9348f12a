"""The flush of a saved image (``durable.flush_image``), on real files in a temporary directory."""

from __future__ import annotations

import os
import threading

from libmgsave.durable import flush_image


def test_a_written_image_is_flushed_and_timed(tmp_path):
    image = tmp_path / "guest.save"
    image.write_bytes(os.urandom(1 << 20))
    flush = flush_image(image, wait=60)
    assert flush.done and flush.error is None
    assert 0 <= flush.seconds < 60


def test_a_link_in_the_image_place_is_not_followed(tmp_path):
    target = tmp_path / "elsewhere"
    target.write_bytes(b"x")
    (tmp_path / "guest.save").symlink_to(target)
    flush = flush_image(tmp_path / "guest.save", wait=60)
    assert not flush.done
    assert "guest.save" in flush.error


def test_a_fifo_in_the_image_place_neither_blocks_nor_counts_as_flushed(tmp_path):
    os.mkfifo(tmp_path / "guest.save")
    flush = flush_image(tmp_path / "guest.save", wait=60)
    assert not flush.done and "not a regular file" in flush.error


def test_a_missing_image_is_an_error_not_an_exception(tmp_path):
    flush = flush_image(tmp_path / "gone.save", wait=60)
    assert not flush.done and "gone.save" in flush.error


def test_the_wait_is_bounded_by_what_the_pass_gives(tmp_path):
    """A wait of nothing returns at once whatever the flush does; the flush's thread goes on (the
    kernel's writing cannot be cut short, only no longer waited for)."""
    image = tmp_path / "guest.save"
    image.write_bytes(os.urandom(8 << 20))
    flush = flush_image(image, wait=0)
    assert flush.seconds < 5
    assert flush.done or flush.error is None  # either it was that quick, or it is not yet on disk


def test_a_flush_that_does_not_end_in_time_is_not_waited_for(tmp_path, monkeypatch):
    """A flush the disk holds up: stood in for by a ``_fdatasync`` that waits on an event (nothing
    real makes a local disk hang on cue). The wait ends at its bound and says not done; the
    flush, let go, ends in its thread."""
    from libmgsave import durable

    let_go, ended = threading.Event(), threading.Event()

    def held(path):
        let_go.wait(60)
        ended.set()

    monkeypatch.setattr(durable, "_fdatasync", held)
    flush = flush_image(tmp_path / "guest.save", wait=0.2)
    assert not flush.done and flush.error is None
    assert 0.2 <= flush.seconds < 10
    let_go.set()
    assert ended.wait(60)
