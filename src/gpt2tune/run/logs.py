"""A run's logs: metrics.jsonl and samples.jsonl for machines, one line per evaluation for people.

A run's metrics, samples and comparison as the report reads them: rows of the wrong shape (a hand-edited or torn
file) are left out and counted, so the report renders what is valid and says what it skipped."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Callable

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


Row = dict[str, Any]


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _is_num(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def metric_problem(row: Row) -> str | None:
    """What is wrong with a metrics.jsonl row (None: nothing)."""
    if not _is_int(row.get("step")):
        return "no integer step"
    for key in ("val_loss", "val_ppl") + (() if row.get("event") == "start" else ("train_loss",)):
        if not _is_num(row.get(key)):
            return f"no number {key}"
    for key in ("epoch", "tokens_per_s", "elapsed_s", "lr"):  # gpt2tune writes numbers here, never null
        if key in row and not _is_num(row[key]):
            return f"{key} is not a number"
    if not isinstance(row.get("event", ""), str):
        return "event is not a string"
    return None


def sample_problem(row: Row) -> str | None:
    """What is wrong with a samples.jsonl row (None: nothing)."""
    for key in ("keyword", "text"):
        if not isinstance(row.get(key), str):
            return f"no text {key}"
    if row.get("step") is not None and not _is_int(row["step"]):
        return "step is not an integer"
    if row.get("epoch") is not None and not _is_num(row["epoch"]):
        return "epoch is not a number"
    return None


def read_rows(path: Path, problem: Callable[[Row], str | None]) -> tuple[list[Row], str | None]:
    """The valid rows of a JSON-lines file and a note on the lines left out (None when every line was used)."""
    if not path.is_file():
        return [], None
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as e:
        return [], f"could not read {path.name} ({e.strerror or e})"
    rows, skipped, first = [], 0, ""
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            why = problem(row) if isinstance(row, dict) else "not a JSON object"
        except json.JSONDecodeError:
            why = "not valid JSON (torn or edited)"
        if why is None:
            rows.append(row)
        else:
            skipped += 1
            first = first or f"line {number}: {why}"
    note = f"skipped {skipped} line{'s' * (skipped > 1)} of {path.name} ({first})" if skipped else None
    return rows, note


def read_metrics(run: Path) -> list[Row]:
    """The valid rows of a run's metrics.jsonl (a missing file has none)."""
    return read_rows(Path(run) / "metrics.jsonl", metric_problem)[0]


def read_samples(run: Path) -> list[Row]:
    """The valid rows of a run's samples.jsonl (a missing file has none)."""
    return read_rows(Path(run) / "samples.jsonl", sample_problem)[0]


def comparison_problem(cmp: Any) -> str | None:
    """What makes compare.json something other than a comparison gpt2tune wrote (None: nothing)."""
    if not isinstance(cmp, dict):
        return f"it holds a {type(cmp).__name__}, not an object"
    settings = cmp.get("settings", {})
    if not isinstance(settings, dict) or not isinstance(settings.get("sampling", {}), dict):
        return "settings is not an object"
    if settings.get("heldout_mean_length") is not None and not _is_num(settings["heldout_mean_length"]):
        return "settings.heldout_mean_length is not a number"
    table, samples = cmp.get("table", []), cmp.get("samples", [])
    if not isinstance(table, list) or not isinstance(samples, list):
        return "table or samples is not a list"
    for r in table:
        if not (isinstance(r, dict) and all(isinstance(r.get(k), str) for k in ("label", "better", "winner"))
                and _is_num(r.get("base")) and _is_num(r.get("tuned"))):
            return "a table row lacks label, base, tuned, better or winner"
    for x in samples:
        if not (isinstance(x, dict) and isinstance(x.get("keyword"), str)
                and all(isinstance(x.get(k), dict) and isinstance(x[k].get("text"), str) for k in ("base", "tuned"))):
            return "a sample lacks keyword, base.text or tuned.text"
    return None


def read_comparison(path: Path) -> tuple[dict[str, Any] | None, str | None]:
    """compare.json, or None and a note when it is not a comparison gpt2tune wrote."""
    if not path.is_file():
        return None, None
    try:
        cmp = json.loads(path.read_text(encoding="utf-8", errors="replace"))
    except json.JSONDecodeError as e:
        return None, f"left out {path.name}: it is not valid JSON ({e.msg} on line {e.lineno})"
    except OSError as e:
        return None, f"left out {path.name}: it could not be read ({e.strerror or e})"
    why = comparison_problem(cmp)
    return (cmp, None) if why is None else (None, f"left out {path.name}: {why}")
