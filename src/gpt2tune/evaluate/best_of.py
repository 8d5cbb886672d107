"""Best-of-N sampling: N candidates for every sample wanted, drawn in one batched call; those that end their
sentence, recite no training sentence, repeat no 4-gram and continue their prompt are ranked by the model's mean
token log-likelihood, and the best are kept. How many were dropped, and why, is counted per prompt."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from gpt2tune.config import SamplingConfig
from gpt2tune.evaluate.text_metrics import is_faithful, repeats_ngram
from gpt2tune.model.sample import Sample, sample

# the checks, in the order a reader meets them; a candidate can fail several
CHECKS = {
    "not_ended": "no end of sentence before the length cap",
    "copy": "recites a training sentence",
    "repeat": "repeats a 4-gram",
    "off_prompt": "does not continue its prompt as one sentence",
}


@dataclass
class Pick:
    """A kept sample, the checks it failed (none unless too few candidates passed) and its prompt's counts."""

    sample: Sample
    failed: list[str]
    counts: dict[str, Any]

    def as_dict(self) -> dict[str, Any]:
        """The sample as JSON-ready dict, with what best-of did."""
        return {**dataclasses.asdict(self.sample), "failed": self.failed, "best_of": self.counts}


@dataclass
class BestOf:
    """What best-of sampling kept, per prompt in order, and its counts over all prompts."""

    picks: list[Pick]
    totals: dict[str, Any] = field(default_factory=dict)

    @property
    def samples(self) -> list[Sample]:
        return [p.sample for p in self.picks]

    def summary(self) -> str:
        """One line: drawn, kept, dropped and why."""
        t = self.totals
        why = ", ".join(f"{CHECKS[k]} {v}" for k, v in t["dropped"].items() if v) or "none"
        copy = "" if t["copy_checked"] else " (no training sentences to check copies against)"
        short = f"; {t['short']} kept despite failing a check (too few passed)" if t["short"] else ""
        return (f"best-of {t['best_of']}: {t['drawn']} candidates drawn for {t['kept']} samples; "
                f"{t['failed']} failed a check (reasons: {why}){copy}; {t['outranked']} passed but were "
                f"less likely{short}")


def faults(s: Sample, copies: Callable[[str], bool] | None) -> list[str]:
    """The checks a candidate fails, by CHECKS key."""
    failed = []
    if not s.ended:
        failed.append("not_ended")
    if copies is not None and copies(s.text):
        failed.append("copy")
    if repeats_ngram(s.text, 4):
        failed.append("repeat")
    if not is_faithful(s.text, s.prompt):
        failed.append("off_prompt")
    return failed


def choose(candidates: Sequence[Sample], n: int, copies: Callable[[str], bool] | None) -> list[Pick]:
    """The n best of one prompt's candidates: those failing no check, most likely first, each text once; when
    fewer pass, the rest are those failing the fewest checks, most likely first (marked by what they failed)."""
    failed = [faults(c, copies) for c in candidates]
    order = sorted(range(len(candidates)), key=lambda i: (len(failed[i]), -(candidates[i].logprob or 0.0), i))
    first, seen = [], set()
    for i in order:  # a text drawn twice is kept once while others are left
        if candidates[i].text not in seen:
            seen.add(candidates[i].text)
            first.append(i)
    order = first + [i for i in order if i not in set(first)]
    passed = sum(not f for f in failed)
    counts = {"drawn": len(candidates), "passed": passed, "outranked": max(passed - n, 0),
              "dropped": {k: sum(k in f for f in failed) for k in CHECKS}}
    return [Pick(candidates[i], failed[i], counts) for i in order[:n]]


def best_of(model, tokenizer, prompts: Sequence[str], cfg: SamplingConfig,
            copies: Callable[[str], bool] | None = None, progress: bool | str = False, prefix: str = "") -> BestOf:
    """cfg.n samples per prompt, each the best of cfg.best_of candidates, all drawn in one generate() call."""
    n, many = cfg.n, cfg.best_of
    drawn = sample(model, tokenizer, prompts, dataclasses.replace(cfg, n=n * many, best_of=1), progress,
                   score=True, prefix=prefix)
    picks: list[Pick] = []
    for i in range(len(prompts)):
        picks += choose(drawn[i * n * many:(i + 1) * n * many], n, copies)
    return BestOf(picks, totals(picks, prompts, n, many, copies is not None))


def totals(picks: list[Pick], prompts: Sequence[str], n: int, many: int, copy_checked: bool) -> dict[str, Any]:
    """The counts of every prompt added up."""
    groups = [picks[i * n].counts for i in range(len(prompts)) if picks]
    return {"best_of": many, "drawn": sum(g["drawn"] for g in groups), "kept": len(picks),
            "passed": sum(g["passed"] for g in groups), "failed": sum(g["drawn"] - g["passed"] for g in groups),
            "outranked": sum(g["outranked"] for g in groups), "short": sum(bool(p.failed) for p in picks),
            "dropped": {k: sum(g["dropped"][k] for g in groups) for k in CHECKS}, "copy_checked": copy_checked}
