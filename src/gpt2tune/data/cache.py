"""The data cache: a corpus's split and its tokenized, packed blocks, written once and memory-mapped after.

Two kinds of entry, each a directory published by one rename (never half-written under its final name) and
holding a manifest.json with every file's size and SHA-256, checked on every load (a damaged entry is rebuilt):

- split-KEY/: train.txt, val.txt (one sentence per line) and the dedupe counts; KEY = the data file's content
  hash, its format and text column, val fraction, val size, seed and near-dedupe.
- blocks-KEY/: ids.npy (N, T) int32 and segments.npy (N, T) int16 of packed blocks, and lengths.npy (tokens
  per sentence); KEY = the sentence file's hash, the tokenizer (its vocabulary, merges and special tokens),
  the <sos>/<eos>/<pad> ids and the block size.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import numpy as np
import torch

from gpt2tune.console import phase
from gpt2tune.data import blocks as data_blocks
from gpt2tune.data import encode, read
from gpt2tune.data.split import split_file
from gpt2tune.errors import UserError
from gpt2tune.files import digest

ENV = "GPT2TUNE_CACHE_DIR"
VERSION = 2  # bump when what an entry holds, or how it is made, changes


def cache_root(cache_dir: str | None = None) -> Path:
    """Where data cache entries live: cache_dir, else $GPT2TUNE_CACHE_DIR, else the user cache dir."""
    base = cache_dir or os.environ.get(ENV) or Path(os.environ.get("XDG_CACHE_HOME") or "~/.cache") / "gpt2tune"
    root = Path(base).expanduser() / "data"
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot use the data cache directory {root} ({e.strerror or e}); choose another "
                        f"with --cache-dir or {ENV}") from None
    return root


def entry_key(parts: dict[str, Any]) -> str:
    """The name part of a cache entry made from these settings (and the cache's version)."""
    return hashlib.sha256(json.dumps({"version": VERSION, **parts}, sort_keys=True).encode()).hexdigest()[:32]


def _load(entry: Path) -> dict[str, Any] | None:
    """The manifest of an intact entry, or None (missing, torn, or a file's size or checksum is off)."""
    try:
        manifest = json.loads((entry / "manifest.json").read_text(encoding="utf-8"))
        if manifest.get("version") != VERSION or manifest.get("key") != entry.name:
            return None
        for name, want in manifest["files"].items():
            f = entry / name
            if f.stat().st_size != want["size"] or digest(f) != want["sha256"]:
                return None
        return manifest
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def _entry(root: Path, name: str, build: Callable[[Path], dict[str, Any]]) -> tuple[Path, dict[str, Any], bool]:
    """Load entry `name`, or build it in a temporary directory and publish it by rename; (dir, manifest, hit)."""
    final = root / name
    manifest = _load(final)
    if manifest is not None:
        return final, manifest, True
    if final.exists():
        print(f"data cache entry {final} is damaged or incomplete; rebuilding it", file=sys.stderr)
        shutil.rmtree(final, ignore_errors=True)
    try:
        tmp = Path(tempfile.mkdtemp(dir=root, prefix=f".{name}.tmp-"))
    except OSError as e:
        raise _cache_error(root, e) from None
    try:
        info = build(tmp)
        files = {f.name: {"size": f.stat().st_size, "sha256": digest(f)} for f in sorted(tmp.iterdir())}
        manifest = {"version": VERSION, "key": name, "files": files, "info": info}
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1), encoding="utf-8")
        try:
            os.rename(tmp, final)
        except OSError:  # another process published the same entry first: its content is the same
            if _load(final) is None:
                raise
        return final, manifest, False
    except OSError as e:
        if e.errno not in FULL:
            raise
        raise _cache_error(root, e) from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS)  # the cache's disk, not the data, is the problem


def _cache_error(root: Path, e: OSError) -> UserError:
    return UserError(f"could not write to the data cache {root} ({e.strerror or e}); nothing was kept there: free "
                     f"some space, or choose another directory with --cache-dir or {ENV}")


def _reserved_memmap(path: Path, dtype, shape: tuple[int, int]) -> np.ndarray:
    """A new .npy file mapped for writing, its disk space taken first: a full disk is then an OSError here,
    not a SIGBUS (a crash) at the first write to a page the file system has no room for."""
    out = np.lib.format.open_memmap(path, "w+", dtype, shape)
    with open(path, "r+b") as f:
        try:
            os.posix_fallocate(f.fileno(), 0, os.fstat(f.fileno()).st_size)
        except OSError as e:
            if e.errno in (errno.EOPNOTSUPP, errno.EINVAL):  # a file system without it: as before
                return out
            del out
            raise
    return out


