"""Dropout on a CPU at memory speed: masks from 64-bit random words, not one Bernoulli draw per element.

PyTorch's CPU `bernoulli_` (behind `F.dropout` and the dropout inside SDPA's math kernel) uses MKL's vectorised
generator only on Intel CPUs; on others (AMD, Arm) it draws each element in turn from mt19937. Measured here
(AMD EPYC, 2 threads): `F.dropout` on the 1.6M attention probabilities of one GPT-2 124M layer at 8x128 tokens
takes 12.6 ms, and dropout was ~9% of a 124M training step. Here the same torch generator fills 64-bit words
(~4 ns each), and each word gives four 16-bit uniform numbers: an element is dropped when its number falls below
round(p * 65536), so the drop probability is p to within 1/65536. The mask is kept as bool for the backward pass.

Only CPU training takes this path; on a GPU, in eval mode and with p = 0 PyTorch's own kernels run. The random
stream is torch's default CPU generator, so seeds, resume and activation checkpointing replay the same masks.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from transformers.integrations.sdpa_attention import repeat_kv, sdpa_attention_forward

ATTENTION = "gpt2tune_sdpa"  # registered name of the attention below (SDPA, with this dropout on a CPU)


def keep_mask(shape: torch.Size | tuple[int, ...], p: float, device: torch.device | str = "cpu") -> torch.Tensor:
    """A bool tensor of `shape`: True with probability 1 - p (p rounded to a multiple of 1/65536)."""
    n = math.prod(shape)
    words = torch.empty((n + 3) // 4, dtype=torch.int64, device=device).random_(-2 ** 63, None)
    uniform16 = words.view(torch.int16)[:n].view(shape)  # each in [-32768, 32767], uniform
    return uniform16 >= -32768 + round(p * 65536)


class _Dropout(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, p: float) -> torch.Tensor:
        keep = keep_mask(x.shape, p, x.device)
        ctx.scale = 1.0 / (1.0 - p)
        ctx.save_for_backward(keep)
        return _apply(x, keep, ctx.scale)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (keep,) = ctx.saved_tensors
        return _apply(grad, keep, ctx.scale), None


def _apply(x: torch.Tensor, keep: torch.Tensor, scale: float) -> torch.Tensor:
    # times the mask as uint8 (a vectorised mixed-dtype multiply; a bool operand runs 3x slower here)
    return (x * keep.view(torch.uint8)).mul_(scale)


def dropout(x: torch.Tensor, p: float, training: bool = True) -> torch.Tensor:
    """F.dropout, with the fast mask on a CPU."""
    if not training or p == 0.0:
        return x
    if x.device.type != "cpu" or p >= 1.0:
        return F.dropout(x, p, True)
    return _Dropout.apply(x, p)


class Dropout(nn.Dropout):
    """nn.Dropout with the fast CPU mask (same `p`, same state dict: none)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return dropout(x, self.p, self.training)


def attention(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
              attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
              is_causal: bool | None = None, **kwargs):
    """transformers' SDPA attention; while training on a CPU with attention dropout, the math it would fall back
    to anyway (SDPA's fused CPU kernels take no dropout), with the fast dropout."""
    if not (dropout > 0.0 and query.device.type == "cpu" and torch.is_grad_enabled()):
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout,
                                      scaling=scaling, is_causal=is_causal, **kwargs)
    groups = getattr(module, "num_key_value_groups", 1)
    if groups > 1:
        key, value = repeat_kv(key, groups), repeat_kv(value, groups)
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    scores = torch.matmul(query * scale, key.transpose(-1, -2))
    q_len, k_len = scores.shape[-2:]
    if attention_mask is None:
        attention_mask = torch.ones(q_len, k_len, dtype=torch.bool, device=query.device).tril(k_len - q_len)
    if attention_mask.dtype == torch.bool:
        scores = scores.masked_fill(~attention_mask[..., :k_len], float("-inf"))
    else:
        scores = scores + attention_mask[..., :k_len]
    probs = torch.softmax(scores, dim=-1).to(value.dtype)  # bf16 under autocast: computed in fp32, stored in bf16
    out = torch.matmul(_Dropout.apply(probs, dropout), value)
    return out.transpose(1, 2).contiguous(), None


def use_cpu_dropout(model: nn.Module) -> int:
    """Swap the model's nn.Dropout modules for Dropout and, where it runs transformers' SDPA attention, route its
    attention through `attention`; returns the number of dropout modules swapped."""
    swapped = 0
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if type(child) is nn.Dropout:
                setattr(module, name, Dropout(child.p, child.inplace))
                swapped += 1
    config = getattr(model, "config", None)
    if config is not None and getattr(config, "_attn_implementation", None) == "sdpa":
        from transformers import AttentionInterface
        from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface

        AttentionInterface.register(ATTENTION, attention)
        AttentionMaskInterface.register(ATTENTION, ALL_MASK_ATTENTION_FUNCTIONS["sdpa"])
        model.set_attn_implementation(ATTENTION)
    return swapped
