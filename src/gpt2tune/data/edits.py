"""Sentences within two word edits: the pairs of sentences, given as normalised word ids, that one or two words
inserted, removed or replaced turn into each other (Levenshtein distance over words <= 2), the longer one having
at least MIN_WORDS words; and sentences with the same words, at any length. Exact: every such pair is found, and
every pair found is checked word by word.

Candidates come from keys that two such sentences must share, all on integer arrays:
- sentences of at most SHORT words, by their deletion variants: the sentence with 0, 1 or 2 of its words left out
  (4 words or more left). Two sentences within two edits have a common variant (a replaced word is left out of
  both, an inserted one out of the longer), and a variant of 4 or more words is shared by few others;
- longer ones by segments: a sentence of T words is cut into three segments (T // 3, the rest, T // 3 words); two
  edits touch at most two of them, so one of them is whole in the other sentence: the first at its start, the
  last at its end, or the middle one shifted by at most one word (then the first and the last hold one edit each).
  Each sentence of T words keys its three segments, and looks up the segments that a sentence of T, T + 1 or T + 2
  words would key. Segments of 3 or more words are rare enough that a key seldom holds unrelated sentences
  (segments of 2 words, "in the", would: hence the variants for short sentences).
A sentence with the same words as an earlier one takes part only through that one (the pair is kept).
Every candidate pair is filtered by a 64-bit sketch of the two word sets (two edits change at most four words,
so at most four bits differ) and then checked exactly (`at_most_two_edits`); `word_edits` is the plain
definition that the tests check it by.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from itertools import combinations

import numpy as np

from gpt2tune.data.workers import cores

EDITS = 2  # words inserted, removed or replaced
MIN_WORDS = 6  # the longer sentence of a pair has at least this many words
SHORT = 8  # sentences of at most this many words meet their partners by deletion variants, longer ones by segments
VARIANT = 4  # words a deletion variant keeps at least (MIN_WORDS - EDITS)
CHUNK = 65_536  # sentences per vectorised pass (bounds temporary memory)
PAIRS = 1 << 20  # candidate pairs per pass
WORDS = 1 << 20  # words of the first sentences of the pairs checked in one exact pass
_P = 0x9E3779B97F4A7C15  # the hash polynomial's base: odd, so it has an inverse modulo 2^64
_Q = pow(_P, -1, 1 << 64)
_SALT = np.uint64(0xD6E8FEB86659FD93)


def word_edits(a: Sequence, b: Sequence) -> int:
    """Levenshtein distance between two sequences of words (insert, remove, replace one word: 1 each)."""
    row = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        prev, row[0] = row[0], i
        for j, y in enumerate(b, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (x != y))
    return row[-1]


def mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: spreads every bit of a 64-bit code over the whole hash (arithmetic modulo 2^64)."""
    x = x ^ (x >> np.uint64(30))
    x = x * np.uint64(0xBF58476D1CE4E5B9)
    x ^= x >> np.uint64(27)
    x *= np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def _word_hashes(words: np.ndarray) -> np.ndarray:
    """Fibonacci hashing (one multiplication): the top bits are spread well enough for the sketches, and the
    polynomial keys are mixed after (`_key`); a collision only costs a candidate, which is checked."""
    return (words.astype(np.uint64) + np.uint64(1)) * np.uint64(0x9E3779B97F4A7C15)


def _powers(base: int, n: int) -> np.ndarray:
    """base^0 .. base^(n-1) modulo 2^64."""
    out = np.ones(max(n, 1), np.uint64)
    if n > 1:
        np.cumprod(np.full(n - 1, base, np.uint64), out=out[1:])
    return out