# ------------------------------------------------------------------------------------------------------ split

@dataclass
class SplitEntry:
    """A corpus's train/val split in the cache."""

    path: Path
    info: dict[str, Any]  # data_split.Split.summary() plus near-duplicate examples
    digests: dict[str, str]  # train.txt / val.txt -> SHA-256
    hit: bool

    def sentences(self, part: str) -> Iterator[str]:
        """The train or val sentences, streamed."""
        with open(self.path / f"{part}.txt", encoding="utf-8") as f:
            for line in f:
                yield line.rstrip("\n")

    def val_text(self) -> bytes:
        """val.txt as written (for the run directory)."""
        return (self.path / "val.txt").read_bytes()

    def blocks(self, tokenizer, block_size: int, cache_dir: str | None = None) -> tuple[TokenBlocks, TokenBlocks]:
        """The train and val blocks for this tokenizer and block size, from the cache or made once."""
        fp = tokenizer_fingerprint(tokenizer)
        return tuple(cached_blocks(self.digests[part], lambda part=part: encode.file_chunks(self.path / f"{part}.txt"),
                                   tokenizer, block_size, cache_dir, fp)
                     for part in ("train", "val"))  # type: ignore


def cached_split(path: str, text_column: str, val_fraction: float, seed: int, val_size: int | None,
                 near_dedupe: bool, cache_dir: str | None = None) -> SplitEntry:
    """Read, dedupe and split a data file once; later calls with the same file and settings load the result."""
    p = read.source(path)
    parts = {"data": read.digest(p), "format": p.format, "text_column": text_column,
             "val_fraction": val_fraction, "val_size": val_size, "seed": seed, "near_dedupe": near_dedupe}
    root = cache_root(cache_dir)

    def build(d: Path) -> dict[str, Any]:
        with phase(f"reading, deduplicating{' and grouping' if near_dedupe else ''} {p.label} and splitting it "
                   "(once: later runs take it from the cache)"):
            return {**split_file(p, text_column, val_fraction, seed, val_size, near_dedupe, d), "settings": parts}

    entry, manifest, hit = _entry(root, "split-" + entry_key(parts), build)
    digests = {part: manifest["files"][f"{part}.txt"]["sha256"] for part in ("train", "val")}
    return SplitEntry(entry, manifest["info"], digests, hit)


# ----------------------------------------------------------------------------------------------------- blocks

