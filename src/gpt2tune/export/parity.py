"""Does an exported GGUF compute what the PyTorch model computes? Read it back with transformers and compare."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import torch

from gpt2tune.hardware import to_device
from gpt2tune.model import gguf_read

F32_TOLERANCE = 1e-4  # max |logit difference| relative to the largest logit, for an unquantised file
MIN_TOP1 = 0.99  # next-token top-1 agreement for f16, bf16 and q8_0 files (the default)
TOKENIZER_PROBE = "Japan Tokyo"


@dataclass
class Parity:
    """Next-token logits of the file vs the model, over every position of the prompts."""

    kind: str
    positions: int
    max_rel_diff: float
    top1: float
    mean_kl: float
    problems: list[str] = field(default_factory=list)
    probe_ids: list[int] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.problems

    def line(self) -> str:
        return (f"parity ({self.kind}, {self.positions} positions read back by transformers): top-1 agreement "
                f"{self.top1:.2%}, mean KL {self.mean_kl:.2e} nats, max |logit diff| {self.max_rel_diff:.2e} "
                f"of the largest logit; '{TOKENIZER_PROBE}' -> {self.probe_ids}")


def read_back(path: Path):
    """The model and tokenizer transformers makes of a GGUF file (weights de-quantised to float32)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    directory, name = str(path.parent), path.name
    with gguf_read.one_parse():
        cfg = gguf_read.config(directory, name)
        model = AutoModelForCausalLM.from_pretrained(directory, gguf_file=name, config=cfg, dtype=torch.float32,
                                                     quantization_config=GgufConfig(dequantize=True))
        tokenizer = AutoTokenizer.from_pretrained(directory, gguf_file=name)
    return model.eval(), tokenizer


def prompt_ids(tokenizer, prompts: Sequence[str]) -> list[list[int]]:
    """Each prompt as the model saw sentences in training: the start token, then the text."""
    start = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    return [start + tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]


@torch.no_grad()
def _logits(model, ids: list[list[int]]) -> torch.Tensor:
    device = next(model.parameters()).device
    return torch.cat([model(torch.tensor([x], device=device)).logits[0].double().cpu() for x in ids])


def compare_logits(ref: torch.Tensor, got: torch.Tensor) -> tuple[float, float, float]:
    """(max |diff| / max |ref|, top-1 agreement, mean KL(ref || got) in nats) over rows of next-token logits."""
    rel = ((ref - got).abs().max() / ref.abs().max().clamp_min(1e-30)).item()
    top1 = (ref.argmax(-1) == got.argmax(-1)).double().mean().item()
    logp, logq = ref.log_softmax(-1), got.log_softmax(-1)
    kl = (logp.exp() * (logp - logq)).sum(-1).mean().item()
    return rel, top1, max(kl, 0.0)


def _tokenizer_problems(tokenizer, back, prompts: Sequence[str]) -> list[str]:
    problems = []
    for kind in ("bos", "eos", "pad"):
        want, got = getattr(tokenizer, f"{kind}_token_id"), getattr(back, f"{kind}_token_id")
        if want is not None and want != got:
            problems.append(f"{kind} token id {got}, expected {want}")
    for text in [TOKENIZER_PROBE, *prompts]:
        want = tokenizer(text, add_special_tokens=False)["input_ids"]
        got = back(text, add_special_tokens=False)["input_ids"]
        if want != got:
            problems.append(f"tokenizer: {text!r} -> {got[:12]}, expected {want[:12]}")
            break
    return problems


def check(model, tokenizer, path: Path, kind: str, prompts: Sequence[str], min_top1: float = MIN_TOP1,
          device: str = "auto") -> Parity:
    """Compare `model` with what transformers reads back from `path`, on every position of `prompts`, both on
    the chosen device."""
    back_model, back_tokenizer = read_back(path)
    to_device(model, device)
    to_device(back_model, device)
    problems = _tokenizer_problems(tokenizer, back_tokenizer, prompts)
    ids = prompt_ids(tokenizer, prompts)
    model.eval()
    ref, got = _logits(model, ids), _logits(back_model, ids)
    if ref.shape != got.shape:
        problems.append(f"logits of shape {tuple(got.shape)}, expected {tuple(ref.shape)}")
        return Parity(kind, len(ref), float("inf"), 0.0, float("inf"), problems)
    rel, top1, kl = compare_logits(ref, got)
    if kind == "f32" and not rel <= F32_TOLERANCE:
        problems.append(f"logits differ by up to {rel:.2e} of the largest (allowed {F32_TOLERANCE:.0e})")
    if kind != "f32" and not top1 >= min_top1:
        problems.append(f"top-1 agreement {top1:.2%} (needed {min_top1:.0%}; mean KL {kl:.3g} nats)")
    probe = back_tokenizer(TOKENIZER_PROBE, add_special_tokens=False)["input_ids"]
    return Parity(kind, len(ref), rel, top1, kl, problems, probe)
