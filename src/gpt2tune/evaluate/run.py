"""Before and after: held-out perplexity (scored as training scores it), sample metrics, base-vs-tuned compare."""

from __future__ import annotations

import dataclasses
import html
import json
import math
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from gpt2tune.config import ARTICLE_KEYWORDS, SamplingConfig, check, read_config_file, to_dict
from gpt2tune.errors import UserError
from gpt2tune.evaluate.options import CompareConfig, EvaluateConfig
from gpt2tune.evaluate.text_metrics import NgramIndex, mean_length, sample_metrics

# ---------------------------------------------------------------------------------------------------- perplexity

def perplexity(model, tokenizer, sentences: Sequence[str], batch_size: int = 8, block_size: int = 128,
               precision: str = "auto", blocks=None, progress: str | None = None, device: str | None = None
               ) -> dict[str, Any]:
    """Held-out perplexity of `<sos> sentence <eos>` exactly as training scores it (packed, padding masked).

    `blocks` (the sentences already packed, e.g. from the data cache) replaces encoding `sentences` here;
    `progress` names a bar shown on stderr once scoring takes more than a couple of seconds; `device` (auto, cuda,
    ...) moves the model there first, None scores where the model is."""
    import torch

    from gpt2tune.data import blocks as data_blocks
    from gpt2tune.data import read
    from gpt2tune.hardware import autocast_dtype, to_device
    from gpt2tune.model.load import check_block_size

    sentences = read.dedupe(sentences)
    if not sentences and blocks is None:
        raise UserError("no sentences to score")
    check_block_size(model, block_size, batch_size)
    if device is not None:
        device = to_device(model, device)
    else:  # where the model is (a model without parameters: the CPU)
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
    t0 = time.perf_counter()
    if blocks is None:
        examples = data_blocks.encode(tokenizer, sentences, tokenizer.bos_token_id, tokenizer.eos_token_id, block_size)
        blocks = data_blocks.pack(examples, block_size, tokenizer.pad_token_id)
    loss, tokens = _scored_in_chunks(model, blocks, batch_size, device, autocast_dtype(precision, device), progress)
    seconds = time.perf_counter() - t0
    return {"perplexity": math.exp(min(loss, 50)), "loss": loss, "tokens": tokens, "sentences": blocks.n_examples,
            "blocks": len(blocks), "seconds": round(seconds, 3), "tokens_per_s": round(tokens / max(seconds, 1e-9), 1)}


def _scored_in_chunks(model, blocks, batch_size: int, device, dtype, progress: str | None) -> tuple[float, int]:
    """scoring.evaluate_loss over the blocks a few batches at a time, so a bar can move: (mean loss, tokens)."""
    from gpt2tune.console import bar
    from gpt2tune.train.step import evaluate_loss

    chunk = batch_size * 2  # whole batches, so every batch is the one a single call would have scored
    loss_sum, tokens = 0.0, 0
    with bar(len(blocks), progress or "", " blocks", enabled=progress is not None) as shown:
        for start in range(0, len(blocks), chunk):
            part = blocks.rows(list(range(start, min(start + chunk, len(blocks)))))  # in-memory or cached blocks
            loss, n = evaluate_loss(model, part, batch_size, device, dtype)
            loss_sum, tokens = loss_sum + loss * n, tokens + n
            shown.update(len(part))
    return (loss_sum / tokens if tokens else math.nan), tokens


