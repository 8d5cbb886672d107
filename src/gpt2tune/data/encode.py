"""Sentences to token ids, a chunk of lines at a time, fast and on all cores, with the same ids as the tokenizer.

A byte-level BPE tokenizer (GPT-2's and its kin) first splits text into pieces with one regular expression, then
runs BPE on each piece. On a corpus most pieces are words seen before, so `PieceEncoder` splits a whole chunk
with the same expression (Python's `regex`, several times faster here than the tokenizer's own Rust regex engine
on this pattern) and looks every piece up in a cache filled by the tokenizer's own BPE model. It is used only
where it gives exactly the tokenizer's ids:

- the tokenizer is byte-level BPE with GPT-2's split pattern, no normaliser and no prefix space;
- the chunk holds none of the tokenizer's added tokens (`<|endoftext|>`, `<sos>`...), which the tokenizer
  matches before splitting;
- every non-ASCII character of the chunk falls in the same class (letter, number, space, other) for both regular
  expression engines (their Unicode tables can differ for recently assigned characters): checked once per
  character by splitting probes with both.

Any other chunk goes through the tokenizer itself (`tokenizer(lines)`). Chunks are spread over the process's
cores with forked workers (workers.ordered_map).
"""

from __future__ import annotations

import itertools
from typing import Iterable, Iterator

import numpy as np
import regex

from gpt2tune.data.workers import ordered_map

GPT2_SPLIT = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
LINE = -1  # marks the end of a line in a chunk's flat ids
CHUNK_BYTES = 1 << 20  # text per chunk given to a worker


def _byte_chars() -> dict[int, str]:
    """GPT-2's byte -> printable character map (what ByteLevel pre-tokenization does to every byte)."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    chars, extra = {}, 0
    for b in range(256):
        if b in keep:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + extra)
            extra += 1
    return chars


_BYTE = _byte_chars()


class _Pieces(dict):
    """piece -> a piece number; the piece's token ids (from the tokenizer's BPE model on first sight) are
    tokens[start[k]:start[k] + length[k]] of the flat tables, so a chunk's ids are one numpy gather."""

    def __init__(self, model):
        super().__init__({"\n": 0})
        self.model = model
        self._tokens, self._start, self._length = [LINE], [0], [1]
        self.tables = self._arrays()

    def __missing__(self, piece: str) -> int:
        mapped = "".join(_BYTE[b] for b in piece.encode("utf-8"))
        ids = [t.id for t in self.model.tokenize(mapped)]
        self._start.append(len(self._tokens))
        self._length.append(len(ids))
        self._tokens.extend(ids)
        k = self[piece] = len(self._start) - 1
        return k

    def _arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return (np.array(self._tokens, np.int32), np.array(self._start, np.int64),
                np.array(self._length, np.int64))

    def ids(self, pieces: list[str]) -> np.ndarray:
        """The flat token ids of a list of pieces (LINE for a line break)."""
        k = np.fromiter(map(self.__getitem__, pieces), np.int64, len(pieces))
        if len(self.tables[1]) != len(self._start):  # new pieces: refresh the tables
            self.tables = self._arrays()
        tokens, start, length = self.tables
        n = length[k]
        return tokens[np.repeat(start[k] - np.cumsum(n) + n, n) + np.arange(int(n.sum()))]


