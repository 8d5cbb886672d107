"""Near-duplicate sentences: MinHash over normalised word shingles, LSH banding, exact Jaccard check, components.

Two sentences are near-duplicates when the Jaccard similarity of their word shingle sets, after normalising
case, punctuation and digits, is at least `threshold`; a group is the sentences linked by chains of such
pairs. Everything runs on integer arrays, a chunk of sentences at a time: a chunk is normalised by three
regular-expression passes over its joined text (not one call per sentence), each distinct word gets an integer
id, a shingle is its word ids packed into one exact 64-bit code, MinHash is one numpy pass per hash function,
and the candidate pairs from the LSH buckets are confirmed with the exact Jaccard similarity of the shingle codes,
all pairs of a round at once (a sort of their codes). Groups are the connected components of confirmed pairs.
"""

from __future__ import annotations

import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Iterable, Iterator, Sequence

import numpy as np

from .workers import cores, ordered_map

THRESHOLD = 0.8
NGRAM = 2  # word bigrams: word sets (n = 1) make most sentences share their function words, so LSH buckets
# fill with unrelated pairs (26x more exact checks on the Japan corpus); bigrams keep order, which is the point
BANDS, ROWS = 8, 4  # 32 hash functions; P(candidate) = 1-(1-J^4)^8: 0.985 at J = 0.8, 0.9996 at J = 0.9
CHUNK = 65_536  # sentences per vectorised pass (bounds temporary memory)
MAX_REPS = 8  # rounds of representatives per LSH bucket for the exact check
PAIRS = 1 << 18  # candidate pairs per exact check (bounds its temporary memory)

_DIGITS = re.compile(r"\d+")
_WORD = re.compile(r"[^\W_]+")
_WORD_OR_LINE = re.compile(r"[^\W_]+|\n")
NEWLINE, PAD = 0, 1  # word ids: the line break between sentences, and the pad of a sentence shorter than n


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


@dataclass
class Shingles:
    """Each sentence's distinct shingles as sorted exact codes: codes[offsets[i]:offsets[i + 1]]."""

    codes: np.ndarray  # uint64: the n word ids of a shingle, `bits` bits each
    offsets: np.ndarray  # (N + 1,) int64
    bits: int

    def sizes(self) -> np.ndarray:
        return np.diff(self.offsets)


def text_chunks(sentences: Sequence[str], size: int = CHUNK) -> Iterator[str]:
    """Sentences joined by line breaks, `size` at a time (what near_duplicates reads)."""
    for a in range(0, len(sentences), size):
        part = sentences[a:a + size]
        text = "\n".join(part)
        if text.count("\n") != len(part) - 1:  # a sentence with a line break inside is one sentence here
            text = "\n".join(s.replace("\n", " ") for s in part)
        yield text


class _Vocab(dict):
    """normalised word -> integer id, in order of first occurrence (the same in every process)."""

    def __missing__(self, word: str) -> int:
        i = self[word] = len(self)
        return i


class _Written(dict):
    """a word as written -> the id of its normalised form: each distinct word is case folded once, not the text."""

    def __init__(self, vocab: _Vocab):
        super().__init__({"\n": NEWLINE})
        self.vocab = vocab

    def __missing__(self, word: str) -> int:
        i = self[word] = self.vocab[_DIGITS.sub("0", word.casefold())]
        return i


_KEEPS_CLASS: dict[str, bool] = {}  # character -> whether case folding keeps it (and what it folds to) word or not
_NON_ASCII = re.compile(r"[^\x00-\x7f]")


def _keeps_class(c: str) -> bool:
    if c not in _KEEPS_CLASS:
        word = _WORD.fullmatch(c) is not None
        _KEEPS_CLASS[c] = all((_WORD.fullmatch(x) is not None) == word for x in c.casefold())
    return _KEEPS_CLASS[c]


