"""What is in a sentence file: counts, duplicates, tokens per sentence, non-prose lines, the time of one epoch."""

from __future__ import annotations

import html
import json
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable

import numpy as np

from gpt2tune.data import read
from gpt2tune.data.dedupe import near_duplicates
from gpt2tune.errors import UserError
from gpt2tune.files import atomic_write

if TYPE_CHECKING:
    from gpt2tune.config import InspectConfig

EDGES = [0, 8, 16, 32, 64, 128, 256, 512, 1024]  # tokens-per-sentence histogram bins: [lo, hi)
LONGEST = 5


def histogram(lengths: np.ndarray) -> list[dict[str, Any]]:
    """Sentences per tokens-per-sentence bin: [{"lo", "hi" (None = no upper end), "count"}]."""
    bins = np.digitize(lengths, EDGES[1:])
    counts = np.bincount(bins, minlength=len(EDGES))
    return [{"lo": lo, "hi": EDGES[i + 1] if i + 1 < len(EDGES) else None, "count": int(counts[i])}
            for i, lo in enumerate(EDGES)]


def non_prose(sentences: list[str], min_words: int = 5, max_words: int = 60) -> dict[str, Any] | None:
    """Share of lines each cleaning filter of `gpt2tune corpus` would drop (None without the corpus extra)."""
    try:
        from gpt2tune.corpus.clean import FILTERS, drop_reason
    except ImportError:
        return None
    reasons = Counter(drop_reason(s, min_words, max_words) for s in sentences)
    n = max(len(sentences), 1)
    by = {name: {"lines": reasons[name], "share": round(reasons[name] / n, 4)}
          for name in FILTERS if name != "duplicate"}
    dropped = sum(v["lines"] for v in by.values())
    return {"lines": dropped, "share": round(dropped / n, 4), "by_filter": by,
            "settings": {"min_words": min_words, "max_words": max_words}}


def load_tokenizer_and_config(model: str):
    """The model's tokenizer and config, without its weights; `gpt2` works offline (gpt2tune ships its tokenizer)."""
    from gpt2tune.model.source import resolve

    source = resolve(model) if model != "gpt2" else None  # a typo fails before transformers loads
    from transformers import AutoConfig, GPT2Config

    from gpt2tune.model import load as modeling
    from gpt2tune.model.builtin import gpt2_tokenizer

    if source is None:
        return gpt2_tokenizer(), GPT2Config()
    tokenizer = modeling.load_tokenizer(source, model)
    try:
        config = AutoConfig.from_pretrained(source.path, gguf_file=source.gguf_file)
    except (OSError, ValueError) as e:
        raise UserError(f"cannot read the config of {model}: {str(e).splitlines()[0]}") from None
    return tokenizer, config


def epoch_estimate(config, tokens: int, block_size: int) -> dict[str, Any]:
    """FLOP estimate of one training epoch over `tokens` at this machine's measured matmul peak."""
    import torch
    from transformers import AutoModelForCausalLM

    from gpt2tune.hardware import choose_device, matmul_peak, precision_for

    with torch.device("meta"):
        params = sum(p.numel() for p in AutoModelForCausalLM.from_config(config).parameters())
    layers = getattr(config, "num_hidden_layers", 0) or 0
    width = getattr(config, "hidden_size", 0) or 0
    # forward + backward: 6 FLOPs per parameter per token, plus attention over the block (Kaplan et al. 2020)
    flops = tokens * (6 * params + 6 * layers * block_size * width)
    device = choose_device("auto")  # where `train` would run
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision_for("auto", device), torch.float32)
    peak = matmul_peak(dtype, device, seconds=0.5)
    return {"method": "FLOP estimate: tokens x (6 x parameters + 6 x layers x block size x width) at the measured "
                      f"{str(dtype).replace('torch.', '')} matmul peak; real steps reach a fraction of the peak, "
                      "so expect 2-4x longer",
            "parameters": params, "flops": flops, "peak_flops": round(peak), "seconds_at_peak": float(f"{flops / peak:.3g}")}  # 3 significant digits: tiny models take ms


