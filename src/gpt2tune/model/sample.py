"""Sample sentences from keyword prompts: all prompts in one left-padded batch, seeded, stop at <eos>."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Sequence

import torch
from transformers import (
    LogitsProcessor,
    LogitsProcessorList,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    StoppingCriteria,
    StoppingCriteriaList,
)

from gpt2tune.config import SamplingConfig
from gpt2tune.console import bar
from gpt2tune.errors import UserError
from gpt2tune.files import is_text
from gpt2tune.hardware import autocast_dtype
from gpt2tune.model.load import context_length


@dataclass
class Sample:
    """One generated sentence."""

    prompt: str
    text: str  # prompt + continuation, special tokens stripped, cut at `stop`
    ended: bool  # the model produced its end token before the length cap
    new_tokens: int
    logprob: float | None = None  # mean log-probability of its new tokens (and end token), when scored


def prompt_ids(tokenizer: PreTrainedTokenizerBase, prompt: str) -> list[int]:
    """A prompt as the model saw sentences in training: `<sos> prompt` (no end token)."""
    return [tokenizer.bos_token_id] + tokenizer(prompt, add_special_tokens=False)["input_ids"]


def sample(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompts: Sequence[str],
           cfg: SamplingConfig | None = None, progress: bool | str = False, score: bool = False,
           prefix: str = "") -> list[Sample]:
    """cfg.n samples for each prompt, in prompt order, from one batched generate() call (with `progress`, a bar
    over the new tokens once it takes more than a couple of seconds; a string names it; with `score`, each
    sample's mean token log-probability under the model, read off the same call; a `prefix` goes before every
    prompt, unseen in the texts: a conditioned run's "<title>: ")."""
    cfg = cfg or SamplingConfig()
    cfg.validate()
    if not prompts:
        return []
    if any(not p.strip() for p in prompts):
        raise UserError("prompts must not be empty")
    for p in prompts:
        if not is_text(p):
            raise UserError(f"prompt {ascii(p)[:40]} is not valid text: it holds a lone surrogate (bytes that are "
                            "not UTF-8?)")
    recorder = TokenLogProbs() if score else None
    out, encoded = generate_ids(model, tokenizer, [prefix + p for p in prompts], cfg, progress, recorder)
    width = max(len(x) for x in encoded)
    logprobs = recorder.finish(out).tolist() if recorder else None
    samples = []
    for row, seq in enumerate(out.tolist()):
        prompt = prompts[row // cfg.n]
        new = seq[width:]
        ended = tokenizer.eos_token_id in new
        if ended:
            new = new[: new.index(tokenizer.eos_token_id)]
        else:
            new = [t for t in new if t != tokenizer.pad_token_id]
        text = tokenizer.decode(encoded[row // cfg.n] + new, skip_special_tokens=True).strip()
        if prefix and text.startswith(prefix.strip()):
            text = text[len(prefix.strip()):].strip()
        text = cut_at_stop(text, prompt, cfg.stop)
        scored = None
        if logprobs is not None:
            counted = logprobs[row][:len(new) + ended]  # the end token's probability counts: ending is a choice
            scored = sum(counted) / len(counted) if counted else 0.0
        samples.append(Sample(prompt, text, ended, len(new), scored))
    return samples


@torch.no_grad()
def generate_ids(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompts: Sequence[str],
                 cfg: SamplingConfig, progress: bool | str = False, recorder: "TokenLogProbs | None" = None
                 ) -> tuple[torch.Tensor, list[list[int]]]:
    """(token ids: cfg.n rows per prompt, left-padded prompt then new tokens; each prompt's ids); a recorder sees
    the model's scores before any sampling rule changes them."""
    device = next(model.parameters()).device
    encoded = [prompt_ids(tokenizer, p) for p in prompts]
    width = max(len(x) for x in encoded)
    limit = context_length(model)
    if limit and width + cfg.max_new_tokens > limit:
        raise UserError(f"prompt ({width} tokens) + max-new-tokens ({cfg.max_new_tokens}) exceeds the "
                        f"model's context of {limit} tokens")
    pad = tokenizer.pad_token_id
    # every prompt's row repeated n times (what num_return_sequences does inside generate())
    input_ids = torch.tensor([[pad] * (width - len(x)) + x for x in encoded for _ in range(cfg.n)], device=device)
    mask = torch.tensor([[0] * (width - len(x)) + [1] * len(x) for x in encoded for _ in range(cfg.n)],
                        device=device)
    first = [recorder] if recorder else []
    if cfg.temperature == 0:
        kwargs = dict(do_sample=False, logits_processor=LogitsProcessorList(first))
    elif cfg.top_k or recorder:
        # HF's sampler sorts and draws over the whole 50k vocabulary for every row and step; DrawTopKTopP draws
        # among the top k itself and hands generate() a one-hot choice, which its greedy path just reads off (a
        # recorder needs this path even with top-k off: HF would hand it scores its own warpers had changed)
        kwargs = dict(do_sample=False, logits_processor=LogitsProcessorList(
            first + [DrawTopKTopP(cfg.top_k or 2**62, cfg.top_p, cfg.temperature)]))
    else:
        kwargs = dict(do_sample=True, top_k=0, top_p=cfg.top_p, temperature=cfg.temperature)
    dtype = autocast_dtype(cfg.precision, device)
    was_training = model.training
    model.eval()
    # fork_rng: sampling never disturbs the training run's random streams (resume stays exact), the device's too
    with torch.random.fork_rng(devices=[device] if device.type != "cpu" else [], device_type=device.type), \
            torch.autocast(device.type, dtype=dtype or torch.float32,
                                                                 enabled=dtype is not None):
        torch.manual_seed(cfg.seed)
        desc = f"{progress + ': ' if isinstance(progress, str) else ''}sampling {len(input_ids)} rows"
        with bar(cfg.max_new_tokens, desc, " tokens", enabled=bool(progress)) as tokens:
            out = model.generate(
                input_ids=input_ids, attention_mask=mask, max_new_tokens=cfg.max_new_tokens,
                repetition_penalty=cfg.repetition_penalty, eos_token_id=tokenizer.eos_token_id, pad_token_id=pad,
                stopping_criteria=StoppingCriteriaList([_Tick(tokens)] if progress else []), **kwargs)
    model.train(was_training)
    return out, encoded


class TokenLogProbs(LogitsProcessor):
    """Records the log-probability the model gave each token drawn (it must come before any processor that changes
    the scores; a repetition penalty, which generate() applies first, is included); leaves the scores alone."""

    def __init__(self) -> None:
        self.steps: list[torch.Tensor] = []
        self.last: torch.Tensor | None = None  # the latest step's log-probabilities, until its token is known

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        self._take(input_ids)
        self.last = scores.float().log_softmax(dim=-1)
        return scores

    def _take(self, ids: torch.Tensor) -> None:
        if self.last is not None:
            self.steps.append(self.last.gather(-1, ids[:, -1:]).squeeze(-1))
            self.last = None

    def finish(self, out: torch.Tensor) -> torch.Tensor:
        """(rows, new tokens) log-probabilities of the tokens drawn, given the ids generate() returned."""
        self._take(out)
        return torch.stack(self.steps, dim=1).cpu() if self.steps else torch.zeros(len(out), 0)


class _Tick(StoppingCriteria):
    """Never stops generation; moves a progress bar one token per decoding step."""

    def __init__(self, progress) -> None:
        self.progress = progress

    def __call__(self, input_ids: torch.LongTensor, scores, **kwargs) -> torch.BoolTensor:
        self.progress.update(1)
        return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)


class TopKTopP(LogitsProcessor):
    """Temperature, then top-k, then top-p among the renormalised top k (HF's warper semantics), in one pass."""

    def __init__(self, top_k: int, top_p: float = 1.0, temperature: float = 1.0):
        if top_k < 1 or not 0 < top_p <= 1 or temperature <= 0:
            raise ValueError(f"bad top_k={top_k}, top_p={top_p}, temperature={temperature}")
        self.top_k, self.top_p, self.temperature = top_k, top_p, temperature

    def kept(self, scores: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(values, token ids) of the top k per row, descending; values of tokens top-p drops are -inf."""
        if self.temperature != 1.0:
            scores = scores / self.temperature
        values, indices = torch.topk(scores, min(self.top_k, scores.shape[-1]), dim=-1)
        if self.top_p < 1.0:
            probs = values.softmax(dim=-1)
            # HF drops a token when the mass at or below it (ascending cumsum) is <= 1 - top_p, i.e. when the
            # mass strictly above it is >= top_p; the most likely token always stays
            above = probs.cumsum(dim=-1) - probs
            drop = above >= self.top_p
            drop[..., 0] = False
            values = values.masked_fill(drop, -float("inf"))
        return values, indices

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        """scores with every token outside the kept set at -inf."""
        values, indices = self.kept(scores)
        return torch.full_like(scores, -float("inf")).scatter_(-1, indices, values)


class DrawTopKTopP(TopKTopP):
    """Draws each row's next token from TopKTopP's kept set (the same probabilities HF's sampler would use) and
    returns 0 for it, -inf for every other token: generate(do_sample=False) then takes exactly that token.

    Only the k candidates are soft-maxed and drawn from, not the whole vocabulary. Must be the last processor.
    """

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        values, indices = self.kept(scores)
        pick = torch.multinomial(values.float().softmax(dim=-1), 1)
        return torch.full_like(scores, -float("inf")).scatter_(-1, indices.gather(-1, pick), 0.0)


def cut_at_stop(text: str, prompt: str, stop: str | None) -> str:
    """Cut the continuation (not the prompt) at the first occurrence of `stop`."""
    if not stop:
        return text
    start = len(prompt) if text.startswith(prompt) else 0
    at = text.find(stop, start)
    return text if at < 0 else text[:at].rstrip()


def generate(model: str, prompts: Sequence[str], **options) -> list[Sample]:
    """Load a model (run dir's best/, HF dir, hub id or .gguf) and sample from prompts; options are SamplingConfig keys."""
    from gpt2tune.config import build
    from gpt2tune.model import load as modeling
    from gpt2tune.model.source import resolve
    from gpt2tune.threads import use_threads

    cfg = build(SamplingConfig, options)
    resolve(model)  # a missing model fails before anything else is said
    use_threads(cfg.threads)
    # seeded: a model without the start/end tokens gets them drawn at random, and same seed must mean same samples
    lm, tokenizer = modeling.load_seeded(model, "auto", cfg.seed, device=cfg.device)
    return sample(lm, tokenizer, prompts, cfg, progress=True)


def as_dicts(samples: Sequence[Sample]) -> list[dict]:
    """Samples as JSON-ready dicts (logprob only where it was scored)."""
    return [{k: v for k, v in dataclasses.asdict(s).items() if k != "logprob" or v is not None} for s in samples]
