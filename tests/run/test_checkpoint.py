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


def test_a_training_state_is_written_a_flushed_slice_at_a_time_and_loads_back(tmp_path, monkeypatch):
    import os

    import torch

    drops = []
    monkeypatch.setattr(checkpoint, "SLICE_BYTES", 1 << 16)
    real_drop = checkpoint._drop
    monkeypatch.setattr(checkpoint, "_drop", lambda fd, start=0, length=0: (drops.append((start, length)),
                                                                             real_drop(fd, start, length)))
    moments = {i: {"exp_avg": torch.randn(25_000)} for i in range(8)}  # 100 kB each
    state = {"loop": {"step": 3}, "optimizer": {"state": moments, "param_groups": []}, "scheduler": {}}
    checkpoint.save_state(state, tmp_path)
    loaded = torch.load(tmp_path / checkpoint.STATE_FILE, weights_only=True)
    assert loaded["loop"] == {"step": 3}
    assert all(torch.equal(loaded["optimizer"]["state"][i]["exp_avg"], moments[i]["exp_avg"]) for i in range(8))
    if hasattr(os, "posix_fadvise"):
        assert len(drops) >= 7  # 800 kB in slices of 64 kB or more, each flushed and dropped as it was written
        assert all(start + length <= (tmp_path / checkpoint.STATE_FILE).stat().st_size for start, length in drops)


def test_release_free_memory_asks_the_malloc_in_use(monkeypatch):
    from gpt2tune import process

    calls = []

    class Glibc:
        def malloc_trim(self, pad):
            calls.append(("malloc_trim", pad))

    class Tcmalloc(Glibc):
        def MallocExtension_ReleaseFreeMemory(self):
            calls.append(("tcmalloc",))

    for lib, expected in ((Tcmalloc(), ("tcmalloc",)), (Glibc(), ("malloc_trim", 0))):
        monkeypatch.setattr(process.ctypes, "CDLL", lambda name, lib=lib: lib)
        calls.clear()
        process.release_free_memory()
        assert calls == [expected]
    monkeypatch.setattr(process.ctypes, "CDLL", lambda name: object())  # neither: nothing to do
    process.release_free_memory()