class TokenBlocks:
    """Packed blocks memory-mapped from the cache; `rows` gives the same data_blocks.Blocks as data_blocks.pack in memory."""

    def __init__(self, ids: np.ndarray, segments: np.ndarray, lengths: np.ndarray, hit: bool = True):
        self.ids, self.seg, self.lengths, self.hit = ids, segments, lengths, hit
        self.n_examples = len(lengths)
        self._counts: tuple[torch.Tensor, torch.Tensor] | None = None

    def __len__(self) -> int:
        return self.ids.shape[0]

    @property
    def block_size(self) -> int:
        return self.ids.shape[1]

    def rows(self, index) -> data_blocks.Blocks:
        """The given blocks, in memory."""
        idx = np.asarray(torch.as_tensor(index, dtype=torch.long))
        ids = torch.from_numpy(self.ids[idx].astype(np.int64))
        seg = torch.from_numpy(self.seg[idx].astype(np.int32))
        targets, positions = data_blocks.derive(ids, seg)
        return data_blocks.Blocks(ids, targets, positions, seg, self.n_examples)

    def _count(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self._counts is None:
            useful, targets = np.zeros(len(self), np.int64), np.zeros(len(self), np.int64)
            for a in range(0, len(self), 65536):  # a chunk at a time: no (N, T) temporaries
                seg = np.asarray(self.seg[a:a + 65536])
                useful[a:a + len(seg)] = (seg >= 0).sum(axis=1)
                targets[a:a + len(seg)] = useful[a:a + len(seg)] - (seg.max(axis=1, initial=-1) + 1)
            self._counts = torch.from_numpy(useful), torch.from_numpy(targets)
        return self._counts

    def useful_counts(self) -> torch.Tensor:
        """Real (non-padding) tokens, per block."""
        return self._count()[0]

    def target_counts(self) -> torch.Tensor:
        """Tokens that count in the loss, per block."""
        return self._count()[1]

    def useful_fraction(self) -> float:
        """Share of block positions holding real tokens (not padding)."""
        return float(self.useful_counts().sum()) / max(len(self) * self.block_size, 1)


def tokenizer_fingerprint(tokenizer) -> str:
    """A hash of everything in a tokenizer that changes the ids it gives."""
    h = hashlib.sha256(type(tokenizer).__name__.encode())
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        h.update(backend.to_str().encode())  # vocabulary, merges, pre-tokenizer, added tokens
    else:
        h.update(json.dumps(sorted(tokenizer.get_vocab().items())).encode())
    h.update(json.dumps([tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id]).encode())
    return h.hexdigest()


def cached_blocks(source: str, chunks: Callable[[], Iterable[str]], tokenizer, block_size: int,
                  cache_dir: str | None = None, fingerprint: str | None = None) -> TokenBlocks:
    """`<sos> sentence <eos>` examples packed into blocks, from the cache or made once (source = their hash);
    `chunks` gives the sentences as line-separated text chunks (encode.file_chunks, encode.text_chunks)."""
    parts = {"sentences": source, "tokenizer": fingerprint or tokenizer_fingerprint(tokenizer),
             "block_size": block_size}
    ids = (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id)

    def build(d: Path) -> dict[str, Any]:
        with phase("tokenizing and packing sentences (once: later runs take them from the cache)"):
            return write_blocks(d, chunks(), tokenizer, *ids, block_size)

    entry, _, hit = _entry(cache_root(cache_dir), "blocks-" + entry_key(parts), build)
    load = lambda name: np.load(entry / name, mmap_mode="r")  # noqa: E731
    return TokenBlocks(load("ids.npy"), load("segments.npy"), load("lengths.npy"), hit)


def write_blocks(d: Path, chunks: Iterable[str], tokenizer, bos: int, eos: int, pad: int,
                 block_size: int) -> dict[str, Any]:
    """Tokenize chunks of lines (on all cores) to a flat token file, pack by length, fill memory-mapped blocks."""
    lengths: list[np.ndarray] = []
    with open(d / "tokens.tmp", "wb") as f:
        for flat, raw in encode.encode_chunks(tokenizer, chunks):
            lengths.append(raw)
            f.write(_examples(flat, raw, bos, eos, block_size).tobytes())
    raw = np.concatenate(lengths) if lengths else np.zeros(0, np.int64)
    sizes = np.minimum(raw + 2, block_size)
    block, slot, start, n = data_blocks.assign_blocks(sizes, block_size)
    out_ids = _reserved_memmap(d / "ids.npy", np.int32, (n, block_size))
    out_seg = _reserved_memmap(d / "segments.npy", np.int16, (n, block_size))
    out_ids[:] = pad
    out_seg[:] = -1
    tokens = np.memmap(d / "tokens.tmp", np.int32, "r") if sizes.sum() else np.zeros(0, np.int32)
    ends = np.cumsum(sizes)
    flat_ids, flat_seg = out_ids.reshape(-1), out_seg.reshape(-1)
    for a in range(0, len(sizes), 1 << 16):  # a slice of examples at a time: bounded temporaries
        b = min(a + (1 << 16), len(sizes))
        lo, hi = (ends[a - 1] if a else 0), ends[b - 1]
        n_i = sizes[a:b]
        # each token's place: its example's start in the flat block array, plus its offset in the example
        dest = np.repeat(block[a:b] * block_size + start[a:b] - (ends[a:b] - n_i - lo), n_i) + np.arange(hi - lo)
        flat_ids[dest] = tokens[lo:hi]
        flat_seg[dest] = np.repeat(slot[a:b], n_i)
    out_ids.flush()
    out_seg.flush()
    del out_ids, out_seg, tokens, flat_ids, flat_seg
    (d / "tokens.tmp").unlink()
    np.save(d / "lengths.npy", raw.astype(np.int32))
    return {"examples": len(sizes), "blocks": n, "block_size": block_size, "tokens": int(raw.sum()),
            "truncated": int((raw + 2 > block_size).sum())}


def _examples(flat: np.ndarray, raw: np.ndarray, bos: int, eos: int, block_size: int) -> np.ndarray:
    """`<sos> line <eos>` for each line's ids (flat, raw[i] each), cut to block_size tokens, concatenated."""
    sizes = np.minimum(raw + 2, block_size)
    out = np.empty(int(sizes.sum()), np.int32)
    starts = np.cumsum(sizes) - sizes
    out[starts] = bos
    body = np.minimum(raw, block_size - 1)  # a cut example keeps <sos> and its first block_size - 1 tokens
    within = np.arange(int(body.sum())) - np.repeat(np.cumsum(body) - body, body)
    out[np.repeat(starts + 1, body) + within] = flat[np.repeat(np.cumsum(raw) - raw, body) + within]
    whole = raw + 2 <= block_size
    out[starts[whole] + raw[whole] + 1] = eos
    return out