def evaluate(model_path: str, cfg: EvaluateConfig) -> dict[str, Any]:
    """Load a model (run dir, HF dir, hub id, .gguf) and score cfg.data: {perplexity, loss, tokens, ...}."""
    from gpt2tune.data import read
    from gpt2tune.hardware import use_threads
    from gpt2tune.model import load as modeling

    cfg.validate()
    check(bool(cfg.data), "no data: give --data FILE")
    from gpt2tune.data.cache import cached_blocks
    from gpt2tune.data.encode import text_chunks

    modeling.resolve(model_path)  # mistakes in the model or the data fail before anything else is said
    path = read.source(cfg.data)
    threads = use_threads(cfg.threads)
    run = run_config(model_path)
    block_size = cfg.block_size or (run or {}).get("block_size") or 128
    model, tokenizer = modeling.load_seeded(model_path, (run or {}).get("special_tokens", "auto"), device=cfg.device)
    modeling.check_block_size(model, block_size, cfg.batch_size)  # before packing: a huge one fails in a line
    # the file's unique sentences, packed once into the data cache (keyed by content, tokenizer, block size)
    source = f"unique:{read.digest(path)}:{path.format}:{cfg.text_column}"
    blocks = cached_blocks(source, lambda: text_chunks(read.dedupe(read.read_sentences(path, cfg.text_column))),
                           tokenizer, block_size, cfg.cache_dir)
    result = perplexity(model, tokenizer, [], cfg.batch_size, block_size, cfg.precision, blocks=blocks,
                        progress="scoring")
    return {"model": model_path, "data": cfg.data, "block_size": block_size, "threads": threads.threads, **result}


def run_config(path: str) -> dict[str, Any] | None:
    """The config.yaml of a run directory, or None when `path` is not a run directory."""
    p = Path(path)
    if p.is_dir() and (p / "config.yaml").is_file():
        return read_config_file(p / "config.yaml")
    return None


# -------------------------------------------------------------------------------------------------------- compare

# metric, label, which way is better: "lower", "higher", or "closer" (to the held-out sentences' mean length)
METRICS = [
    ("perplexity", "held-out perplexity", "lower"),
    ("eos_rate", "EOS rate", "higher"),
    ("mean_length", "mean length (words)", "closer"),
    ("distinct_1", "distinct-1", "higher"),
    ("distinct_2", "distinct-2", "higher"),
    ("copy_rate", "copy rate", "lower"),
    ("prompt_faithfulness", "prompt faithfulness", "higher"),
]


def heldout_sentences(tuned: str, data_path: str, heldout: str, text_column: str,
                      train_data: str | None) -> tuple[list[str], list[str], str]:
    """Held-out sentences, copy-rate reference sentences, and a line saying where they came from."""
    from gpt2tune.data import read
    from gpt2tune.data.cache import cached_split

    run = run_config(tuned)
    if run and heldout == "auto":
        path = data_path or run.get("data", "")
        check(bool(path), f"{tuned} names no data file; give --data FILE")
        if not (path.startswith(read.HF_PREFIX) or Path(path).exists()):
            raise UserError(f"the run's data file {path} is not there; give --data FILE")
        # the run's own split, made as train made it (a run from before val-size and near-dedupe had neither)
        entry = cached_split(path, run.get("text_column", text_column), float(run.get("val_fraction", 0.1)),
                             int(run.get("seed", 42)), run.get("val_size"), bool(run.get("near_dedupe", False)),
                             run.get("cache_dir"))
        train_s, val_s = list(entry.sentences("train")), list(entry.sentences("val"))
        source = (f"val split of {path} (seed {run.get('seed', 42)}, val fraction {run.get('val_fraction', 0.1)}), "
                  f"as the run {tuned} held it out")
        own = run.get("data", "")
        if own and not read.same(own, path):
            source += f"; NOTE: the run trained on {own}, so these may overlap its training sentences"
    else:
        check(bool(data_path), "no data: give --data FILE")
        val_s = read.dedupe(read.read_sentences(data_path, text_column))
        train_s = val_s
        source = f"all sentences of {data_path}"
    if train_data:
        train_s = read.read_sentences(train_data, text_column)
    return val_s, train_s, source


