"""A data file to train.txt and val.txt: read, dedupe, group near-duplicates, split; no string per sentence kept.

The same steps and results as `data.split_sentences` on `data.read_sentences`, shaped for millions of sentences:
the sentences live in one UTF-8 buffer with their offsets (not millions of Python strings), exact duplicates are
found by sorting 64-bit hashes (and confirmed by comparing the bytes), near-duplicate grouping reads the buffer in
chunks, and the two files are written from the buffer in runs of consecutive lines.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Iterator

import numpy as np

from . import data
from .dedupe import CHUNK, near_duplicates
from .errors import UserError


@dataclass
class Lines:
    """Sentences in one buffer, each followed by a line break: sentence i is buf[offsets[i]:offsets[i + 1] - 1]."""

    buf: np.ndarray  # uint8
    offsets: np.ndarray  # (N + 1,) int64

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def get(self, i: int) -> str:
        return self.buf[self.offsets[i]:self.offsets[i + 1] - 1].tobytes().decode("utf-8")

    def chunks(self, size: int = CHUNK) -> Iterator[str]:
        """The sentences joined by line breaks, `size` at a time."""
        for a in range(0, len(self), size):
            b = min(a + size, len(self))
            yield self.buf[self.offsets[a]:self.offsets[b] - 1].tobytes().decode("utf-8")

    def runs(self, keep: np.ndarray) -> Iterator[tuple[int, int]]:
        """Byte ranges of the runs of consecutive sentences where keep is True."""
        edges = np.flatnonzero(np.diff(np.concatenate([[0], keep.astype(np.int8), [0]])))
        for a, b in zip(edges[::2].tolist(), edges[1::2].tolist()):
            yield int(self.offsets[a]), int(self.offsets[b])

    def select(self, keep: np.ndarray) -> "Lines":
        """The sentences where keep is True, in order."""
        sizes = np.diff(self.offsets)[keep]
        offsets = np.zeros(len(sizes) + 1, np.int64)
        np.cumsum(sizes, out=offsets[1:])
        buf = np.empty(int(offsets[-1]), np.uint8)
        at = 0
        for a, b in self.runs(keep):
            buf[at:at + b - a] = self.buf[a:b]
            at += b - a
        return Lines(buf, offsets)

    def write(self, f: BinaryIO, keep: np.ndarray) -> None:
        """Write the sentences where keep is True, one a line."""
        for a, b in self.runs(keep):
            f.write(memoryview(self.buf)[a:b])


def read_lines(p: Path, text_column: str = "text") -> tuple[Lines, np.ndarray]:
    """Every sentence of a data file (as data.iter_sentences gives them) and a 64-bit hash of each."""
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
    return Lines(buf[:at], offsets), np.concatenate(hashes) if hashes else np.zeros(0, np.int64)


def first_copies(lines: Lines, hashes: np.ndarray) -> np.ndarray:
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
            line = lines.buf[lines.offsets[i]:lines.offsets[i + 1]].tobytes()
            if line in seen:
                keep[i] = False
            seen.add(line)
    return keep


def split_file(p: Path, text_column: str, val_fraction: float, seed: int, val_size: int | None,
               near_dedupe: bool, out: Path) -> dict[str, Any]:
    """Write out/train.txt and out/val.txt; the counts of data.Split.summary() and the near-duplicate examples."""
    lines, hashes = read_lines(p, text_column)
    if not len(lines):
        raise UserError(f"{p} holds no sentences (it is empty or only blank lines)")
    total = len(lines)
    unique = lines.select(first_copies(lines, hashes))
    del lines, hashes
    n = len(unique)
    n_val = math.ceil(n * val_fraction)
    if val_size is not None:
        n_val = min(n_val, val_size)
    if n < 2 or n_val >= n or n_val < 1:
        raise UserError(f"too few sentences: {n} unique, need at least 2 to hold out "
                        f"{val_fraction:.0%} for validation and train on the rest")
    near = near_duplicates(chunks=unique.chunks()) if near_dedupe else None
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
