"""A data file to train.txt and val.txt: read, dedupe, group near-duplicates, split; no string per sentence kept.

The same steps and results as `data.split_sentences` on `data.read_sentences`, shaped for millions of sentences:
the sentences are read into one UTF-8 buffer with their offsets (not millions of Python strings), exact duplicates
are found by sorting 64-bit hashes (and confirmed by comparing the bytes), the unique sentences go to a temporary
file that near-duplicate grouping reads in chunks, and the two files are copied from it in runs of lines.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Iterator

import numpy as np

from . import data
from .dedupe import near_duplicates
from .shingling import CHUNK, code_capacity
from .errors import UserError


@dataclass
class Lines:
    """Sentences in a file, each followed by a line break: sentence i is bytes offsets[i] to offsets[i + 1] - 1.

    The file, not memory, holds them while they are grouped: at 4M sentences that is 300 MB less at the peak."""

    path: Path
    offsets: np.ndarray  # (N + 1,) int64

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def get(self, i: int) -> str:
        with open(self.path, "rb") as f:
            f.seek(int(self.offsets[i]))
            return f.read(int(self.offsets[i + 1] - self.offsets[i]) - 1).decode("utf-8")

    def chunks(self, size: int = CHUNK) -> Iterator[str]:
        """The sentences joined by line breaks, `size` at a time."""
        with open(self.path, "rb") as f:
            for a in range(0, len(self), size):
                b = min(a + size, len(self))
                yield f.read(int(self.offsets[b] - self.offsets[a])).decode("utf-8")[:-1]

    def write(self, out: BinaryIO, keep: np.ndarray) -> None:
        """Write the sentences where keep is True, one a line."""
        with open(self.path, "rb") as f:
            for a, b in _runs(self.offsets, keep):
                f.seek(a)
                while b > a:
                    piece = f.read(min(b - a, 1 << 22))
                    out.write(piece)
                    a += len(piece)


def _runs(offsets: np.ndarray, keep: np.ndarray) -> Iterator[tuple[int, int]]:
    """Byte ranges of the runs of consecutive sentences where keep is True."""
    edges = np.flatnonzero(np.diff(np.concatenate([[0], keep.astype(np.int8), [0]])))
    for a, b in zip(edges[::2].tolist(), edges[1::2].tolist()):
        yield int(offsets[a]), int(offsets[b])


def read_lines(p: Path, text_column: str = "text") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every sentence of a data file (as data.iter_sentences gives them) in one buffer, each followed by a line
    break; the offsets of the sentences; a 64-bit hash of each."""
    size = max(p.stat().st_size + 1, 1 << 16)  # the normalised text with line breaks is rarely longer
    buf = np.empty(size, np.uint8)
    ends, hashes, at = [], [], 0
    for batch in data.iter_sentence_batches(p, text_column):
        if not batch:
            continue
        raw = np.frombuffer(("\n".join(batch) + "\n").encode("utf-8"), np.uint8)
        if at + len(raw) > len(buf):
            buf = np.resize(buf, max(2 * len(buf), at + len(raw)))
        buf[at:at + len(raw)] = raw
        ends.append(np.flatnonzero(raw == 10) + 1 + at)
        hashes.append(np.fromiter(map(hash, batch), np.int64, len(batch)))
        at += len(raw)
    offsets = np.concatenate([[0], *ends]).astype(np.int64)
    return buf[:at], offsets, np.concatenate(hashes) if hashes else np.zeros(0, np.int64)


def first_copies(buf: np.ndarray, offsets: np.ndarray, hashes: np.ndarray) -> np.ndarray:
    """Mask of the first copy of every distinct sentence (equal hashes are confirmed by comparing the bytes)."""
    order = np.argsort(hashes, kind="stable")  # equal hashes: in file order
    h = hashes[order]
    head = np.ones(len(h), bool)
    head[1:] = h[1:] != h[:-1]
    keep = np.ones(len(h), bool)
    starts = np.flatnonzero(head)
    sizes = np.diff(np.concatenate([starts, [len(h)]]))
    for a, k in zip(starts[sizes > 1].tolist(), sizes[sizes > 1].tolist()):
        seen: set[bytes] = set()
        for i in order[a:a + k].tolist():
            line = buf[offsets[i]:offsets[i + 1]].tobytes()
            if line in seen:
                keep[i] = False
            seen.add(line)
    return keep


def unique_lines(p: Path, text_column: str, path: Path) -> tuple[Lines, int]:
    """The first copy of every distinct sentence of data file p, written to `path`; and the sentence count."""
    buf, offsets, hashes = read_lines(p, text_column)
    keep = first_copies(buf, offsets, hashes)
    with open(path, "wb") as f:
        for a, b in _runs(offsets, keep):
            f.write(memoryview(buf)[a:b])
    sizes = np.diff(offsets)[keep]
    kept = np.zeros(len(sizes) + 1, np.int64)
    np.cumsum(sizes, out=kept[1:])
    return Lines(path, kept), len(keep)


def split_file(p: Path, text_column: str, val_fraction: float, seed: int, val_size: int | None,
               near_dedupe: bool, out: Path) -> dict[str, Any]:
    """Write out/train.txt and out/val.txt; the counts of data.Split.summary() and the near-duplicate examples."""
    unique, total = unique_lines(p, text_column, out / "unique.tmp")
    try:
        return _split_lines(p, unique, total, val_fraction, seed, val_size, near_dedupe, out)
    finally:
        unique.path.unlink()


def _split_lines(p: Path, unique: Lines, total: int, val_fraction: float, seed: int, val_size: int | None,
                 near_dedupe: bool, out: Path) -> dict[str, Any]:
    if not total:
        raise UserError(f"{p} holds no sentences (it is empty or only blank lines)")
    n = len(unique)
    n_val = math.ceil(n * val_fraction)
    if val_size is not None:
        n_val = min(n_val, val_size)
    if n < 2 or n_val >= n or n_val < 1:
        raise UserError(f"too few sentences: {n} unique, need at least 2 to hold out "
                        f"{val_fraction:.0%} for validation and train on the rest")
    capacity = code_capacity(int(unique.offsets[-1]), n)  # bytes bound characters
    near = near_duplicates(chunks=unique.chunks(), capacity=capacity) if near_dedupe else None
    groups = near.group if near else np.arange(n)
    in_val = data._take_groups(groups, n_val, seed)
    if not in_val.any():
        raise UserError(f"cannot hold out sentences: all {n} unique sentences are near-duplicates of "
                        "each other (use --near-dedupe off)")
    with open(out / "train.txt", "wb") as f:
        unique.write(f, ~in_val)
    with open(out / "val.txt", "wb") as f:
        unique.write(f, in_val)
    counts = np.bincount(groups)
    return {"sentences": total, "unique": n, "near_groups": int((counts > 1).sum()),
            "near_grouped": int(counts[counts > 1].sum()), "train": int(n - in_val.sum()), "val": int(in_val.sum()),
            "near_examples": [[unique.get(i) for i in m[:3]] for m in near.members(5)] if near else []}
