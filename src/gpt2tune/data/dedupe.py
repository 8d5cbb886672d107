"""Near-duplicate sentences: within two word edits (edits.py), or MinHash over normalised word shingles, LSH
banding and an exact Jaccard check; groups are the components.

After normalising case, punctuation and digits, two sentences are near-duplicates when one or two words inserted,
removed or replaced turn one into the other (the longer having at least 6 words), when they have the same words,
or when the Jaccard similarity of their word shingle sets is at least `threshold` (what groups long sentences
that differ in a few more words); a group is the sentences linked by chains of such pairs. Everything runs on
integer arrays, a chunk of sentences at a time: a chunk is normalised by three
regular-expression passes over its joined text (not one call per sentence), each distinct word gets an integer
id, a shingle is its word ids packed into one exact 64-bit code, MinHash is one numpy pass per hash function,
and the candidate pairs from the LSH buckets are confirmed with the exact Jaccard similarity of the shingle codes,
all pairs of a round at once (a sort of their codes). Groups are the connected components of confirmed pairs.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np

from gpt2tune.data.edits import mix, pairs_within_two_edits
from gpt2tune.data.shingling import CHUNK, NGRAM, Shingles, code_capacity, sentence_chunks, shingle_codes, unique_sorted
from gpt2tune.data.workers import cores

THRESHOLD = 0.8
BANDS, ROWS = 8, 4  # 32 hash functions; P(candidate) = 1-(1-J^4)^8: 0.985 at J = 0.8, 0.9996 at J = 0.9
MAX_REPS = 8  # rounds of representatives per LSH bucket for the exact check
PAIRS = 1 << 18  # candidate pairs per exact check (bounds its temporary memory)


@dataclass
class NearDuplicates:
    """Group of each sentence: group[i] is the index of its group's first sentence (itself when alone)."""

    group: np.ndarray  # (N,) int64

    @property
    def groups(self) -> int:
        """Groups with two or more sentences."""
        return int((np.bincount(self.group) > 1).sum())

    @property
    def grouped(self) -> int:
        """Sentences in groups of two or more."""
        counts = np.bincount(self.group)
        return int(counts[counts > 1].sum())

    def members(self, limit: int | None = None) -> list[list[int]]:
        """Groups of two or more as lists of sentence indices, largest first (then by first index)."""
        counts = np.bincount(self.group, minlength=len(self.group))
        many = counts[self.group] > 1  # only sentences in groups: a list per group, never one per sentence
        idx = np.flatnonzero(many)
        order = idx[np.argsort(self.group[idx], kind="stable")]
        cuts = np.flatnonzero(np.diff(self.group[order])) + 1
        out = [m.tolist() for m in np.split(order, cuts)] if len(order) else []
        out.sort(key=lambda m: (-len(m), m[0]))
        return out[:limit] if limit is not None else out


def band_keys(sh: Shingles, seed: int = 0) -> np.ndarray:
    """(N, BANDS) uint64: each band's ROWS MinHash values folded into one bucket key.

    MinHash j of a sentence is the least of a_j x h + b_j (mod 2^64) over its shingles' mixed codes h."""
    rng = np.random.default_rng(seed)
    k = BANDS * ROWS
    a = rng.integers(1, 2**63, size=k, dtype=np.uint64) * np.uint64(2) + np.uint64(1)  # odd multipliers
    b = rng.integers(0, 2**63, size=k, dtype=np.uint64)
    fold = rng.integers(1, 2**63, size=ROWS, dtype=np.uint64) * np.uint64(2) + np.uint64(1)
    n = len(sh.offsets) - 1
    keys = np.empty((n, BANDS), dtype=np.uint64)

    def one_chunk(s0: int) -> None:
        s1 = min(s0 + CHUNK, n)
        lo = sh.offsets[s0]
        with np.errstate(over="ignore"):  # arithmetic modulo 2^64 is the hash function
            x = mix(sh.codes[lo:sh.offsets[s1]])
            h = np.empty_like(x)
            starts = sh.offsets[s0:s1] - lo  # every sentence has at least one shingle
            mins = np.empty((s1 - s0, k), dtype=np.uint64)
            for j in range(k):
                np.multiply(x, a[j], out=h)
                h += b[j]
                mins[:, j] = np.minimum.reduceat(h, starts)
            for band in range(BANDS):
                keys[s0:s1, band] = (mins[:, band * ROWS:(band + 1) * ROWS] * fold).sum(axis=1, dtype=np.uint64)

    with ThreadPoolExecutor(cores()) as pool:  # numpy lets go of the GIL in these loops: threads use all cores
        list(pool.map(one_chunk, range(0, n, CHUNK)))
    return keys


