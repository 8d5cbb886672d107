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

from gpt2tune.config import SamplingConfig, check, read_config_file, to_dict
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
    from gpt2tune.model.source import resolve

    cfg.validate()
    check(bool(cfg.data), "no data: give --data FILE")
    resolve(model_path)  # mistakes in the model or the data fail before anything else is said (or loads)
    path = read.source(cfg.data)
    from gpt2tune.data.cache import cached_blocks
    from gpt2tune.data.encode import text_chunks
    from gpt2tune.model import load as modeling
    from gpt2tune.threads import use_threads

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
                      train_data: str | None, texts_only: bool = False) -> tuple[list[str], list[str], str]:
    """Held-out sentences, copy-rate reference sentences, and a line saying where they came from (a run trained
    with --condition title: its "title: sentence" lines, or with `texts_only` the sentences alone)."""
    from gpt2tune.data import read
    from gpt2tune.data.cache import cached_split

    run = run_config(tuned)
    if run and heldout == "auto":
        path = data_path or run.get("data", "")
        check(bool(path), f"{tuned} names no data file; give --data FILE")
        if not (path.startswith(read.HF_PREFIX) or Path(path).exists()):
            raise UserError(f"the run's data file {path} is not there; give --data FILE")
        # the run's own split, made as train made it (a run from before val-size and near-dedupe had neither)
        entry = cached_split(str(run_file(run, path)), run.get("text_column", text_column),
                             float(run.get("val_fraction", 0.1)), int(run.get("seed", 42)), run.get("val_size"),
                             bool(run.get("near_dedupe", False)), run.get("cache_dir"))
        train_s, val_s = list(entry.sentences("train")), list(entry.sentences("val"))
        source = (f"val split of {path} (seed {run.get('seed', 42)}, val fraction {run.get('val_fraction', 0.1)}), "
                  f"as the run {tuned} held it out")
        own = run.get("data", "")
        if own and not read.same(own, path):
            source += f"; NOTE: the run trained on {own}, so these may overlap its training sentences"
        if texts_only and run.get("condition") == "title":
            texts = line_texts(run, path, text_column)
            val_s, train_s = [texts.get(s, s) for s in val_s], [texts.get(s, s) for s in train_s]
    else:
        check(bool(data_path), "no data: give --data FILE")
        val_s = read.dedupe(read.read_sentences(data_path, text_column))
        train_s = val_s
        source = f"all sentences of {data_path}"
    if train_data:
        train_s = read.read_sentences(train_data, text_column)
    return val_s, train_s, source


def run_file(run: dict[str, Any], path: str) -> Path:
    """The file whose lines a run trained on: its data file, or the "title: sentence" lines made from it."""
    from gpt2tune.config import TrainConfig, build
    from gpt2tune.data.condition import training_file

    keys = ("text_column", "condition", "title_column", "condition_format", "cache_dir")
    return training_file(build(TrainConfig, {k: v for k, v in run.items() if k in keys}, {"data": path}))


def line_texts(run: dict[str, Any], path: str, text_column: str) -> dict[str, str]:
    """A conditioned run's training lines -> their sentences."""
    from gpt2tune.data.condition import FORMAT, read_titled

    fmt = str(run.get("condition_format") or FORMAT)
    return {row.line(fmt): row.text for row in read_titled(path, run.get("text_column", text_column),
                                                            run.get("title_column", "title"))}


def topic_report(model, tokenizer, run: dict[str, Any], path: str, text_column: str, val_lines: Sequence[str],
                 keywords: list[str], sampling: SamplingConfig) -> dict[str, Any]:
    """A title-conditioned run's val sentences scored with their true title and without one, and how often
    samples about a title mention it (one sample per keyword and title)."""
    from gpt2tune.data.condition import FORMAT, read_titled
    from gpt2tune.evaluate.topic import about_rates, title_perplexity

    fmt = str(run.get("condition_format") or FORMAT)
    rows = read_titled(path, run.get("text_column", text_column), run.get("title_column", "title"))
    by_line = {r.line(fmt): r for r in rows}
    val = [by_line[x] for x in val_lines if x in by_line]
    return {**title_perplexity(model, tokenizer, val, fmt),
            **about_rates(model, tokenizer, rows, val, fmt, keywords, dataclasses.replace(sampling, n=1))}


