"""Token ids to training blocks: whole sentences packed into fixed-size blocks, their targets, positions and
masks (no attention across sentences), batches and the seeded epoch order."""

from __future__ import annotations

from array import array
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

IGNORE = -100  # label value the loss skips


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


