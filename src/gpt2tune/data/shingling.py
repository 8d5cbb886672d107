"""Word shingles of sentences as integer codes: normalised words (whitespace-separated tokens case folded, their
punctuation deleted, digit runs as 0), each distinct word an integer id, each word n-gram packed into one exact 64-bit code, a chunk of
sentences at a time (one regular-expression pass over a chunk's joined text, on all cores); and each sentence's
words as those ids. What dedupe.py hashes and compares; `words`, `shingles` and `jaccard` are the plain-Python
definitions the tests check it by.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from typing import Iterable, Iterator, Sequence

import numpy as np

from gpt2tune.data.encode import text_chunks
from gpt2tune.data.workers import ordered_map

NGRAM = 2  # word bigrams: word sets (n = 1) make most sentences share their function words, so LSH buckets
# fill with unrelated pairs (26x more exact checks on the Japan corpus); bigrams keep order, which is the point
CHUNK = 65_536  # sentences per vectorised pass (bounds temporary memory)
_DIGITS = re.compile(r"\d+")
_NOT_WORD = re.compile(r"[\W_]+")
_TOKEN_OR_LINE = re.compile(r"[^\s]+|\n")
NEWLINE, PAD = 0, 1  # word ids: the line break between sentences, and the pad of a sentence shorter than n


def normalise(token: str) -> str:
    """One whitespace-separated token as a word: case folded, punctuation dropped (so `pens—steel` and
    `penssteel` are one word), every digit run as 0; "" for punctuation alone."""
    return _DIGITS.sub("0", _NOT_WORD.sub("", token.casefold()))


def words(sentence: str) -> list[str]:
    """The normalised words of a sentence: its whitespace-separated tokens normalised, empty ones left out."""
    return [w for w in map(normalise, sentence.split()) if w]


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
class Shingles:
    """Each sentence's distinct shingles as sorted exact codes: codes[offsets[i]:offsets[i + 1]]; and its
    normalised words as integer ids, in order: words[word_offsets[i]:word_offsets[i + 1]]."""

    codes: np.ndarray  # uint64: the n word ids of a shingle, `bits` bits each
    offsets: np.ndarray  # (N + 1,) int64
    bits: int
    words: np.ndarray  # uint32: a word's id (equal ids for equal normalised words)
    word_offsets: np.ndarray  # (N + 1,) int64

    def sizes(self) -> np.ndarray:
        return np.diff(self.offsets)


def sentence_chunks(sentences: Sequence[str], size: int = CHUNK) -> Iterator[str]:
    """Sentences joined by line breaks, `size` at a time (what near_duplicates reads)."""
    return text_chunks(sentences, size=sys.maxsize, max_lines=size)


class _Vocab(dict):
    """normalised word -> integer id, in order of first occurrence (the same in every process)."""

    def __missing__(self, word: str) -> int:
        i = self[word] = len(self)
        return i


class _Written(dict):
    """a token as written -> the id of its normalised word (PAD for none): each distinct token normalised once."""

    def __init__(self, vocab: _Vocab):
        super().__init__({"\n": NEWLINE})
        self.vocab = vocab

    def __missing__(self, token: str) -> int:
        i = self[token] = self.vocab[normalise(token)]
        return i


def shingle_codes(chunks: Iterable[str], ngram: int = NGRAM, workers: int | None = None,
                  capacity: int = 1 << 20) -> Shingles:
    """The shingle codes of every sentence in chunks of line-separated sentences (each chunk: whole sentences),
    the chunks' words found on `workers` processes (default: all cores). `capacity`: an upper bound on the
    number of codes (see code_capacity), so they are written in place, never copied into a bigger array."""
    vocab = _Vocab({"\n": NEWLINE, "": PAD})
    codes = np.empty(capacity, np.uint64)  # memory is taken only as it is written
    words_out = np.empty(capacity, np.uint32)  # the same bound holds for words
    sizes, widths, ends, lengths = [], [], [], []
    at = w_at = 0
    for words, local in ordered_map(_chunk_words, chunks, workers):  # the regex work on all cores
        # the chunk's words in order of first occurrence: global ids in order of first occurrence in the corpus
        ids = np.fromiter(map(vocab.__getitem__, words), np.uint64, len(words))[local]
        widths.append(max((len(vocab) - 1).bit_length(), 1))
        if widths[-1] * ngram > 64:
            raise ValueError(f"{len(vocab):,} distinct words do not fit exact {ngram}-gram codes")
        part, count, n_words = _chunk_codes(ids, ngram, widths[-1])
        said = ids[ids != NEWLINE].astype(np.uint32)
        if w_at + len(said) > len(words_out):
            words_out = np.resize(words_out, max(2 * len(words_out), w_at + len(said)))
        words_out[w_at:w_at + len(said)] = said
        w_at += len(said)
        lengths.append(n_words)
        if at + len(part) > len(codes):  # the bound was too low: grow (a copy)
            codes = np.resize(codes, max(2 * len(codes), at + len(part)))
        codes[at:at + len(part)] = part
        at += len(part)
        ends.append(at)
        sizes.append(count)
    counts = np.concatenate(sizes) if sizes else np.zeros(0, np.int64)
    offsets = np.zeros(len(counts) + 1, np.int64)
    np.cumsum(counts, out=offsets[1:])
    word_offsets = np.zeros(len(counts) + 1, np.int64)
    np.cumsum(np.concatenate(lengths) if lengths else np.zeros(0, np.int64), out=word_offsets[1:])
    bits = max(widths, default=1)  # every chunk's codes with the final width: each sentence's order is kept
    for a, b, w in zip([0] + ends[:-1], ends, widths):
        codes[a:b] = _widen(codes[a:b], w, bits, ngram)
    return Shingles(codes[:at], offsets, bits, words_out[:w_at], word_offsets)


def code_capacity(characters: int, sentences: int) -> int:
    """At most this many shingle codes for sentences of this many characters (or UTF-8 bytes) in all: a sentence
    of c characters has at most (c + 1) / 2 words, so at most that many shingles, and at least one."""
    return (characters + sentences) // 2 + sentences + 1


def _chunk_words(text: str) -> tuple[list[str], np.ndarray]:
    """The distinct normalised words of a chunk in order of first occurrence, and each word (or line break) of
    the chunk as its index in that list."""
    vocab = _Vocab({"\n": NEWLINE, "": PAD})
    tokens = _TOKEN_OR_LINE.findall(text)
    ids = np.fromiter(map(_Written(vocab).__getitem__, tokens), np.uint32, len(tokens))
    return list(vocab), ids[ids != PAD]  # a token of punctuation alone is no word


def _widen(codes: np.ndarray, width: int, bits: int, ngram: int) -> np.ndarray:
    """Codes of `width` bits a word repacked with `bits` bits a word."""
    if width == bits:
        return codes
    out = np.zeros(len(codes), np.uint64)
    for k in range(ngram - 1, -1, -1):
        out = (out << np.uint64(bits)) | ((codes >> np.uint64(width * k)) & np.uint64((1 << width) - 1))
    return out


def _chunk_codes(ids: np.ndarray, ngram: int, bits: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sorted distinct shingle codes of one chunk's sentences (ids: word ids, NEWLINE between sentences), how many
    each sentence has, and how many words."""
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
        keys = unique_sorted((owner.astype(np.uint64) << np.uint64(code_bits)) | codes)
        owner = (keys >> np.uint64(code_bits)).astype(np.int64)
        codes = keys & np.uint64((1 << code_bits) - 1) if code_bits < 64 else keys
    else:
        order = np.lexsort((codes, owner))
        codes, owner = codes[order], owner[order]
        keep = np.ones(len(codes), bool)
        keep[1:] = (codes[1:] != codes[:-1]) | (owner[1:] != owner[:-1])
        codes, owner = codes[keep], owner[keep]
    return codes, np.bincount(owner, minlength=len(count)), n_words


def unique_sorted(x: np.ndarray) -> np.ndarray:
    """Sorted distinct values (a sort: numpy's hash-based np.unique is several times slower on 64-bit keys)."""
    x = np.sort(x)
    keep = np.ones(len(x), bool)
    keep[1:] = x[1:] != x[:-1]
    return x[keep]