def pairs_within_two_edits(words: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Pairs (2, E), u < v, whose components are those of all pairs within two word edits (the longer with >=
    MIN_WORDS words) or with the same words: every such pair of sentences whose words differ, and each sentence
    with the first one that has the same words. Sentence i is words[offsets[i]:offsets[i + 1]] (integer ids)."""
    lengths = np.diff(offsets)
    n = len(lengths)
    with np.errstate(over="ignore"):  # arithmetic modulo 2^64 is the hash function
        sketch = _sketches(words, offsets)
        same = _same_words(words, offsets)  # one sentence stands for all with the same words
        other = np.flatnonzero(same != np.arange(n))
        if len(other):  # equal hashes, checked: a sentence whose words differ stands for itself
            wrong = other[~at_most_two_edits(words, offsets, same[other], other)[1]]
            same[wrong] = wrong
        lead = same == np.arange(n)
        found = [same[~lead] * n + np.flatnonzero(~lead)]  # a pair u < v as one integer u * n + v

        def close(u: np.ndarray, v: np.ndarray) -> np.ndarray:
            keep = (u != v) & (np.bitwise_count(sketch[u] ^ sketch[v]) <= 2 * EDITS)
            u, v = u[keep].astype(np.int64), v[keep].astype(np.int64)
            return np.minimum(u, v) * n + np.maximum(u, v)

        found += [close(*job()) for job in _variant_jobs(words, offsets, lengths, lead)]  # one at a time: memory
        with ThreadPoolExecutor(cores()) as pool:  # numpy lets go of the GIL in these loops
            found += pool.map(lambda job: np.concatenate([np.zeros(0, np.int64)] + [close(u, v) for u, v in job()]),
                              _segment_jobs(words, offsets, lengths, lead))
    code = _unique(found)
    kept = []
    for a, b in _chunks(len(code), PAIRS):  # checked a batch at a time: bounded memory
        u, v = code[a:b] // n, code[a:b] % n
        ok, identical = at_most_two_edits(words, offsets, u, v)
        kept.append(code[a:b][ok & ((np.maximum(lengths[u], lengths[v]) >= MIN_WORDS) | identical)])
    code = np.concatenate([np.zeros(0, np.int64)] + kept)
    return np.stack([code // n, code % n])


def _unique(found: list[np.ndarray]) -> np.ndarray:
    """The distinct values of the arrays, sorted (the list is emptied: its memory goes as the result comes)."""
    code = np.concatenate(found)
    found.clear()
    code.sort()
    keep = np.ones(len(code), bool)
    keep[1:] = code[1:] != code[:-1]
    return code[keep]


def _sketches(words: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Each sentence's word set in 64 bits (one bit for each word); 0 for a sentence without words."""
    out = np.zeros(len(offsets) - 1, np.uint64)
    has = np.flatnonzero(np.diff(offsets) > 0)
    if len(has):
        bits = np.left_shift(np.uint64(1), _word_hashes(words) >> np.uint64(58))
        out[has] = np.bitwise_or.reduceat(bits, offsets[has])
    return out


def _same_words(words: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """For each sentence, the first sentence with the same words, by a 64-bit hash of them (to be checked)."""
    n = len(offsets) - 1
    full = np.empty(n, np.uint64)
    for a, b in _chunks(n):
        g, lo, pw = _prefix_hashes(words, offsets, a, b)
        size = np.diff(offsets[a:b + 1])
        full[a:b] = mix(_hash_of(g, pw, lo, 0, size) + size.astype(np.uint64) * _SALT)
    order = np.argsort(full, kind="stable")
    first = np.ones(n, bool)
    first[1:] = full[order][1:] != full[order][:-1]
    out = np.empty(n, np.int64)
    out[order] = order[np.flatnonzero(first)[np.cumsum(first) - 1]]
    return out


def _chunks(n: int, size: int = CHUNK) -> Iterator[tuple[int, int]]:
    for a in range(0, n, size):
        yield a, min(a + size, n)


def _prefix_hashes(words: np.ndarray, offsets: np.ndarray, a: int, b: int
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For sentences a to b: prefix sums g of h_k Q^k (h_k: the hash of a sentence's k-th word), each sentence's
    start in g, and the powers of P (see _hash_of)."""
    base = int(offsets[a])
    lo = offsets[a:b] - base
    sizes = np.diff(offsets[a:b + 1])
    longest = int(sizes.max(initial=0)) + 1
    place = np.arange(int(offsets[b]) - base) - np.repeat(lo, sizes)
    g = np.zeros(len(place) + 1, np.uint64)
    np.cumsum(_word_hashes(words[base:int(offsets[b])]) * _powers(_Q, longest)[place], out=g[1:])
    return g, lo, _powers(_P, longest)


def _hash_of(g: np.ndarray, pw: np.ndarray, lo, i, j) -> np.ndarray:
    """The hash sum h_k P^(j - 1 - k) over words i <= k < j of sentences starting at lo in g (0 if empty):
    (g[lo + j] - g[lo + i]) holds sum h_k Q^k, and P^(j - 1) Q^k = P^(j - 1 - k)."""
    return (g[lo + j] - g[lo + i]) * pw[np.maximum(np.asarray(j) - 1, 0)]


def _key(h: np.ndarray, tag) -> np.ndarray:
    return mix(h + np.asarray(tag, np.uint64) * _SALT)


# ------------------------------------------------------------------------------------------ deletion variants

def _variant_jobs(words: np.ndarray, offsets: np.ndarray, lengths: np.ndarray, lead: np.ndarray
                  ) -> Iterator[Callable[[], tuple[np.ndarray, np.ndarray]]]:
    """Per variant length V: the pairs of sentences (V to V + 2 words) that share a variant of V words."""
    bits = max(len(lengths) - 1, 1).bit_length()
    for v in range(VARIANT, SHORT + 1):
        yield lambda v=v: _pairs_sharing(_variants(words, offsets, lengths, lead, v, bits), bits)


def _variants(words: np.ndarray, offsets: np.ndarray, lengths: np.ndarray, lead: np.ndarray, v: int, bits: int
              ) -> np.ndarray:
    """The keys of the variants of V words of the sentences of V to V + 2 words, each with its low `bits` bits
    replaced by its sentence, sorted (two keys may merge: every pair is checked later anyway)."""
    low = np.uint64((1 << bits) - 1)
    sources = []
    for length in range(v, min(v + EDITS, SHORT) + 1):
        coef = []  # each variant as coefficients P^(V - 1 - rank) of the words it keeps, 0 for those left out
        for out in combinations(range(length), length - v):
            row = np.zeros(length, np.uint64)
            row[[k for k in range(length) if k not in out]] = _powers(_P, v)[::-1]
            coef.append(row)
        sources.append((length, np.flatnonzero((lengths == length) & lead), np.array(coef)))
    packed = np.empty(sum(len(idx) * len(coef) for _, idx, coef in sources), np.uint64)
    at = 0
    for length, idx, coef in sources:
        for a, b in _chunks(len(idx), CHUNK // len(coef) + 1):  # bounded temporaries
            h = _word_hashes(words[offsets[idx[a:b]][:, None] + np.arange(length)])  # (sentences, length)
            keys = _key(h @ coef.T, v)  # (sentences, variants)
            keys &= ~low
            keys |= idx[a:b, None].astype(np.uint64)
            packed[at:at + keys.size] = keys.ravel()
            at += keys.size
    packed.sort()
    return packed


def _pairs_sharing(packed: np.ndarray, bits: int) -> tuple[np.ndarray, np.ndarray]:
    """All pairs of sentences whose sorted packed keys (see _variants) are equal but for the sentence."""
    low = np.uint64((1 << bits) - 1)
    equal = (packed[1:] ^ packed[:-1]) <= low
    shared = np.zeros(len(packed), bool)
    shared[1:] = equal
    shared[:-1] |= equal
    packed = packed[shared]  # the keys of two or more sentences: a small part
    if not len(packed):
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    member = (packed & low).astype(np.int64)
    new = np.ones(len(packed), bool)
    new[1:] = (packed[1:] ^ packed[:-1]) > low
    end = np.flatnonzero(np.concatenate([new[1:], [True]])) + 1
    run_end = np.repeat(end, np.diff(np.concatenate([[0], end])))
    later = run_end - np.arange(len(packed)) - 1  # the members after each one in its run
    first = np.repeat(np.arange(len(packed)), later)
    second = first + 1 + np.arange(len(first)) - np.repeat(np.cumsum(later) - later, later)
    return member[first], member[second]


# ------------------------------------------------------------------------------------------------- segments

def _cuts(t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Where a sentence of t words is cut into three segments: after t // 3 words and before the last t // 3."""
    return t // 3, t - t // 3


def _segment_jobs(words: np.ndarray, offsets: np.ndarray, lengths: np.ndarray, lead: np.ndarray
                  ) -> Iterator[Callable[[], Iterator[tuple[np.ndarray, np.ndarray]]]]:
    """Per chunk of sentences: the pairs of a sentence (looking up) and a sentence of T words (keyed) that share
    one of the latter's segments where an edit distance of two allows it."""
    n = len(lengths)
    table = np.zeros(0, np.uint64)
    bits = max(n - 1, 1).bit_length()
    low = np.uint64((1 << bits) - 1)
    parts = []
    for a, b in _chunks(n):
        g, lo, pw = _prefix_hashes(words, offsets, a, b)
        t = lengths[a:b]
        at = np.flatnonzero((t > SHORT) & lead[a:b])
        one, two = _cuts(t[at])
        lo, t = lo[at], t[at]
        for kind, (i, j) in enumerate([(0, one), (one, two), (two, t)]):
            parts.append((_key(_hash_of(g, pw, lo, i, j), t * 4 + kind) & ~low) | (at + a).astype(np.uint64))
    table = np.sort(np.concatenate(parts)) if parts else table
    for a, b in _chunks(n):
        yield lambda a=a, b=b: _look_up(words, offsets, lengths, lead, table, bits, a, b)


def _look_up(words: np.ndarray, offsets: np.ndarray, lengths: np.ndarray, lead: np.ndarray, table: np.ndarray,
             bits: int, a: int, b: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """The pairs of sentences a to b and the keyed sentences whose segment they hold where it would be."""
    g, lo, pw = _prefix_hashes(words, offsets, a, b)
    size = lengths[a:b]
    keys, who = [], []
    for extra in range(EDITS + 1):  # a sentence of size words, keyed as T = size + extra
        at = np.flatnonzero((size + extra > SHORT) & lead[a:b])
        s, l0, t = size[at], lo[at], size[at] + extra
        one, two = _cuts(t)
        looks = [(0, 0, one), (2, s - (t - two), s)]  # first segment at the start, last at the end
        looks += [(1, one + shift, two + shift) for shift in range(-1, 2 - extra)]  # the middle, shifted
        for kind, i, j in looks:
            keys.append(_key(_hash_of(g, pw, l0, i, j), t * 4 + kind))
            who.append(at + a)
    if not keys:
        return
    low = np.uint64((1 << bits) - 1)
    packed = np.sort((np.concatenate(keys) & ~low) | np.concatenate(who).astype(np.uint64))  # sorted: look-ups
    key = packed & ~low  # in order are several times faster (the table's part in the cache)
    first = np.searchsorted(table, key, "left")
    count = np.searchsorted(table, key | low, "right") - first
    hit = np.flatnonzero(count)
    first, count, who_ = first[hit], count[hit], (packed[hit] & low).astype(np.int64)
    ends = np.cumsum(count)
    x = 0
    while x < len(hit):  # about PAIRS pairs at a time
        y = max(int(np.searchsorted(ends, ends[x] - count[x] + PAIRS, "right")), x + 1)
        c = count[x:y]
        pos = np.repeat(first[x:y] - (np.cumsum(c) - c), c) + np.arange(int(c.sum()))
        yield np.repeat(who_[x:y], c), (table[pos] & low).astype(np.int64)
        x = y

# --------------------------------------------------------------------------------------------- exact check

def at_most_two_edits(words: np.ndarray, offsets: np.ndarray, u: np.ndarray, v: np.ndarray
                      ) -> tuple[np.ndarray, np.ndarray]:
    """For each pair (u[i], v[i]): whether the sentences are within two word edits, and whether their words are
    the same."""
    ok, same = np.zeros(len(u), bool), np.zeros(len(u), bool)
    size = np.diff(offsets)[u]
    ends = np.cumsum(size)
    a = 0
    while a < len(u):
        b = max(int(np.searchsorted(ends, ends[a] - size[a] + WORDS, "right")), a + 1)
        ok[a:b], same[a:b] = _two_edits(words, offsets, u[a:b], v[a:b])
        a = b
    return ok, same


def _two_edits(words: np.ndarray, offsets: np.ndarray, u: np.ndarray, v: np.ndarray
               ) -> tuple[np.ndarray, np.ndarray]:
    """One batch of at_most_two_edits: each pair's words compared at shifts -2 to 2, all pairs at once.

    After the common start of p words, the first edit is at word p: a replaced word, one left out of the first
    sentence or one put in the second; what follows is then within one edit, which holds when the common start
    and the common end of the rest cover all of the longer rest but one word."""
    la, lb = np.diff(offsets)[u], np.diff(offsets)[v]
    pair = np.repeat(np.arange(len(u)), la)
    start = np.cumsum(la) - la
    j = np.arange(len(pair)) - start[pair]
    mine = words[offsets[u][pair] + j]
    has = np.flatnonzero(la > 0)
    last = max(len(words) - 1, 0)

    def equal(shift) -> np.ndarray:  # word j of the first sentence is word j + shift of the second
        k = j + np.asarray(shift)[pair] if np.ndim(shift) else j + shift
        inside = (k >= 0) & (k < lb[pair])
        return inside & (mine == words[np.minimum(offsets[v][pair] + np.clip(k, 0, None), last)])

    def first_difference(eq: np.ndarray, x: np.ndarray) -> np.ndarray:  # least j >= x where eq is False
        out = np.zeros(len(u), np.int64)
        if len(has):
            out[has] = np.minimum.reduceat(np.where(~eq & (j >= x[pair]), j, la[pair]), start[has])
        return out

    same0 = equal(0)
    p = first_difference(same0, np.zeros(len(u), np.int64))
    q = np.zeros(len(u), np.int64)  # the common end
    if len(has):
        last_diff = np.maximum.reduceat(np.where(~equal(lb - la), j, -1), start[has])
        q[has] = la[has] - 1 - last_diff
    q = np.minimum(q, np.minimum(la, lb))

    def within_one(x: np.ndarray, y: np.ndarray, eq: np.ndarray) -> np.ndarray:  # the rests from x and y
        rx, ry = la - x, lb - y
        common_start = first_difference(eq, x) - x
        fits = (rx >= 0) & (ry >= 0) & (np.abs(rx - ry) <= 1)
        return fits & (common_start + np.minimum(q, np.minimum(rx, ry)) >= np.maximum(rx, ry) - 1)

    zero = np.zeros(len(u), np.int64)
    ok = (np.abs(la - lb) <= EDITS) & (within_one(zero, zero, same0) | within_one(p + 1, p + 1, same0)
                                      | within_one(p + 1, p, equal(-1)) | within_one(p, p + 1, equal(1)))
    return ok, (la == lb) & (p == la)
