"""files.py: input checks, atomic writes (a failure leaves the old file and one line), the memoised digest."""

from __future__ import annotations

import errno
import hashlib
import os

import pytest

from gpt2tune import files
from gpt2tune.errors import UserError


def test_atomic_write_replaces_whole_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "a.txt"
    target.write_text("old")
    files.atomic_write(target, "new content")
    assert target.read_text() == "new content"
    assert [p.name for p in tmp_path.iterdir()] == ["a.txt"]


def test_atomic_write_on_a_full_disk_keeps_the_old_file_and_says_one_line(tmp_path, monkeypatch):
    target = tmp_path / "a.txt"
    target.write_text("old")

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(UserError) as e:
        files.atomic_write(target, "new")
    assert "No space left on device" in str(e.value) and "\n" not in str(e.value)
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["a.txt"]  # the temporary file is gone


def test_atomic_write_temporary_names_are_unique_per_process(tmp_path, monkeypatch):
    seen = []
    real = os.replace
    monkeypatch.setattr(os, "replace", lambda a, b: (seen.append(str(a)), real(a, b)))
    files.atomic_write(tmp_path / "x", "1")
    assert str(os.getpid()) in seen[0] and seen[0] != str(tmp_path / "x")


def test_digest_is_sha256_and_follows_the_file_when_it_changes(tmp_path):
    f = tmp_path / "c.txt"
    f.write_bytes(b"one\n")
    assert files.digest(f) == hashlib.sha256(b"one\n").hexdigest()
    f.write_bytes(b"two lines\n")  # another size: the memo must not answer for the old content
    assert files.digest(f) == hashlib.sha256(b"two lines\n").hexdigest()


def test_check_makeable_refuses_a_file_in_the_way(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(UserError, match="is a file, not a directory"):
        files.check_makeable(tmp_path / "f" / "sub", "--out")
    files.check_makeable(tmp_path / "new" / "deeper", "--out")  # makeable: no error, nothing made
    assert not (tmp_path / "new").exists()


def test_check_regular_file_refuses_a_fifo(tmp_path):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    with pytest.raises(UserError, match="FIFO"):
        files.check_regular_file(fifo, "--data")
