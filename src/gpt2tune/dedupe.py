"""Near-duplicate sentences: MinHash over normalised word shingles, LSH banding, exact Jaccard check, union-find.

Two sentences are near-duplicates when the Jaccard similarity of their word shingle sets, after normalising
case, punctuation and digits, is at least `threshold`; a group is the sentences linked by chains of such
pairs. MinHash is computed with numpy over all sentences at once (a hash per unique word, one vectorised
pass per hash function), because a per-sentence MinHash object (datasketch's) costs tens of microseconds of
Python per sentence; candidates from the LSH buckets are confirmed with the exact Jaccard similarity.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Sequence

import numpy as np

THRESHOLD = 0.8
NGRAM = 2  # word bigrams: word sets (n = 1) make most sentences share their function words, so LSH buckets
# fill with unrelated pairs (26x more exact checks on the Japan corpus); bigrams keep order, which is the point
BANDS, ROWS = 8, 4  # 32 hash functions; P(candidate) = 1-(1-J^4)^8: 0.985 at J = 0.8, 0.9996 at J = 0.9
CHUNK = 65_536  # sentences per vectorised MinHash pass (bounds temporary memory)
MAX_REPS = 8  # clusters kept per LSH bucket for the exact check

_DIGITS = re.compile(r"\d+")
_WORD = re.compile(r"[^\W_]+")


def words(sentence: str) -> list[str]:
    """The normalised words of a sentence: case folded, every digit run as 0, punctuation dropped."""
    return _WORD.findall(_DIGITS.sub("0", sentence.casefold()))


def shingles(sentence: str, ngram: int = NGRAM) -> set[tuple[str, ...]]:
    """The word n-grams of a normalised sentence (a sentence shorter than n is one shingle)."""
    ws = words(sentence)
    if len(ws) <= ngram:
        return {tuple(ws)}
    return set(zip(*(ws[k:] for k in range(ngram))))


def jaccard(a: set, b: set) -> float:
    """|a & b| / |a | b| (1.0 for two empty sets)."""
    union = len(a | b)
    return len(a & b) / union if union else 1.0


class _WordHashes(dict):
    """word -> a stable 64-bit hash, computed once per word (Python's hash() changes from process to process)."""

    def __missing__(self, word: str) -> int:
        h = self[word] = int.from_bytes(hashlib.blake2b(word.encode("utf-8"), digest_size=8).digest(), "little")
        return h


@dataclass
class NearDuplicates:
    """Group of each sentence: group[i] is the index of its group's first sentence (itself when alone)."""

    group: np.ndarray  # (N,) int64

    @property
    def groups(self) -> int:
        """Groups with two or more sentences."""
        _, counts = np.unique(self.group, return_counts=True)
        return int((counts > 1).sum())

    @property
    def grouped(self) -> int:
        """Sentences in groups of two or more."""
        _, inverse, counts = np.unique(self.group, return_inverse=True, return_counts=True)
        return int((counts[inverse] > 1).sum())

    def members(self, limit: int | None = None) -> list[list[int]]:
        """Groups of two or more as lists of sentence indices, largest first (then by first index)."""
        order = np.argsort(self.group, kind="stable")
        g = self.group[order]
        cuts = np.flatnonzero(np.diff(g)) + 1
        out = [m.tolist() for m in np.split(order, cuts) if len(m) > 1]
        out.sort(key=lambda m: (-len(m), m[0]))
        return out[:limit] if limit is not None else out


def _band_keys(sentences: Sequence[str], ngram: int, seed: int) -> np.ndarray:
    """(N, BANDS) uint64: each band's ROWS MinHash values folded into one bucket key."""
    rng = np.random.default_rng(seed)
    k = BANDS * ROWS
    a = rng.integers(1, 2**63, size=k, dtype=np.uint64) * np.uint64(2) + np.uint64(1)  # odd multipliers
    b = rng.integers(0, 2**63, size=k, dtype=np.uint64)
    fold = rng.integers(1, 2**63, size=max(ROWS, ngram), dtype=np.uint64) * np.uint64(2) + np.uint64(1)
    memo = _WordHashes()
    keys = np.empty((len(sentences), BANDS), dtype=np.uint64)
    pad = [""] * ngram
    for start in range(0, len(sentences), CHUNK):
        hashes: list[int] = []
        lengths: list[int] = []
        for s in sentences[start:start + CHUNK]:
            ws = words(s)
            if len(ws) < ngram:
                ws += pad[len(ws):]  # a short sentence is one shingle, padded
            hashes.extend(map(memo.__getitem__, ws))
            lengths.append(len(ws))
        with np.errstate(over="ignore"):  # arithmetic modulo 2^64 is the hash function
            shingle, counts = _ngram_hashes(np.array(hashes, dtype=np.uint64), np.array(lengths), ngram, fold)
            starts = np.concatenate([[0], np.cumsum(counts[:-1])]).astype(np.int64)
            mins = np.empty((len(counts), k), dtype=np.uint64)
            for j in range(k):
                mins[:, j] = np.minimum.reduceat(shingle * a[j] + b[j], starts)
            for band in range(BANDS):
                cols = mins[:, band * ROWS:(band + 1) * ROWS]
                keys[start:start + len(counts), band] = (cols * fold[:ROWS]).sum(axis=1, dtype=np.uint64)
    return keys


def _ngram_hashes(word_hashes: np.ndarray, lengths: np.ndarray, ngram: int,
                  fold: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Hashes of each sentence's word n-grams (flat) and the n-gram count per sentence."""
    if ngram == 1:
        return word_hashes, lengths
    ends = np.cumsum(lengths)
    keep = np.ones(len(word_hashes), dtype=bool)
    for k in range(1, ngram):
        keep[ends - k] = False  # no n-gram starts in a sentence's last n-1 words
    idx = np.flatnonzero(keep)
    out = word_hashes[idx] * fold[0]
    for k in range(1, ngram):
        out += word_hashes[idx + k] * fold[k]
    return out, lengths - ngram + 1


def near_duplicates(sentences: Sequence[str], threshold: float = THRESHOLD, ngram: int = NGRAM,
                    seed: int = 0) -> NearDuplicates:
    """Group sentences whose normalised word shingles have Jaccard similarity >= threshold (chains join groups)."""
    n = len(sentences)
    parent = list(range(n))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    if n > 1:
        keys = _band_keys(sentences, ngram, seed)
        for band in range(BANDS):
            col = keys[:, band]
            order = np.argsort(col, kind="stable")
            sorted_keys = col[order]
            same = sorted_keys[1:] == sorted_keys[:-1]
            if not same.any():
                continue
            # runs of equal keys: the LSH buckets with two or more sentences
            edges = np.flatnonzero(np.diff(np.concatenate([[0], same.astype(np.int8), [0]])))
            for lo, hi in zip(edges[::2], edges[1::2] + 1):
                _check_bucket(order[lo:hi].tolist(), find, parent, sentences, ngram, threshold)
    group = np.fromiter((find(i) for i in range(n)), dtype=np.int64, count=n)
    # the representative of a group is its first sentence, whatever union-find chose
    first = np.full(n, n, dtype=np.int64)
    np.minimum.at(first, group, np.arange(n, dtype=np.int64))
    return NearDuplicates(first[group])


def _check_bucket(members: list[int], find, parent: list[int], sentences: Sequence[str], ngram: int,
                  threshold: float) -> None:
    """Join the members of one LSH bucket that are truly near-duplicates (exact Jaccard)."""
    cache: dict[int, set[tuple[str, ...]]] = {}  # per bucket: a corpus-wide cache would hold millions of sets

    def sh(i: int) -> set[tuple[str, ...]]:
        if i not in cache:
            cache[i] = shingles(sentences[i], ngram)
        return cache[i]

    reps: list[int] = []
    for i in members:
        root = find(i)
        for r in reps:
            if find(r) == root or jaccard(sh(i), sh(r)) >= threshold:
                parent[find(r)] = root = find(i)
                break
        else:
            if len(reps) < MAX_REPS:
                reps.append(i)
