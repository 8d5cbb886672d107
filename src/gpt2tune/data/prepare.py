"""The run's data phase, in two calls: the split of the data file (through the cache), then its blocks for
a tokenizer (through the cache), with val.txt and data.json written into the run."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from gpt2tune.data.cache import cached_split
from gpt2tune.data.inspect import histogram
from gpt2tune.files import atomic_write


def prepare_split(cfg, path: str | Path | None = None):
    """Read, dedupe and split cfg.data (TrainConfig), or the file of lines made from it (`path`), through the data
    cache: a datacache.SplitEntry."""
    return cached_split(str(path or cfg.data), cfg.text_column, cfg.val_fraction, cfg.seed, cfg.val_size,
                        cfg.near_dedupe, cfg.cache_dir)


def prepare_blocks(split, tokenizer, cfg, out: Path | None = None):
    """Train and val blocks of a split (memory-mapped from the cache); with `out`, also val.txt and data.json."""
    train_blocks, val_blocks = split.blocks(tokenizer, cfg.block_size, cfg.cache_dir)
    if out is not None:
        atomic_write(out / "val.txt", split.val_text())
        summary = run_data(split, train_blocks, val_blocks)
        atomic_write(out / "data.json", json.dumps(summary, indent=1, ensure_ascii=False) + "\n")
    return train_blocks, val_blocks


def split_line(info: dict) -> str:
    """The counts of a split in one line, for the run's first line."""
    near = (f"{info['near_grouped']:,} near-duplicates in {info['near_groups']:,} groups kept on one side"
            if info["settings"]["near_dedupe"] else "near-dedupe off")
    return (f"{info['sentences']:,} sentences, {info['unique']:,} unique, {near} -> {info['train']:,} train / "
            f"{info['val']:,} val sentences")


def run_data(split, train_blocks, val_blocks) -> dict[str, Any]:
    """The data section of a run (data.json): the split's counts and the train set's tokens, from the cache."""
    info = split.info
    lengths = np.asarray(train_blocks.lengths)
    return {
        "sentences": info["sentences"], "unique": info["unique"],
        "exact_duplicates": {"extra_copies": info["sentences"] - info["unique"]},
        "near_duplicates": {"groups": info["near_groups"], "sentences": info["near_grouped"],
                            "examples": info["near_examples"], "on": info["settings"]["near_dedupe"]},
        "split": {"train": info["train"], "val": info["val"], "val_fraction": info["settings"]["val_fraction"],
                  "val_size": info["settings"]["val_size"]},
        "tokens": {"total": int(lengths.sum()), "mean": round(float(lengths.mean()), 2) if len(lengths) else 0.0,
                   "max": int(lengths.max(initial=0)), "over_block": int((lengths + 2 > train_blocks.block_size).sum()),
                   "block_size": train_blocks.block_size, "histogram": histogram(lengths),
                   "train_blocks": len(train_blocks), "val_blocks": len(val_blocks),
                   "useful_fraction": round(train_blocks.useful_fraction(), 4)},
    }