def _fold_odd_characters(text: str) -> str | None:
    """text in which folding each word alone gives the words of the folded text: the few characters whose case
    folding changes word and non-word characters (e.g. 'İ' -> 'i' + a combining dot) folded in place; None if one
    folds to such characters again (then the whole text is folded)."""
    if text.isascii():
        return text
    odd = [c for c in set(_NON_ASCII.findall(text)) if not _keeps_class(c)]
    if not odd:
        return text
    if not all(_keeps_class(x) for c in odd for x in c.casefold()):
        return None
    return re.sub("[" + "".join(map(re.escape, odd)) + "]", lambda m: m.group().casefold(), text)


def shingle_codes(chunks: Iterable[str], ngram: int = NGRAM, workers: int | None = None,
                  capacity: int = 1 << 20) -> Shingles:
    """The shingle codes of every sentence in chunks of line-separated sentences (each chunk: whole sentences),
    the chunks' words found on `workers` processes (default: all cores). `capacity`: an upper bound on the
    number of codes (see code_capacity), so they are written in place, never copied into a bigger array."""
    vocab = _Vocab({"\n": NEWLINE, "": PAD})
    codes = np.empty(capacity, np.uint64)  # memory is taken only as it is written
    sizes, widths, ends = [], [], []
    at = 0
    for words, local in ordered_map(_chunk_words, chunks, workers):  # the regex work on all cores
        # the chunk's words in order of first occurrence: global ids in order of first occurrence in the corpus
        ids = np.fromiter(map(vocab.__getitem__, words), np.uint64, len(words))[local]
        widths.append(max((len(vocab) - 1).bit_length(), 1))
        if widths[-1] * ngram > 64:
            raise ValueError(f"{len(vocab):,} distinct words do not fit exact {ngram}-gram codes")
        part, count = _chunk_codes(ids, ngram, widths[-1])
        if at + len(part) > len(codes):  # the bound was too low: grow (a copy)
            codes = np.resize(codes, max(2 * len(codes), at + len(part)))
        codes[at:at + len(part)] = part
        at += len(part)
        ends.append(at)
        sizes.append(count)
    counts = np.concatenate(sizes) if sizes else np.zeros(0, np.int64)
    offsets = np.zeros(len(counts) + 1, np.int64)
    np.cumsum(counts, out=offsets[1:])
    bits = max(widths, default=1)  # every chunk's codes with the final width: each sentence's order is kept
    for a, b, w in zip([0] + ends[:-1], ends, widths):
        codes[a:b] = _widen(codes[a:b], w, bits, ngram)
    return Shingles(codes[:at], offsets, bits)


def code_capacity(characters: int, sentences: int) -> int:
    """At most this many shingle codes for sentences of this many characters (or UTF-8 bytes) in all: a sentence
    of c characters has at most (c + 1) / 2 words, so at most that many shingles, and at least one."""
    return (characters + sentences) // 2 + sentences + 1


def _chunk_words(text: str) -> tuple[list[str], np.ndarray]:
    """The distinct normalised words of a chunk in order of first occurrence, and each word (or line break) of
    the chunk as its index in that list."""
    vocab = _Vocab({"\n": NEWLINE, "": PAD})
    folded = _fold_odd_characters(text)
    if folded is not None:
        tokens = _WORD_OR_LINE.findall(folded)
        written = _Written(vocab)
        ids = np.fromiter(map(written.__getitem__, tokens), np.uint32, len(tokens))
    else:
        tokens = _WORD_OR_LINE.findall(_DIGITS.sub("0", text.casefold()))
        ids = np.fromiter(map(vocab.__getitem__, tokens), np.uint32, len(tokens))
    return list(vocab), ids


def _widen(codes: np.ndarray, width: int, bits: int, ngram: int) -> np.ndarray:
    """Codes of `width` bits a word repacked with `bits` bits a word."""
    if width == bits:
        return codes
    out = np.zeros(len(codes), np.uint64)
    for k in range(ngram - 1, -1, -1):
        out = (out << np.uint64(bits)) | ((codes >> np.uint64(width * k)) & np.uint64((1 << width) - 1))
    return out


