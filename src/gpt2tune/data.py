"""Sentences to training blocks: read -> dedupe -> split -> tokenize -> pack."""

from __future__ import annotations

import codecs
import csv
import io
import json
import math
import random
import re
from array import array
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch

from .dedupe import near_duplicates
from .errors import UserError
from .inputs import check_regular_file, is_text
from .textfile import check_not_binary, decode_text  # noqa: F401 (part of this module's API)

MAX_LINE_CHARS = 20_000  # a "sentence" longer than this is a file in the wrong shape, not a sentence
IGNORE = -100  # label value the loss skips
# a run of whitespace within a line (what str.split() splits on) other than one plain space: two or more
# characters, or one that is not a space (matching every single space made this pass 10x slower)
_SPACES = re.compile(r"(?: [^\S\n]|[^\S\n ])[^\S\n]*")


def read_sentences(path: str | Path, text_column: str = "text") -> list[str]:
    """Read sentences from .txt (one per line), .jsonl (a field) or .csv (a column); blank lines skipped."""
    p = Path(path)
    check_data_path(p)
    sentences = list(iter_sentences(p, text_column))
    if not sentences:
        raise UserError(f"{p} holds no sentences (it is empty or only blank lines)")
    return sentences


def check_data_path(p: Path) -> None:
    """A UserError unless p is a data file that can be read."""
    if not p.exists():
        raise UserError(f"data file not found: {p}")
    if p.is_dir():
        raise UserError(f"data path is a directory, not a file: {p}")
    check_regular_file(p, "data file")  # a FIFO or device would block, or be consumed, by hashing and reading


def iter_sentences(p: Path, text_column: str = "text") -> Iterator[str]:
    """The sentences of a data file one at a time (whitespace collapsed, blank lines skipped), streamed."""
    for batch in iter_sentence_batches(p, text_column):
        yield from batch


def iter_sentence_batches(p: Path, text_column: str = "text") -> Iterator[list[str]]:
    """The sentences of a data file, a few MiB of text at a time (whitespace collapsed, blank lines skipped)."""
    suffix = p.suffix.lower()
    if suffix in (".jsonl", ".csv"):  # rows may span lines (csv) or need the whole text's error messages
        text = decode_text(p, p.read_bytes())
        rows = _read_jsonl(p, text, text_column) if suffix == ".jsonl" else _read_csv(p, text, text_column)
        for a in range(0, len(rows), 65536):
            batch = [" ".join(row.split()) for row in rows[a:a + 65536]]
            _check_lengths(p, batch, a)
            yield [s for s in batch if s]
        return
    number = 0
    for lines in _text_lines(p):  # lines without line breaks: whitespace collapsed in a few passes over the text
        batch = _collapse("\n".join(lines)).split("\n")
        _check_lengths(p, batch, number)
        number += len(batch)
        yield list(filter(None, batch))


def _collapse(text: str) -> str:
    """Every line of text as " ".join(line.split()), in a few passes over the whole text."""
    return _SPACES.sub(" ", text).replace(" \n", "\n").replace("\n ", "\n").strip(" ")


def _check_lengths(p: Path, rows: list[str], before: int) -> None:
    if rows and max(map(len, rows)) > MAX_LINE_CHARS:
        i = next(i for i, s in enumerate(rows) if len(s) > MAX_LINE_CHARS)
        raise UserError(f"{p}: line {before + i + 1} is {len(rows[i]):,} characters long; expected one sentence "
                        f"per line (at most {MAX_LINE_CHARS:,} characters)")


def _text_lines(p: Path) -> Iterator[list[str]]:
    """A text file's lines without their line breaks, decoded as UTF-8 piece by piece (4 MiB at a time: a whole
    4M-line file never sits in memory)."""
    with p.open("rb") as f:
        check_not_binary(p, f.read(65536))
        f.seek(0)
        decoder = codecs.getincrementaldecoder("utf-8-sig")()
        tail = ""
        while True:
            raw = f.read(1 << 22)
            try:
                text = tail + decoder.decode(raw, final=not raw)
            except UnicodeDecodeError:
                decode_text(p, p.read_bytes())  # names the bad byte and its line
                raise
            lines = text.splitlines(keepends=True)
            # the last piece may be a line cut in two by the read: keep it for the next round
            tail = lines.pop() if raw and lines and lines[-1].splitlines() == [lines[-1]] else ""
            if lines:
                yield "".join(lines).splitlines()
            if not raw:
                return


def _read_jsonl(p: Path, text: str, field: str) -> list[str]:
    rows = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise UserError(f"{p}: line {number} is not valid JSON ({e.msg})") from None
        if not isinstance(obj, dict) or not isinstance(obj.get(field), str):
            raise UserError(f"{p}: line {number} has no text field '{field}' (use --text-column)")
        if not is_text(obj[field]):
            raise UserError(f"{p}: line {number} holds invalid text (a lone surrogate escape such as \\ud800)")
        rows.append(obj[field])
    return rows