def compare(base: str, tuned: str, data_path: str = "", keywords: Sequence[str] = tuple(ARTICLE_KEYWORDS),
            sampling: SamplingConfig | None = None, samples: int = 5, heldout: str = "auto",
            train_data: str | None = None, text_column: str = "text", batch_size: int = 8,
            block_size: int | None = None, precision: str = "auto", threads: int | None = None,
            device: str = "auto") -> dict[str, Any]:
    """Score base and tuned on the same held-out sentences and sample both with the same keywords and seeds."""
    from gpt2tune.data import read
    from gpt2tune.hardware import choose_device, use_threads
    from gpt2tune.model import load as modeling
    from gpt2tune.model.sample import sample

    cfg = CompareConfig(base=base, tuned=tuned, data=data_path, out="-", heldout=heldout, train_data=train_data,
                        keywords=list(keywords), samples=samples, text_column=text_column, batch_size=batch_size,
                        block_size=block_size, precision=precision, threads=threads, device=device)
    cfg.validate()
    sampling = dataclasses.replace(sampling or SamplingConfig(), n=samples, precision=precision)
    sampling.validate()
    device = choose_device(cfg.device)  # a device this machine lacks fails before the slow part
    for path in (base, tuned):
        modeling.resolve(path)  # mistakes in the models or the data fail before anything else is said
    val_s, train_s, source = heldout_sentences(tuned, data_path, cfg.heldout, cfg.text_column, cfg.train_data)
    chosen = use_threads(cfg.threads)
    run = run_config(tuned) or {}
    block_size = cfg.block_size or run.get("block_size") or 128
    special = run.get("special_tokens", "auto")
    index = NgramIndex(train_s)
    result: dict[str, Any] = {
        "settings": {"base": base, "tuned": tuned, "heldout": source, "heldout_sentences": len(val_s),
                     "copy_reference_sentences": len(read.dedupe(train_s)), "keywords": list(keywords),
                     "sampling": to_dict(sampling), "block_size": block_size, "precision": cfg.precision,
                     "device": device,
                     "heldout_mean_length": round(mean_length(val_s), 3), "threads": chosen.threads},
    }
    drawn = {}
    for name, path in (("base", base), ("tuned", tuned)):
        model, tokenizer = modeling.load_seeded(path, special, sampling.seed, role=f"{name} model", device=device)
        ppl = perplexity(model, tokenizer, val_s, cfg.batch_size, block_size, cfg.precision,
                         progress=f"{name}: scoring")
        t0 = time.perf_counter()
        drawn[name] = sample(model, tokenizer, list(keywords), sampling, progress=name)
        seconds = time.perf_counter() - t0
        result[name] = {"model": path, "perplexity": ppl["perplexity"], "loss": ppl["loss"],
                        "tokens": ppl["tokens"], **sample_metrics(drawn[name], index),
                        "seconds": {"perplexity": ppl["seconds"], "sampling": round(seconds, 3)}}
        del model
    result["table"] = metrics_table(result["base"], result["tuned"], result["settings"]["heldout_mean_length"])
    result["samples"] = [
        {"keyword": b.prompt, "index": i % sampling.n,
         "base": {"text": b.text, "ended": b.ended}, "tuned": {"text": t.text, "ended": t.ended}}
        for i, (b, t) in enumerate(zip(drawn["base"], drawn["tuned"]))]
    return result


def metrics_table(base: dict[str, Any], tuned: dict[str, Any], reference_length: float) -> list[dict[str, Any]]:
    """One row per metric: both values, which way is better, and the winner (tuned, base or tie)."""
    rows = []
    for key, label, better in METRICS:
        b, t = float(base[key]), float(tuned[key])
        if better == "closer":
            b_score, t_score = -abs(b - reference_length), -abs(t - reference_length)
        else:
            b_score, t_score = (-b, -t) if better == "lower" else (b, t)
        winner = "tie" if math.isclose(b_score, t_score, abs_tol=1e-12) else ("tuned" if t_score > b_score else "base")
        rows.append({"metric": key, "label": label, "better": better, "base": b, "tuned": t, "winner": winner})
    return rows