def inspect(path: str, text_column: str = "text", model: str = "gpt2", block_size: int = 128,
            epoch: bool = True) -> dict[str, Any]:
    """The data report of a sentence file, as a dict (the JSON `gpt2tune data inspect` writes)."""
    sentences = read.read_sentences(path, text_column)
    copies = Counter(sentences)
    unique = list(copies)
    near = near_duplicates(unique)
    tokenizer, config = load_tokenizer_and_config(model)
    lengths = np.concatenate([np.fromiter(map(len, tokenizer(chunk, add_special_tokens=False)["input_ids"]),
                                          np.int64) for chunk in _chunks(unique, 8192)])
    longest = np.argsort(-lengths, kind="stable")[:LONGEST]
    # one epoch trains on every unique sentence once, as <sos> sentence <eos> cut to the block size
    tokens = int(np.minimum(lengths + 2, block_size).sum())
    report = {
        "file": str(path), "model": model, "sentences": len(sentences), "unique": len(unique),
        "exact_duplicates": {"groups": sum(1 for c in copies.values() if c > 1),
                             "extra_copies": len(sentences) - len(unique)},
        "near_duplicates": {"groups": near.groups, "sentences": near.grouped,
                            "examples": [[unique[i] for i in m[:3]] for m in near.members(5)]},
        "tokens": {"total": int(lengths.sum()), "mean": round(float(lengths.mean()), 2),
                   "max": int(lengths.max()), "over_block": int((lengths + 2 > block_size).sum()),
                   "block_size": block_size, "histogram": histogram(lengths)},
        "longest": [{"tokens": int(lengths[i]), "chars": len(unique[i]), "text": unique[i][:300]} for i in longest],
        "non_prose": non_prose(unique),
    }
    if epoch:
        report["epoch"] = {"tokens": tokens, **epoch_estimate(config, tokens, block_size)}
    return report


def _chunks(items: list[str], size: int) -> Iterable[list[str]]:
    return (items[i:i + size] for i in range(0, len(items), size))


def _hist_text(hist: list[dict[str, Any]], width: int = 40) -> list[str]:
    top = max((h["count"] for h in hist), default=0) or 1
    return [f"  {h['lo']:>5}-{'' if h['hi'] is None else h['hi'] - 1:<5} {h['count']:>9,}  "
            f"{'#' * round(width * h['count'] / top)}" for h in hist if h["count"] or h["hi"] is not None]


def format_summary(r: dict[str, Any]) -> str:
    """The report for people."""
    t, near = r["tokens"], r["near_duplicates"]
    out = [f"{r.get('file', 'data')}: {r['sentences']:,} sentences, {r['unique']:,} unique "
           f"({r['exact_duplicates']['extra_copies']:,} exact copies removed)",
           f"near-duplicates: {near['sentences']:,} sentences in {near['groups']:,} groups"]
    if near.get("on") is False:
        out[-1] = "near-duplicates: not grouped (near-dedupe off)"
    for g in near["examples"]:
        out.append("  - " + "  |  ".join(g))
    if r.get("split"):
        sp = r["split"]
        out.append(f"split: {sp['train']:,} train / {sp['val']:,} val sentences (val fraction {sp['val_fraction']}, "
                   f"val size {sp['val_size']}); near-duplicate groups stay on one side")
    out.append(f"tokens ({r.get('model', 'the model')}'s tokenizer): {t['total']:,} in all, {t['mean']} per "
               f"sentence, {t['max']} at most; {t['over_block']:,} sentences longer than a {t['block_size']}-token "
               "block (cut)")
    out += ["tokens per sentence:", *_hist_text(t["histogram"])]
    if "train_blocks" in t:
        out.append(f"blocks: {t['train_blocks']:,} train / {t['val_blocks']:,} val, {t['useful_fraction']:.1%} of "
                   "train positions hold tokens")
    if r.get("longest"):
        out.append("longest lines:")
        out += [f"  {x['tokens']:>5} tokens: {x['text'][:120]}" for x in r["longest"]]
    np_ = r.get("non_prose")
    if np_:
        parts = ", ".join(f"{k} {v['share']:.1%}" for k, v in np_["by_filter"].items() if v["lines"])
        out.append(f"non-prose lines (the corpus cleaning filters): {np_['share']:.1%} ({parts or 'none'})")
    elif "non_prose" in r:
        out.append("non-prose lines: not measured (needs the corpus extra: pip install 'gpt2tune[corpus]')")
    if r.get("epoch"):
        e = r["epoch"]
        out.append(f"one epoch: {e['tokens']:,} tokens, {e['parameters']:,} parameters -> {e['seconds_at_peak']:,} s "
                   f"at this machine's matmul peak ({e['peak_flops'] / 1e9:,.0f} GFLOP/s); {e['method']}")
    return "\n".join(out)


def render_html(r: dict[str, Any]) -> str:
    """The data section of report.html (every text escaped)."""
    e = lambda x: html.escape(str(x), quote=True)  # noqa: E731
    lines = format_summary(r).splitlines()
    return "<pre class='data'>" + "\n".join(e(x) for x in lines) + "</pre>"


def inspect_file(path: str, cfg: "InspectConfig") -> dict[str, Any]:
    """`gpt2tune data inspect`: the report of a sentence file, also written as JSON to cfg.json when given."""
    cfg.validate()
    result = inspect(path, cfg.text_column, cfg.model, cfg.block_size)
    if cfg.json:
        write_json(result, cfg.json)
    return result


def write_json(report: dict[str, Any], path: str | Path) -> Path:
    """Write the report as JSON (atomically)."""
    p = Path(path)
    atomic_write(p, json.dumps(report, indent=1, ensure_ascii=False) + "\n")
    return p