def compare_keywords(keywords: Sequence[str], run: dict[str, Any], reference: Sequence[str]) -> list[str]:
    """compare's prompts: auto = the run's recorded keywords, else chosen from the reference sentences."""
    from gpt2tune.data.keywords import ARTICLE, AUTO, from_corpus, resolve

    if list(keywords) == [AUTO]:
        recorded = run.get("keywords")
        if isinstance(recorded, str):
            recorded = [k.strip() for k in recorded.split(",") if k.strip()]
        if recorded and recorded not in ([AUTO], [ARTICLE]):
            return [str(k) for k in recorded]
        keywords = recorded or keywords
        if list(keywords) == [AUTO]:
            return from_corpus(reference)
    return resolve(keywords)


def compare(base: str, tuned: str, data_path: str = "", keywords: Sequence[str] = ("auto",),
            sampling: SamplingConfig | None = None, samples: int = 5, heldout: str = "auto",
            train_data: str | None = None, text_column: str = "text", batch_size: int = 8,
            block_size: int | None = None, precision: str = "auto", threads: int | None = None,
            device: str = "auto") -> dict[str, Any]:
    """Score base and tuned on the same held-out sentences and sample both with the same keywords and seeds."""
    from gpt2tune.data import read
    from gpt2tune.evaluate.best_of import best_of
    from gpt2tune.evaluate.text_metrics import CopyCheck
    from gpt2tune.hardware import choose_device
    from gpt2tune.model import load as modeling
    from gpt2tune.model.sample import sample
    from gpt2tune.model.source import resolve
    from gpt2tune.threads import use_threads

    cfg = CompareConfig(base=base, tuned=tuned, data=data_path, out="-", heldout=heldout, train_data=train_data,
                        keywords=list(keywords), samples=samples, text_column=text_column, batch_size=batch_size,
                        block_size=block_size, precision=precision, threads=threads, device=device)
    cfg.validate()
    sampling = dataclasses.replace(sampling or SamplingConfig(), n=samples, precision=precision)
    sampling.validate()
    device = choose_device(cfg.device)  # a device this machine lacks fails before the slow part
    many, sampling = sampling.best_of, dataclasses.replace(sampling, best_of=1)  # best-of: an extra column
    for path in (base, tuned):
        resolve(path)  # mistakes in the models or the data fail before anything else is said
    val_s, train_s, source = heldout_sentences(tuned, data_path, cfg.heldout, cfg.text_column, cfg.train_data)
    run = run_config(tuned) or {}
    if run.get("condition") == "title" and cfg.heldout == "auto" and not cfg.train_data:
        texts = line_texts(run, data_path or run.get("data", ""), cfg.text_column)
        train_s = [texts.get(s, s) for s in train_s]  # samples are sentences: check them against sentences
    chosen = use_threads(cfg.threads)
    block_size = cfg.block_size or run.get("block_size") or 128
    special = run.get("special_tokens", "auto")
    keywords = compare_keywords(keywords, run, train_s)
    check(bool(keywords), "no keyword prompts: none were chosen from the sentences; give --keywords")
    index = NgramIndex(train_s)
    result: dict[str, Any] = {
        "settings": {"base": base, "tuned": tuned, "heldout": source, "heldout_sentences": len(val_s),
                     "copy_reference_sentences": len(read.dedupe(train_s)), "keywords": list(keywords),
                     "sampling": to_dict(sampling), "block_size": block_size, "precision": cfg.precision,
                     "device": device,
                     "heldout_mean_length": round(mean_length(val_s), 3), "threads": chosen.threads,
                     "best_of": many},
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
        if name == "tuned" and run.get("condition") == "title" and cfg.heldout == "auto":
            result["topic"] = topic_report(model, tokenizer, run, data_path or run.get("data", ""), cfg.text_column,
                                           val_s, list(keywords), sampling)
        if name == "tuned" and many > 1:
            t0 = time.perf_counter()
            picked = best_of(model, tokenizer, list(keywords), dataclasses.replace(sampling, best_of=many),
                             CopyCheck(train_s, index=index), progress=f"tuned, best of {many}")
            seconds = time.perf_counter() - t0
            drawn["best_of"] = picked.samples
            result["best_of"] = {"model": path, "perplexity": ppl["perplexity"], "loss": ppl["loss"],
                                 "tokens": ppl["tokens"], **sample_metrics(picked.samples, index),
                                 "seconds": {"perplexity": ppl["seconds"], "sampling": round(seconds, 3)},
                                 "counts": picked.totals}
        del model
    result["table"] = metrics_table(result["base"], result["tuned"], result["settings"]["heldout_mean_length"],
                                    result.get("best_of"))
    result["samples"] = [
        {"keyword": b.prompt, "index": i % sampling.n,
         "base": {"text": b.text, "ended": b.ended}, "tuned": {"text": t.text, "ended": t.ended},
         **({"best_of": {"text": drawn["best_of"][i].text, "ended": drawn["best_of"][i].ended}}
            if "best_of" in drawn else {})}
        for i, (b, t) in enumerate(zip(drawn["base"], drawn["tuned"]))]
    return result


def metrics_table(base: dict[str, Any], tuned: dict[str, Any], reference_length: float,
                  best_of: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """One row per metric: both values, which way is better, and the winner (tuned, base or tie); with `best_of`,
    the tuned model's best-of-N value too (outside the contest: the same model, sampled another way)."""
    rows = []
    for key, label, better in METRICS:
        b, t = float(base[key]), float(tuned[key])
        if better == "closer":
            b_score, t_score = -abs(b - reference_length), -abs(t - reference_length)
        else:
            b_score, t_score = (-b, -t) if better == "lower" else (b, t)
        winner = "tie" if math.isclose(b_score, t_score, abs_tol=1e-12) else ("tuned" if t_score > b_score else "base")
        rows.append({"metric": key, "label": label, "better": better, "base": b, "tuned": t, "winner": winner,
                     **({"best_of": float(best_of[key])} if best_of else {})})
    return rows


def format_table(result: dict[str, Any]) -> str:
    """The metrics table as Markdown."""
    ref = result["settings"]["heldout_mean_length"]
    many = result["settings"].get("best_of", 1) if "best_of" in result else 1
    extra = f" tuned, best of {many} |" if many > 1 else ""
    lines = [f"| metric | base | tuned |{extra} better | winner |",
             "|---|---:|---:|" + "---:|" * (many > 1) + "---|---|"]
    for r in result["table"]:
        better = f"closer to {ref:.1f}" if r["better"] == "closer" else r["better"]
        cell = f" {r['best_of']:.4g} |" if many > 1 else ""
        lines.append(f"| {r['label']} | {r['base']:.4g} | {r['tuned']:.4g} |{cell} {better} | {r['winner']} |")
    if "topic" in result:
        t = result["topic"]
        lines.append(f"\nheld-out perplexity of the tuned model on {t['sentences']:,} val sentences: "
                     f"{t['perplexity_with_title']:.2f} with their true title, {t['perplexity_without_title']:.2f} "
                     f"without ({t['lower_by']:.1%} lower with it)")
        lines.append(f"samples --about a title that mention it or a word of its page: {t['mention_rate_about']:.0%}, "
                     f"against {t['mention_rate_without']:.0%} without --about ({t['samples']} samples, titles: "
                     f"{', '.join(t['titles'])})")
    if many > 1:
        t = result["best_of"]
        lines.append(f"\nbest of {many}: {result['best_of']['counts']['drawn']} candidates drawn; sampling took "
                     f"{t['seconds']['sampling']:.1f} s against {result['tuned']['seconds']['sampling']:.1f} s plain "
                     f"({t['seconds']['sampling'] / max(result['tuned']['seconds']['sampling'], 1e-9):.2f}x)")
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