def format_table(result: dict[str, Any]) -> str:
    """The metrics table as Markdown."""
    ref = result["settings"]["heldout_mean_length"]
    lines = ["| metric | base | tuned | better | winner |", "|---|---:|---:|---|---|"]
    for r in result["table"]:
        better = f"closer to {ref:.1f}" if r["better"] == "closer" else r["better"]
        lines.append(f"| {r['label']} | {r['base']:.4g} | {r['tuned']:.4g} | {better} | {r['winner']} |")
    return "\n".join(lines)


MARKDOWN_SYNTAX = re.compile(r"([\\`*_\[\]|~])")


def markdown_text(value: Any) -> str:
    """Text that a Markdown viewer shows as itself, on one line (a table cell too): HTML escaped as entities,
    Markdown syntax (links, images, emphasis, code, table bars) by backslashes, line breaks as spaces."""
    text = html.escape(" ".join(str(value).split()), quote=False)
    return MARKDOWN_SYNTAX.sub(r"\\\1", text)


def format_markdown(result: dict[str, Any]) -> str:
    """compare.md: settings, the metrics table and the samples side by side (text from models, keywords and
    paths escaped)."""
    s = result["settings"]
    sp = s["sampling"]
    out = ["# Base vs tuned", "",
           f"- base: {markdown_text(s['base'])}", f"- tuned: {markdown_text(s['tuned'])}",
           f"- held-out: {markdown_text(s['heldout'])} ({s['heldout_sentences']:,} sentences)",
           f"- sampling: top-k {sp['top_k']}, top-p {sp['top_p']}, temperature {sp['temperature']}, "
           f"{sp['max_new_tokens']} new tokens, {sp['n']} per keyword, seed {sp['seed']}", "",
           format_table(result), "", "## Samples", "", "| keyword | base | tuned |", "|---|---|---|"]

    def cell(x: dict[str, Any]) -> str:
        return markdown_text(x["text"]) + ("" if x["ended"] else " …")

    for row in result["samples"]:
        out.append(f"| {markdown_text(row['keyword'])} | {cell(row['base'])} | {cell(row['tuned'])} |")
    out += ["", "… = no end token before the length cap."]
    return "\n".join(out) + "\n"


# ------------------------------------------------------------------------------------- compare into a directory

@dataclass
class Comparison:
    """What `compare` wrote: the result, compare.json and compare.md, and the rebuilt report of a run."""

    result: dict[str, Any]
    json: Path
    markdown: Path
    report: Path | None = None


def compare_into(cfg: CompareConfig, sampling: SamplingConfig | None = None,
                 warn: Callable[[str], None] | None = None) -> Comparison:
    """Run compare and write cfg.out/compare.json and compare.md (the one place that writes them); in a run
    directory gpt2tune made (its marker), also rebuild report.html. Existing files are kept unless cfg.overwrite."""
    from gpt2tune.files import atomic_write, check_makeable, make_dir
    from gpt2tune.run.card import write_cards
    from gpt2tune.run.directory import is_run
    from gpt2tune.run.report import write_report

    cfg.validate()
    out = Path(cfg.out)
    check_makeable(out, "--out")  # before the slow part
    files = [out / "compare.json", out / "compare.md"]
    if not cfg.overwrite and any(f.exists() for f in files):
        raise UserError(f"{out} already holds compare.json or compare.md; pass --overwrite to replace them")
    result = compare(cfg.base, cfg.tuned, cfg.data, cfg.keywords, sampling, samples=cfg.samples,
                     heldout=cfg.heldout, train_data=cfg.train_data, text_column=cfg.text_column,
                     batch_size=cfg.batch_size, block_size=cfg.block_size, precision=cfg.precision,
                     threads=cfg.threads, device=cfg.device)
    make_dir(out, "--out")
    atomic_write(files[0], json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    atomic_write(files[1], format_markdown(result))
    report = write_report(out, warn=warn) if is_run(out) else None
    if report is not None:
        write_cards(out, warn=warn)  # the run's model cards show compare's table too
    return Comparison(result, files[0], files[1], report)
