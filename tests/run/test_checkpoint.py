"""A checkpoint written in the background: swapped in only once committed, discarded when aborted, and its
failure raised in the caller's thread."""

from __future__ import annotations

import errno
import threading
from pathlib import Path

import pytest

from gpt2tune.errors import UserError
from gpt2tune.run import checkpoint


def old_checkpoint(out: Path) -> None:
    (out / "last").mkdir(parents=True)
    (out / "last" / "trainer_state.pt").write_text("old")


def writer(written: threading.Event, threads: list[str], fail: bool = False):
    def write(d: Path) -> None:
        threads.append(threading.current_thread().name)
        if fail:
            raise OSError(errno.ENOSPC, "No space left on device")
        (d / "trainer_state.pt").write_text("new")
        written.set()
    return write


def test_written_at_once_but_swapped_in_only_when_committed(tmp_path):
    old_checkpoint(tmp_path)
    written, threads = threading.Event(), []
    saving = checkpoint.Background(
        lambda ready: checkpoint.save_checkpoint(tmp_path, writer(written, threads), False, 1, ready))
    assert written.wait(30)
    assert threads and threads[0] != threading.current_thread().name  # another thread wrote it
    assert (tmp_path / "last" / "trainer_state.pt").read_text() == "old"  # not yet swapped in
    assert (tmp_path / "last.tmp" / "trainer_state.pt").read_text() == "new"
    saving.commit()
    saving.join()
    assert (tmp_path / "last" / "trainer_state.pt").read_text() == "new"
    assert not (tmp_path / "last.tmp").exists()


def test_aborted_leaves_the_previous_checkpoint(tmp_path):
    old_checkpoint(tmp_path)
    written = threading.Event()
    saving = checkpoint.Background(
        lambda ready: checkpoint.save_checkpoint(tmp_path, writer(written, []), False, 1, ready))
    assert written.wait(30)
    saving.abort()
    assert (tmp_path / "last" / "trainer_state.pt").read_text() == "old"
    assert not (tmp_path / "last.tmp").exists()


def test_a_failed_write_is_raised_by_join_and_keeps_the_previous_checkpoint(tmp_path):
    old_checkpoint(tmp_path)
    saving = checkpoint.Background(
        lambda ready: checkpoint.save_checkpoint(tmp_path, writer(threading.Event(), [], fail=True), False, 1,
                                                 ready))
    saving.commit()
    with pytest.raises(UserError, match="No space left on device.*previous checkpoint"):
        saving.join()
    saving.join()  # raised once
    assert (tmp_path / "last" / "trainer_state.pt").read_text() == "old"
    assert not (tmp_path / "last.tmp").exists()
