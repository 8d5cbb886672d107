"""The seeded train/val split, one rule for a data file and for sentences in memory: near-duplicate groups stay
on one side, the held-out count is min(ceil(val_fraction x unique), val_size).

A data file becomes train.txt and val.txt with no string per sentence kept, shaped for millions of sentences:
the sentences are read into one UTF-8 buffer with their offsets (not millions of Python strings), exact duplicates
are found by sorting 64-bit hashes (and confirmed by comparing the bytes), the unique sentences go to a temporary
file that near-duplicate grouping reads in chunks, and the two files are copied from it in runs of lines.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Iterator, Sequence

import numpy as np

from gpt2tune.data.dedupe import near_duplicates
from gpt2tune.data.read import Source, dedupe, iter_sentence_batches, size_hint, source
from gpt2tune.data.shingling import CHUNK, code_capacity
from gpt2tune.errors import UserError


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


def read_lines(p: Path | Source, text_column: str = "text") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every sentence of a data source (as read.iter_sentences gives them) in one buffer, each followed by a line
    break; the offsets of the sentences; a 64-bit hash of each."""
    src = source(p)
    size = max(size_hint(src, text_column) + 1, 1 << 16)  # the normalised text with line breaks is rarely longer
    buf = np.empty(size, np.uint8)
    ends, hashes, at = [], [], 0
    for batch in iter_sentence_batches(src, text_column):
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


def unique_lines(p: Path | Source, text_column: str, path: Path) -> tuple[Lines, int]:
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


def split_file(p: Path | Source, text_column: str, val_fraction: float, seed: int, val_size: int | None,
               near_dedupe: bool, out: Path) -> dict[str, Any]:
    """Write out/train.txt and out/val.txt; the counts of data.Split.summary() and the near-duplicate examples."""
    unique, total = unique_lines(p, text_column, out / "unique.tmp")
    try:
        return _split_lines(p, unique, total, val_fraction, seed, val_size, near_dedupe, out)
    finally:
        unique.path.unlink()


def _split_lines(p: Path | Source, unique: Lines, total: int, val_fraction: float, seed: int, val_size: int | None,
                 near_dedupe: bool, out: Path) -> dict[str, Any]:
    if not total:
        raise UserError(f"{p} holds no sentences (it is empty or only blank lines)")
    n = len(unique)
    n_val = held_out_count(n, val_fraction, val_size)
    capacity = code_capacity(int(unique.offsets[-1]), n)  # bytes bound characters
    near = near_duplicates(chunks=unique.chunks(), capacity=capacity) if near_dedupe else None
    groups = near.group if near else np.arange(n)
    in_val = take_groups(groups, n_val, seed)
    with open(out / "train.txt", "wb") as f:
        unique.write(f, ~in_val)
    with open(out / "val.txt", "wb") as f:
        unique.write(f, in_val)
    counts = np.bincount(groups)
    return {"sentences": total, "unique": n, "near_groups": int((counts > 1).sum()),
            "near_grouped": int(counts[counts > 1].sum()), "train": int(n - in_val.sum()), "val": int(in_val.sum()),
            "near_examples": [[unique.get(i) for i in m[:3]] for m in near.members(5)] if near else []}


# ---------------------------------------------------------------------------- in memory (tests, compare)

@dataclass
class Split:
    """A train/val split of a corpus's unique sentences, and what deduplication found on the way."""

    train: list[str]
    val: list[str]
    sentences: int  # sentences read
    unique: int  # after exact duplicates were removed
    near_groups: int = 0  # groups of two or more near-duplicates (0 when near-dedupe is off)
    near_grouped: int = 0  # sentences in those groups
    near_examples: list[list[str]] = field(default_factory=list)  # the largest groups, a few sentences each

    def summary(self) -> dict[str, int]:
        """The counts, for the run's first line and data.json."""
        return {"sentences": self.sentences, "unique": self.unique, "near_groups": self.near_groups,
                "near_grouped": self.near_grouped, "train": len(self.train), "val": len(self.val)}


def split_sentences(sentences: Sequence[str], val_fraction: float, seed: int, val_size: int | None = None,
                    near_dedupe: bool = False) -> Split:
    """Seeded train/val split of unique sentences; near-duplicate groups (near_dedupe) stay on one side.

    The held-out count is min(ceil(val_fraction x unique), val_size). Groups are taken whole, in a seeded
    order, while they fit in the held-out count; with no groups this is the plain seeded split.
    """
    unique = dedupe(sentences)
    n_val = held_out_count(len(unique), val_fraction, val_size)
    near = near_duplicates(unique) if near_dedupe else None
    groups = near.group if near else np.arange(len(unique))
    in_val = take_groups(groups, n_val, seed)
    _, inverse, counts = np.unique(groups, return_inverse=True, return_counts=True)
    held = in_val.tolist()  # Python bools: iterating a numpy array element by element is slow
    return Split(train=[s for s, v in zip(unique, held) if not v], val=[s for s, v in zip(unique, held) if v],
                 sentences=len(sentences), unique=len(unique), near_groups=int((counts > 1).sum()),
                 near_grouped=int((counts[inverse] > 1).sum()),
                 near_examples=[[unique[i] for i in m[:3]] for m in near.members(5)] if near else [])


def held_out_count(unique: int, val_fraction: float, val_size: int | None) -> int:
    """How many of `unique` sentences are held out: min(ceil(val_fraction x unique), val_size), at least one, and
    at least one left to train on; else one line saying so."""
    n_val = math.ceil(unique * val_fraction)
    if val_size is not None:
        n_val = min(n_val, val_size)
    if unique < 2 or n_val >= unique or n_val < 1:
        raise UserError(f"too few sentences: {unique} unique, need at least 2 to hold out "
                        f"{val_fraction:.0%} for validation and train on the rest")
    return n_val


def take_groups(groups: np.ndarray, n_val: int, seed: int) -> np.ndarray:
    """Mask of held-out sentences: whole groups, in a seeded order, while they fit in n_val."""
    order = list(range(len(groups)))
    random.Random(seed).shuffle(order)
    size = np.bincount(groups, minlength=len(groups))
    chosen, taken = [], 0
    for i in order:
        if groups[i] != i or taken + size[i] > n_val:  # a group is considered once, at its first sentence
            continue
        chosen.append(i)
        taken += int(size[i])
        if taken == n_val:
            break
    if not chosen:
        raise UserError(f"cannot hold out sentences: all {len(groups)} unique sentences are near-duplicates of "
                        "each other (use --near-dedupe off)")
    return np.isin(groups, chosen)


def split(sentences: Sequence[str], val_fraction: float, seed: int, val_size: int | None = None,
          near_dedupe: bool = False) -> tuple[list[str], list[str]]:
    """Seeded train/val split of unique sentences; no sentence (or near-duplicate group) lands in both."""
    s = split_sentences(sentences, val_fraction, seed, val_size, near_dedupe)
    return s.train, s.val