def near_duplicates(sentences: Sequence[str] | None = None, threshold: float = THRESHOLD, ngram: int = NGRAM,
                    seed: int = 0, chunks: Iterable[str] | None = None, capacity: int | None = None
                    ) -> NearDuplicates:
    """Group sentences within two word edits (the longer of >= 6 words) or with the same normalised words, or whose
    normalised word shingles have Jaccard similarity >= threshold (chains join groups).

    Give the sentences, or `chunks` of them joined by line breaks (no per-sentence string needed) and an upper
    bound on their shingle count (code_capacity).
    """
    if capacity is None:
        capacity = code_capacity(sum(map(len, sentences)), len(sentences)) if sentences is not None else 1 << 20
    sh = shingle_codes(sentence_chunks(sentences) if chunks is None else chunks, ngram, capacity=capacity)
    n = len(sh.offsets) - 1
    if sentences is not None and n != len(sentences):
        raise ValueError(f"{n} sentences shingled, {len(sentences)} given")
    if n < 2:
        return NearDuplicates(np.arange(n, dtype=np.int64))
    bucket, member = _buckets(band_keys(sh, seed))
    similar = _confirmed_pairs(sh, bucket, member, threshold)
    del bucket, member
    words, word_offsets = sh.words, sh.word_offsets
    del sh  # the shingle codes are done with: their memory is free for the word edits
    edits = pairs_within_two_edits(words, word_offsets)
    return NearDuplicates(components(n, np.concatenate([similar, edits], axis=1)))