def _read_csv(p: Path, text: str, column: str) -> list[str]:
    reader = csv.DictReader(io.StringIO(text))
    try:
        if reader.fieldnames is None or column not in reader.fieldnames:
            have = ", ".join(reader.fieldnames or []) or "none"
            raise UserError(f"{p} has no column '{column}' (columns: {have}); use --text-column")
        return [row[column] or "" for row in reader]
    except csv.Error as e:  # e.g. a field over csv's limit of 131,072 characters
        raise UserError(f"{p}: line {reader.line_num + 1} is not valid CSV ({e})") from None


def dedupe(sentences: Sequence[str]) -> list[str]:
    """Exact duplicates removed, first occurrence kept, order kept."""
    return list(dict.fromkeys(sentences))


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
    n_val = math.ceil(len(unique) * val_fraction)
    if val_size is not None:
        n_val = min(n_val, val_size)
    if len(unique) < 2 or n_val >= len(unique) or n_val < 1:
        raise UserError(f"too few sentences: {len(unique)} unique, need at least 2 to hold out "
                        f"{val_fraction:.0%} for validation and train on the rest")
    near = near_duplicates(unique) if near_dedupe else None
    groups = near.group if near else np.arange(len(unique))
    in_val = _take_groups(groups, n_val, seed)
    if not in_val.any():
        raise UserError(f"cannot hold out sentences: all {len(unique)} unique sentences are near-duplicates of "
                        "each other (use --near-dedupe off)")
    _, inverse, counts = np.unique(groups, return_inverse=True, return_counts=True)
    held = in_val.tolist()  # Python bools: iterating a numpy array element by element is slow
    return Split(train=[s for s, v in zip(unique, held) if not v], val=[s for s, v in zip(unique, held) if v],
                 sentences=len(sentences), unique=len(unique), near_groups=int((counts > 1).sum()),
                 near_grouped=int((counts[inverse] > 1).sum()),
                 near_examples=[[unique[i] for i in m[:3]] for m in near.members(5)] if near else [])


def _take_groups(groups: np.ndarray, n_val: int, seed: int) -> np.ndarray:
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
    return np.isin(groups, chosen)


def split(sentences: Sequence[str], val_fraction: float, seed: int, val_size: int | None = None,
          near_dedupe: bool = False) -> tuple[list[str], list[str]]:
    """Seeded train/val split of unique sentences; no sentence (or near-duplicate group) lands in both."""
    s = split_sentences(sentences, val_fraction, seed, val_size, near_dedupe)
    return s.train, s.val


def encode(tokenizer, sentences: Sequence[str], bos_id: int, eos_id: int, max_len: int) -> list[list[int]]:
    """Each sentence as `<sos> sentence <eos>` token ids, cut to max_len tokens."""
    ids = tokenizer(list(sentences), add_special_tokens=False)["input_ids"] if sentences else []
    return [([bos_id] + x + [eos_id])[:max_len] for x in ids]


@dataclass
class Blocks:
    """Packed blocks of whole examples. targets[t] is the next token of the same example, else IGNORE."""

    input_ids: torch.Tensor  # (N, T) long
    targets: torch.Tensor  # (N, T) long, IGNORE where nothing is predicted
    position_ids: torch.Tensor  # (N, T) long, restarting at 0 for each example
    segments: torch.Tensor  # (N, T) int32, example index within the block, -1 on padding
    n_examples: int

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    @property
    def block_size(self) -> int:
        return self.input_ids.shape[1]

    def target_counts(self) -> torch.Tensor:
        """Tokens that count in the loss, per block."""
        return (self.targets != IGNORE).sum(dim=1)

    def useful_counts(self) -> torch.Tensor:
        """Real (non-padding) tokens, per block."""
        return (self.segments >= 0).sum(dim=1)

    def useful_fraction(self) -> float:
        """Share of block positions holding real tokens (not padding)."""
        return float((self.segments >= 0).float().mean()) if len(self) else 0.0

    def rows(self, index: Sequence[int] | torch.Tensor) -> "Blocks":
        """The given blocks (an in-memory Blocks; a disk-backed store gives the same from its files)."""
        idx = torch.as_tensor(index, dtype=torch.long)
        return Blocks(self.input_ids[idx], self.targets[idx], self.position_ids[idx], self.segments[idx],
                      self.n_examples)


