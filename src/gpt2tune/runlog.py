"""A run's logs: metrics.jsonl and samples.jsonl for machines, one line per evaluation for people."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm


def append_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    """Append rows as JSON lines."""
    with path.open("a", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def truncate_jsonl(path: Path, keep: int) -> None:
    """Keep the first `keep` lines (drops what a killed run wrote after its last checkpoint)."""
    if path.exists():
        lines = path.read_text(encoding="utf-8").splitlines(keepends=True)[:keep]
        path.write_text("".join(lines), encoding="utf-8")


def print_eval(row: dict[str, Any], samples) -> None:
    """An evaluation's metrics line and its samples, one line each (above a progress bar if one is drawn)."""
    train_loss = "-" if row["train_loss"] is None else f"{row['train_loss']:.4f}"
    tqdm.write(f"epoch {row['epoch']} | step {row['step']} | train loss {train_loss} | "
               f"val loss {row['val_loss']:.4f} | val ppl {row['val_ppl']:.2f} | "
               f"{row['elapsed_s']:.1f} s | {row['tokens_per_s']:,.0f} tok/s" + ("  *best*" if row["best"] else ""))
    for x in samples:
        tqdm.write(f"  {x.prompt!r:>16}: {' '.join(x.text.split())}")  # one line per sample, even multi-line