def _buckets(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The LSH buckets of two or more sentences, over all bands: (bucket id, sentence), by bucket then sentence."""
    n = keys.shape[0]
    index_bits = max(n - 1, 1).bit_length()
    low = np.uint64((1 << index_bits) - 1)
    buckets, members, base = [], [], 0
    for band in range(keys.shape[1]):
        # one sort of (key, sentence) packed in 64 bits: the key loses its low bits, so two buckets may
        # merge (a few extra candidates, each checked exactly), and each bucket's sentences come out in order
        packed = np.sort((keys[:, band] & ~low) | np.arange(n, dtype=np.uint64))
        key = packed >> np.uint64(index_bits)
        new = np.ones(n, bool)
        new[1:] = key[1:] != key[:-1]
        bid = np.cumsum(new) - 1
        size = np.bincount(bid)
        keep = size[bid] > 1
        buckets.append((bid[keep] + base).astype(np.int32 if base + len(size) < 2**31 else np.int64))
        members.append((packed[keep] & low).astype(np.int32 if n < 2**31 else np.int64))
        base += len(size)
    return np.concatenate(buckets), np.concatenate(members)  # 32-bit: 8 bands x N entries at most


def _confirmed_pairs(sh: Shingles, bucket: np.ndarray, member: np.ndarray, threshold: float) -> np.ndarray:
    """Pairs (2, E) of bucket members with Jaccard >= threshold, found in rounds of representatives.

    Round r compares every remaining member of a bucket with its first remaining member (the representative);
    a member that matches it, or is already in its group through pairs found before, leaves the bucket, the
    representative leaves, the rest go on to the next round (at most MAX_REPS rounds).
    """
    n = len(sh.offsets) - 1
    sizes = sh.sizes()
    found: list[np.ndarray] = []
    label = np.arange(n, dtype=np.int64)
    for _ in range(MAX_REPS):
        if len(bucket) < 2:
            break
        first = np.ones(len(bucket), bool)
        first[1:] = bucket[1:] != bucket[:-1]
        rep = member[np.flatnonzero(first)[np.cumsum(first) - 1]][~first]
        other = member[~first]
        u, v = np.minimum(rep, other), np.maximum(rep, other)
        del rep, other
        pair = u.astype(np.int64) * n + v
        joined = label[u] == label[v]
        # a pair can only reach the threshold if the smaller set is at least threshold x the larger
        small, large = np.minimum(sizes[u], sizes[v]), np.maximum(sizes[u], sizes[v])
        todo = unique_sorted(pair[~joined & (small >= threshold * large - 1e-9)])
        ok = todo[jaccard_at_least(sh, todo // n, todo % n, threshold)]
        found.append(ok)
        at = np.minimum(np.searchsorted(ok, pair), max(len(ok) - 1, 0))
        matched = joined | (ok[at] == pair) if len(ok) else joined
        stay = ~first
        stay[~first] = ~matched
        bucket, member = bucket[stay], member[stay]
        if len(bucket):  # buckets left with one member are done
            new = np.flatnonzero(np.concatenate([[True], bucket[1:] != bucket[:-1], [True]]))
            counts = np.diff(new)
            keep = np.repeat(counts > 1, counts)
            bucket, member = bucket[keep], member[keep]
        if len(ok):
            label = components(n, np.stack([ok // n, ok % n]), label)
    pairs = unique_sorted(np.concatenate(found)) if found else np.zeros(0, np.int64)
    return np.stack([pairs // n, pairs % n])


def jaccard_at_least(sh: Shingles, u: np.ndarray, v: np.ndarray, threshold: float) -> np.ndarray:
    """For each pair (u[i], v[i]), whether the exact Jaccard similarity of their shingle sets is >= threshold."""
    out = np.zeros(len(u), bool)
    sizes = sh.sizes()
    code_bits = len(sh.codes) and max(int(sh.codes.max()).bit_length(), 1)
    step = PAIRS if code_bits + PAIRS.bit_length() <= 64 else 1 << max(64 - code_bits, 1)
    for a in range(0, len(u), step):
        pu, pv = u[a:a + step], v[a:a + step]
        local = np.arange(len(pu), dtype=np.uint64) << np.uint64(code_bits)
        keys = np.concatenate([_gather(sh, pu, local), _gather(sh, pv, local)])
        keys.sort(kind="stable")  # two sorted runs (the u codes, the v codes): a merge
        same = keys[1:] == keys[:-1]  # each set is distinct codes, so an equal pair is one shared shingle
        inter = np.bincount((keys[1:][same] >> np.uint64(code_bits)).astype(np.int64), minlength=len(pu))
        union = sizes[pu] + sizes[pv] - inter
        out[a:a + step] = inter >= threshold * union - 1e-9
    return out


def _gather(sh: Shingles, idx: np.ndarray, tag: np.ndarray) -> np.ndarray:
    """The codes of sentences idx, each ORed with its pair's tag (flat)."""
    lo, count = sh.offsets[idx], sh.sizes()[idx]
    pos = np.repeat(lo - np.cumsum(count) + count, count) + np.arange(int(count.sum()))
    return sh.codes[pos] | np.repeat(tag, count)


def components(n: int, edges: np.ndarray, label: np.ndarray | None = None) -> np.ndarray:
    """Each node's component, named by its smallest node (min-label propagation with pointer jumping); `label`:
    the components of earlier edges, to add these to."""
    label = np.arange(n, dtype=np.int64) if label is None else label.copy()
    if edges.shape[1] == 0:
        return label
    u, v = edges
    while True:
        m = np.minimum(label[u], label[v])
        before = label.copy()
        np.minimum.at(label, u, m)
        np.minimum.at(label, v, m)
        while not np.array_equal(label, label[label]):  # jump: a node takes its label's label
            label = label[label]
        if np.array_equal(label, before):
            return label