class PieceEncoder:
    """Token ids of line-separated text chunks, equal to `tokenizer(lines, add_special_tokens=False)`."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        backend = getattr(tokenizer, "backend_tokenizer", None)
        self.fast = backend is not None and _plain_byte_level_bpe(backend)
        if self.fast:
            self.backend = backend
            self.pattern = regex.compile(GPT2_SPLIT)
            self.pieces = _Pieces(backend.model)
            self.added = [t.content for t in backend.get_added_tokens_decoder().values()]
            self.agree: dict[str, bool] = {}

    def encode(self, text: str) -> tuple[np.ndarray, np.ndarray]:
        """Flat int32 ids of the chunk's lines (no special tokens) and each line's token count."""
        if self.fast and self._safe(text):
            pieces = self.pattern.findall(text)
            flat = self.pieces.ids(pieces)
            ends = np.flatnonzero(flat == LINE)
            if len(ends) == text.count("\n"):  # every line break was a piece of its own
                lengths = np.diff(np.concatenate([[-1], ends, [len(flat)]])) - 1
                return flat[flat != LINE], lengths
        encoded = self.tokenizer(text.split("\n"), add_special_tokens=False)["input_ids"]
        lengths = np.fromiter(map(len, encoded), np.int64, len(encoded))
        return np.fromiter(itertools.chain.from_iterable(encoded), np.int32, int(lengths.sum())), lengths

    def _safe(self, text: str) -> bool:
        if any(a in text for a in self.added):
            return False
        if text.isascii():
            return True
        chars = set(text)
        for c in chars.difference(self.agree):
            self.agree[c] = c.isascii() or _char_class(c, self.pattern.findall) == _char_class(c, self._rust_split)
        return all(map(self.agree.__getitem__, chars))

    def _rust_split(self, s: str) -> list:
        return self.backend.pre_tokenizer.pre_tokenize_str(s)


def _plain_byte_level_bpe(backend) -> bool:
    """GPT-2's kind of tokenizer: byte-level BPE, no normalizer, no prefix space, GPT-2's split, no BPE dropout, a
    few added tokens. Read off the backend's parts: serializing it (its whole vocabulary) and parsing that back took
    0.05 s a call."""
    from tokenizers import models, pre_tokenizers

    pre, model = backend.pre_tokenizer, backend.model
    return (backend.normalizer is None and isinstance(pre, pre_tokenizers.ByteLevel) and not pre.add_prefix_space
            and pre.use_regex and isinstance(model, models.BPE) and model.dropout is None
            and len(backend.get_added_tokens_decoder()) <= 64)


def _char_class(c: str, split) -> str:
    """The class of a character for the split pattern: letter, number, other, else space."""
    for cls, probe in (("L", "a"), ("N", "1"), ("P", "#")):
        if len(split(probe + c)) == 1:
            return cls
    return "S"


def text_chunks(lines: Iterable[str], size: int = CHUNK_BYTES, max_lines: int | None = None) -> Iterator[str]:
    """Lines joined by line breaks, a chunk at about `size` characters (or `max_lines` lines, when given): what
    the tokenizing and grouping workers read. A line with a line break inside stays one line (the break becomes a
    space)."""
    chunk: list[str] = []
    n = 0
    for line in lines:
        chunk.append(line)
        n += len(line) + 1
        if n >= size or (max_lines is not None and len(chunk) >= max_lines):
            yield _joined(chunk)
            chunk, n = [], 0
    if chunk:
        yield _joined(chunk)


def _joined(lines: list[str]) -> str:
    text = "\n".join(lines)
    if text.count("\n") != len(lines) - 1:  # a line with a line break inside is one line here
        text = "\n".join(s.replace("\n", " ") for s in lines)
    return text


def file_chunks(path, size: int = CHUNK_BYTES) -> Iterator[str]:
    """A file of lines ending in a line break, as chunks of whole lines (no final line break)."""
    with open(path, "rb") as f:
        tail = b""
        while raw := f.read(size):
            raw = tail + raw
            cut = raw.rfind(b"\n") + 1
            tail = raw[cut:]
            if cut:
                yield raw[:cut - 1].decode("utf-8")
        if tail:
            yield tail.decode("utf-8")


_WORKER: PieceEncoder | None = None


def _encode_in_worker(text: str) -> tuple[np.ndarray, np.ndarray]:
    return _WORKER.encode(text)  # type: ignore[union-attr]


def encode_chunks(tokenizer, chunks: Iterable[str], workers: int | None = None
                  ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(flat ids, lengths) of each chunk in order, on `workers` processes (default: the cores this process may
    use; 1 encodes here). Chunks the fast path cannot take use the tokenizer, in the worker."""
    global _WORKER
    encoder = PieceEncoder(tokenizer)
    if not encoder.fast:  # the tokenizer's own batch encoding is parallel already
        yield from map(encoder.encode, chunks)
        return
    _WORKER = encoder  # inherited by the forked workers
    try:
        yield from ordered_map(_encode_in_worker, chunks, workers)
    finally:
        _WORKER = None
