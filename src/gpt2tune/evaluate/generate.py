"""`gpt2tune generate` as a Python API: load a model, then sample plainly, best-of-N, or about a title."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

from gpt2tune.config import SamplingConfig
from gpt2tune.evaluate.best_of import BestOf, Pick, best_of
from gpt2tune.model.sample import Sample, sample


def run_dir(model: str):
    """The run directory a model path belongs to (the path itself, or the parent of its best/ or last/), or None."""
    p = Path(model).expanduser()
    for d in (p, p.parent) if p.name in ("best", "last") else (p,):
        if d.is_dir() and (d / "config.yaml").is_file():
            return d
    return None


def run_copies(run: str | None) -> Callable[[str], bool] | None:
    """The copy check against a run's training sentences (the sentences of conditioned lines), or None when there
    is no run or its data file is gone."""
    from gpt2tune.errors import UserError
    from gpt2tune.evaluate.run import heldout_sentences
    from gpt2tune.evaluate.text_metrics import CopyCheck

    if run is None:
        return None
    try:
        _, train, _ = heldout_sentences(str(run), "", "auto", "text", None, texts_only=True)
    except UserError:
        return None
    return CopyCheck(train)


def draw(model: str, prompts: Sequence[str], cfg: SamplingConfig) -> BestOf:
    """Load a model (run dir's best/, HF dir, hub id or .gguf) and sample: plainly, or best-of cfg.best_of, about
    cfg.about for a run trained with --condition title."""
    from gpt2tune.data.condition import run_prefix
    from gpt2tune.evaluate.run import run_config
    from gpt2tune.model.load import load_seeded
    from gpt2tune.model.source import resolve
    from gpt2tune.threads import use_threads

    cfg.validate()
    resolve(model)  # a missing model fails before anything else is said
    run = run_dir(model)
    prefix = run_prefix(run_config(str(run)) if run else None, cfg.about, model)
    use_threads(cfg.threads)
    # seeded: a model without the start/end tokens gets them drawn at random, and same seed must mean same samples
    lm, tokenizer = load_seeded(model, "auto", cfg.seed)
    if cfg.best_of == 1:
        return BestOf([Pick(s, [], {}) for s in sample(lm, tokenizer, prompts, cfg, True, prefix=prefix)])
    return best_of(lm, tokenizer, prompts, cfg, run_copies(run), progress=True, prefix=prefix)


def generate(model: str, prompts: Sequence[str], **options) -> list[Sample]:
    """Sample from a model; options are SamplingConfig keys (best_of, about included)."""
    from gpt2tune.config import build

    return draw(model, prompts, build(SamplingConfig, options)).samples
