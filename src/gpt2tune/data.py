"""Sentences to training blocks: read -> dedupe -> split -> tokenize -> pack."""

from __future__ import annotations

import csv
import io
import json
import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch

from .errors import UserError
from .inputs import check_regular_file, is_text
from .textfile import check_not_binary, decode_text  # noqa: F401 (part of this module's API)

MAX_LINE_CHARS = 20_000  # a "sentence" longer than this is a file in the wrong shape, not a sentence
IGNORE = -100  # label value the loss skips


def read_sentences(path: str | Path, text_column: str = "text") -> list[str]:
    """Read sentences from .txt (one per line), .jsonl (a field) or .csv (a column); blank lines skipped."""
    p = Path(path)
    if not p.exists():
        raise UserError(f"data file not found: {p}")
    if p.is_dir():
        raise UserError(f"data path is a directory, not a file: {p}")
    check_regular_file(p, "data file")
    text = decode_text(p, p.read_bytes())
    suffix = p.suffix.lower()
    if suffix == ".jsonl":
        rows = _read_jsonl(p, text, text_column)
    elif suffix == ".csv":
        rows = _read_csv(p, text, text_column)
    else:
        rows = text.splitlines()
    sentences = []
    for number, row in enumerate(rows, 1):
        s = " ".join(row.split())
        if len(s) > MAX_LINE_CHARS:
            raise UserError(f"{p}: line {number} is {len(s):,} characters long; expected one sentence per "
                            f"line (at most {MAX_LINE_CHARS:,} characters)")
        if s:
            sentences.append(s)
    if not sentences:
        raise UserError(f"{p} holds no sentences (it is empty or only blank lines)")
    return sentences


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


def split(sentences: Sequence[str], val_fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """Seeded train/val split of unique sentences; no sentence lands in both."""
    unique = dedupe(sentences)
    n_val = math.ceil(len(unique) * val_fraction)
    if len(unique) < 2 or n_val >= len(unique):
        raise UserError(f"too few sentences: {len(unique)} unique, need at least 2 to hold out "
                        f"{val_fraction:.0%} for validation and train on the rest")
    order = list(range(len(unique)))
    random.Random(seed).shuffle(order)
    val_idx = set(order[:n_val])
    train = [s for i, s in enumerate(unique) if i not in val_idx]
    val = [s for i, s in enumerate(unique) if i in val_idx]
    return train, val


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

    def useful_fraction(self) -> float:
        """Share of block positions holding real tokens (not padding)."""
        return float((self.segments >= 0).float().mean()) if len(self) else 0.0


def pack(examples: Sequence[Sequence[int]], block_size: int, pad_id: int) -> Blocks:
    """Best-fit pack whole examples into blocks of block_size tokens; the rest of a block is padding."""
    # free[k] lists the blocks with exactly k free positions; best fit = smallest k that holds the example.
    blocks: list[list[int]] = []
    space: list[int] = []
    free: list[list[int]] = [[] for _ in range(block_size + 1)]
    for i, ex in enumerate(examples):
        n = len(ex)
        b = next((free[k].pop() for k in range(n, block_size + 1) if free[k]), None)
        if b is None:
            b = len(blocks)
            blocks.append([])
            space.append(block_size)
        blocks[b].append(i)
        space[b] -= n
        free[space[b]].append(b)
    N = len(blocks)
    input_ids = torch.full((N, block_size), pad_id, dtype=torch.long)
    targets = torch.full((N, block_size), IGNORE, dtype=torch.long)
    position_ids = torch.zeros((N, block_size), dtype=torch.long)
    segments = torch.full((N, block_size), -1, dtype=torch.int32)
    for b, members in enumerate(blocks):
        t = 0
        for j, i in enumerate(members):
            ex = torch.as_tensor(examples[i], dtype=torch.long)
            n = len(ex)
            input_ids[b, t:t + n] = ex
            targets[b, t:t + n - 1] = ex[1:]
            position_ids[b, t:t + n] = torch.arange(n)
            segments[b, t:t + n] = j
            t += n
    return Blocks(input_ids, targets, position_ids, segments, len(examples))


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
    """Model inputs and targets for the given block indices."""
    idx = torch.as_tensor(index, dtype=torch.long)
    seg = blocks.segments[idx]
    return {
        "input_ids": blocks.input_ids[idx],
        "position_ids": blocks.position_ids[idx],
        "attention_mask": attention_mask(seg),
        "targets": blocks.targets[idx],
    }


def epoch_order(n_blocks: int, seed: int, epoch: int) -> list[int]:
    """The block order of one epoch, a pure function of (seed, epoch) so a resumed run replays it."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n_blocks, generator=g).tolist()