def _chunk_codes(ids: np.ndarray, ngram: int, bits: int) -> tuple[np.ndarray, np.ndarray]:
    """Sorted distinct shingle codes of one chunk's sentences (ids: word ids, NEWLINE between sentences)."""
    breaks = np.flatnonzero(ids == NEWLINE)
    starts = np.concatenate([[0], breaks + 1])
    n_words = np.concatenate([breaks, [len(ids)]]) - starts
    padded = np.maximum(n_words, ngram)  # a sentence shorter than n is one shingle, padded with PAD
    pstart = np.zeros(len(padded), np.int64)
    np.cumsum(padded[:-1], out=pstart[1:])
    flat = np.full(int(padded.sum()), PAD, np.uint64)
    word_at = np.arange(int(n_words.sum())) - np.repeat(np.cumsum(n_words) - n_words, n_words)
    flat[np.repeat(pstart, n_words) + word_at] = ids[np.repeat(starts, n_words) + word_at]
    count = padded - ngram + 1
    first = np.repeat(pstart, count) + np.arange(int(count.sum())) - np.repeat(np.cumsum(count) - count, count)
    codes = flat[first]
    for k in range(1, ngram):
        codes = (codes << np.uint64(bits)) | flat[first + k]
    owner = np.repeat(np.arange(len(count)), count)
    code_bits = bits * ngram
    if code_bits + max(len(count) - 1, 1).bit_length() <= 64:  # one sort of (sentence, code) in one integer
        keys = _unique((owner.astype(np.uint64) << np.uint64(code_bits)) | codes)
        owner = (keys >> np.uint64(code_bits)).astype(np.int64)
        codes = keys & np.uint64((1 << code_bits) - 1) if code_bits < 64 else keys
    else:
        order = np.lexsort((codes, owner))
        codes, owner = codes[order], owner[order]
        keep = np.ones(len(codes), bool)
        keep[1:] = (codes[1:] != codes[:-1]) | (owner[1:] != owner[:-1])
        codes, owner = codes[keep], owner[keep]
    return codes, np.bincount(owner, minlength=len(count))


def _unique(x: np.ndarray) -> np.ndarray:
    """Sorted distinct values (a sort: numpy's hash-based np.unique is several times slower on 64-bit keys)."""
    x = np.sort(x)
    keep = np.ones(len(x), bool)
    keep[1:] = x[1:] != x[:-1]
    return x[keep]


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: spreads every bit of a code over the whole hash (arithmetic modulo 2^64)."""
    x = x ^ (x >> np.uint64(30))
    x = x * np.uint64(0xBF58476D1CE4E5B9)
    x ^= x >> np.uint64(27)
    x *= np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


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
            x = _mix(sh.codes[lo:sh.offsets[s1]])
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
    """Group sentences whose normalised word shingles have Jaccard similarity >= threshold (chains join groups).

    Give the sentences, or `chunks` of them joined by line breaks (no per-sentence string needed) and an upper
    bound on their shingle count (code_capacity).
    """
    if capacity is None:
        capacity = code_capacity(sum(map(len, sentences)), len(sentences)) if sentences is not None else 1 << 20
    sh = shingle_codes(text_chunks(sentences) if chunks is None else chunks, ngram, capacity=capacity)
    n = len(sh.offsets) - 1
    if sentences is not None and n != len(sentences):
        raise ValueError(f"{n} sentences shingled, {len(sentences)} given")
    if n < 2:
        return NearDuplicates(np.arange(n, dtype=np.int64))
    bucket, member = _buckets(band_keys(sh, seed))
    edges = _confirmed_pairs(sh, bucket, member, threshold)
    return NearDuplicates(components(n, edges))


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
        todo = _unique(pair[~joined & (small >= threshold * large - 1e-9)])
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
    pairs = _unique(np.concatenate(found)) if found else np.zeros(0, np.int64)
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
