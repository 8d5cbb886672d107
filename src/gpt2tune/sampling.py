"""Sample sentences from keyword prompts: all prompts in one left-padded batch, seeded, stop at <eos>."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Sequence

import torch
from transformers import LogitsProcessor, LogitsProcessorList, PreTrainedModel, PreTrainedTokenizerBase

from .config import SamplingConfig
from .errors import UserError


@dataclass
class Sample:
    """One generated sentence."""

    prompt: str
    text: str  # prompt + continuation, special tokens stripped, cut at `stop`
    ended: bool  # the model produced its end token before the length cap
    new_tokens: int


def prompt_ids(tokenizer: PreTrainedTokenizerBase, prompt: str) -> list[int]:
    """A prompt as the model saw sentences in training: `<sos> prompt` (no end token)."""
    return [tokenizer.bos_token_id] + tokenizer(prompt, add_special_tokens=False)["input_ids"]


@torch.no_grad()
def sample(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompts: Sequence[str],
           cfg: SamplingConfig | None = None) -> list[Sample]:
    """cfg.n samples for each prompt, in prompt order, from one batched generate() call."""
    cfg = cfg or SamplingConfig()
    cfg.validate()
    if not prompts:
        return []
    if any(not p.strip() for p in prompts):
        raise UserError("prompts must not be empty")
    device = next(model.parameters()).device
    encoded = [prompt_ids(tokenizer, p) for p in prompts]
    width = max(len(x) for x in encoded)
    limit = getattr(model.config, "n_positions", None) or getattr(model.config, "max_position_embeddings", None)
    if limit and width + cfg.max_new_tokens > limit:
        raise UserError(f"prompt ({width} tokens) + max-new-tokens ({cfg.max_new_tokens}) exceeds the "
                        f"model's context of {limit} tokens")
    pad = tokenizer.pad_token_id
    input_ids = torch.tensor([[pad] * (width - len(x)) + x for x in encoded], device=device)
    mask = torch.tensor([[0] * (width - len(x)) + [1] * len(x) for x in encoded], device=device)
    greedy = cfg.temperature == 0
    if greedy:
        kwargs = dict(do_sample=False)
    elif cfg.top_k:
        # HF's own TopK/TopP warpers sort the whole vocabulary for every row and step; this one works on the
        # top k only. HF's temperature/top-k/top-p are switched off so nothing runs twice.
        kwargs = dict(do_sample=True, top_k=0, top_p=1.0, temperature=1.0, logits_processor=LogitsProcessorList(
            [TopKTopP(cfg.top_k, cfg.top_p, cfg.temperature)]))
    else:
        kwargs = dict(do_sample=True, top_k=0, top_p=cfg.top_p, temperature=cfg.temperature)
    was_training = model.training
    model.eval()
    devices = [device.index or 0] if device.type == "cuda" else []
    # fork_rng: sampling never disturbs the training run's random stream (resume stays exact)
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(cfg.seed)
        out = model.generate(
            input_ids=input_ids, attention_mask=mask, max_new_tokens=cfg.max_new_tokens,
            num_return_sequences=cfg.n, repetition_penalty=cfg.repetition_penalty,
            eos_token_id=tokenizer.eos_token_id, pad_token_id=pad, **kwargs)
    model.train(was_training)
    samples = []
    for row, seq in enumerate(out.tolist()):
        prompt = prompts[row // cfg.n]
        new = seq[width:]
        ended = tokenizer.eos_token_id in new
        if ended:
            new = new[: new.index(tokenizer.eos_token_id)]
        else:
            new = [t for t in new if t != pad]
        text = tokenizer.decode(encoded[row // cfg.n] + new, skip_special_tokens=True).strip()
        text = cut_at_stop(text, prompt, cfg.stop)
        samples.append(Sample(prompt, text, ended, len(new)))
    return samples


class TopKTopP(LogitsProcessor):
    """Temperature, then top-k, then top-p among the renormalised top k (HF's warper semantics), in one pass."""

    def __init__(self, top_k: int, top_p: float = 1.0, temperature: float = 1.0):
        if top_k < 1 or not 0 < top_p <= 1 or temperature <= 0:
            raise ValueError(f"bad top_k={top_k}, top_p={top_p}, temperature={temperature}")
        self.top_k, self.top_p, self.temperature = top_k, top_p, temperature

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        """scores with every token outside the kept set at -inf."""
        if self.temperature != 1.0:
            scores = scores / self.temperature
        values, indices = torch.topk(scores, min(self.top_k, scores.shape[-1]), dim=-1)  # descending
        if self.top_p < 1.0:
            probs = values.softmax(dim=-1)
            # HF drops a token when the mass at or below it (ascending cumsum) is <= 1 - top_p, i.e. when the
            # mass strictly above it is >= top_p; the most likely token always stays
            above = probs.cumsum(dim=-1) - probs
            drop = above >= self.top_p
            drop[..., 0] = False
            values = values.masked_fill(drop, -float("inf"))
        return torch.full_like(scores, -float("inf")).scatter_(-1, indices, values)


def cut_at_stop(text: str, prompt: str, stop: str | None) -> str:
    """Cut the continuation (not the prompt) at the first occurrence of `stop`."""
    if not stop:
        return text
    start = len(prompt) if text.startswith(prompt) else 0
    at = text.find(stop, start)
    return text if at < 0 else text[:at].rstrip()


def generate(model: str, prompts: Sequence[str], **options) -> list[Sample]:
    """Load a model (run dir's best/, HF dir, hub id or .gguf) and sample from prompts; options are SamplingConfig keys."""
    from . import modeling
    from .config import build

    cfg = build(SamplingConfig, options)
    lm, tokenizer = modeling.load(model, special_tokens="auto")
    return sample(lm, tokenizer, prompts, cfg)


def as_dicts(samples: Sequence[Sample]) -> list[dict]:
    """Samples as JSON-ready dicts."""
    return [dataclasses.asdict(s) for s in samples]