def assign_blocks(lengths: Sequence[int] | np.ndarray, block_size: int
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """Best-fit packing of examples by length: each one's block, its place in the block, its start; and N."""
    # free[k] lists the blocks with exactly k free positions; best fit = smallest k that holds the example,
    # found as the lowest set bit of `nonempty` (bit k set when free[k] has a block) at or above the length
    space: list[int] = []
    members: list[int] = []
    free: list[list[int]] = [[] for _ in range(block_size + 1)]
    nonempty = 0
    blocks_, slots_, starts_ = array("q"), array("q"), array("q")  # 8 bytes an example, not a Python int
    for length in (lengths.tolist() if isinstance(lengths, np.ndarray) else lengths):
        fits = nonempty >> length
        if fits:
            k = length + (fits & -fits).bit_length() - 1
            b = free[k].pop()
            if not free[k]:
                nonempty ^= 1 << k
        else:
            b = len(space)
            space.append(block_size)
            members.append(0)
        blocks_.append(b)
        slots_.append(members[b])
        starts_.append(block_size - space[b])
        members[b] += 1
        left = space[b] = space[b] - length
        free[left].append(b)
        nonempty |= 1 << left
    as_np = lambda a: np.frombuffer(a, dtype=np.int64) if len(a) else np.zeros(0, np.int64)  # noqa: E731
    return as_np(blocks_), as_np(slots_), as_np(starts_), len(space)


def pack(examples: Sequence[Sequence[int]], block_size: int, pad_id: int) -> Blocks:
    """Best-fit pack whole examples into blocks of block_size tokens; the rest of a block is padding."""
    block, slot, start, N = assign_blocks([len(ex) for ex in examples], block_size)
    input_ids = torch.full((N, block_size), pad_id, dtype=torch.long)
    segments = torch.full((N, block_size), -1, dtype=torch.int32)
    for i, ex in enumerate(examples):
        b, t = int(block[i]), int(start[i])
        input_ids[b, t:t + len(ex)] = torch.as_tensor(ex, dtype=torch.long)
        segments[b, t:t + len(ex)] = int(slot[i])
    targets, position_ids = derive(input_ids, segments)
    return Blocks(input_ids, targets, position_ids, segments, len(examples))


def derive(input_ids: torch.Tensor, segments: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Targets (the next token of the same example, else IGNORE) and positions (from 0 in each example)."""
    ids, seg = input_ids.long(), segments.long()
    targets = torch.full_like(ids, IGNORE)
    same_next = (seg[:, 1:] == seg[:, :-1]) & (seg[:, :-1] >= 0)
    targets[:, :-1] = torch.where(same_next, ids[:, 1:], IGNORE)
    T = seg.shape[-1]
    t = torch.arange(T).expand_as(seg)
    new = torch.ones_like(seg, dtype=torch.bool)
    new[:, 1:] = seg[:, 1:] != seg[:, :-1]
    first = torch.where(new, t, 0).cummax(dim=1).values  # where the example at each position starts
    position_ids = torch.where(seg >= 0, t - first, 0)
    return targets, position_ids


def attention_mask(segments: torch.Tensor) -> torch.Tensor:
    """(B, 1, T, T) bool mask: causal within each example, nothing across examples.

    Padding positions attend to themselves only, so no row is empty (an empty row makes NaNs).
    """
    T = segments.shape[-1]
    same = segments[:, :, None] == segments[:, None, :]
    causal = torch.ones(T, T, dtype=torch.bool, device=segments.device).tril()
    eye = torch.eye(T, dtype=torch.bool, device=segments.device)
    pad = (segments < 0)[:, :, None]
    mask = (same & causal & ~pad) | (eye & pad)
    return mask[:, None]


def batch(blocks: Blocks, index: Sequence[int] | torch.Tensor) -> dict[str, torch.Tensor]:
    """Model inputs and targets for the given block indices (of a Blocks or a disk-backed cache.TokenBlocks)."""
    b = blocks.rows(index)
    return {
        "input_ids": b.input_ids,
        "position_ids": b.position_ids,
        "attention_mask": attention_mask(b.segments),
        "targets": b.targets,
    }


def epoch_order(n_blocks: int, seed: int, epoch: int) -> list[int]:
    """The block order of one epoch, a pure function of (seed, epoch) so a resumed run replays it."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n_blocks, generator=g).tolist()


# --------------------------------------------------------------------------- the run's data phase (two calls)

def prepare_split(cfg):
    """Read, dedupe and split cfg.data (TrainConfig) through the data cache: a datacache.SplitEntry."""
    from .datacache import cached_split

    return cached_split(cfg.data, cfg.text_column, cfg.val_fraction, cfg.seed, cfg.val_size, cfg.near_dedupe,
                        cfg.cache_dir)


def prepare_blocks(split, tokenizer, cfg, out: Path | None = None):
    """Train and val blocks of a split (memory-mapped from the cache); with `out`, also val.txt and data.json."""
    from .data_report import run_data, write_atomic

    train_blocks, val_blocks = split.blocks(tokenizer, cfg.block_size, cfg.cache_dir)
    if out is not None:
        write_atomic(out / "val.txt", split.val_text())
        summary = run_data(split, train_blocks, val_blocks)
        write_atomic(out / "data.json", (json.dumps(summary, indent=1, ensure_ascii=False) + "\n").encode())
    return train_blocks, val_blocks


def split_line(info: dict) -> str:
    """The counts of a split in one line, for the run's first line."""
    near = (f"{info['near_grouped']:,} near-duplicates in {info['near_groups']:,} groups kept on one side"
            if info["settings"]["near_dedupe"] else "near-dedupe off")
    return (f"{info['sentences']:,} sentences, {info['unique']:,} unique, {near} -> {info['train']:,} train / "
            f"{info['val']:,} val sentences")
