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
import weakref

import torch
import torch.nn.functional as F
from torch import nn
from transformers.integrations.sdpa_attention import sdpa_attention_forward

ATTENTION = "gpt2tune_sdpa"  # registered name of the attention below (SDPA, with this dropout on a CPU)
MODEL_TYPES = ("gpt2",)  # the attention path runs only for the model types whose attention the tests check
# what GPT-2's attention passes along besides q, k, v, mask, dropout and scaling: none of it changes attention
IGNORED_KWARGS = frozenset({"position_ids", "use_cache", "cache_position", "output_attentions"})


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
    to anyway (SDPA's fused CPU kernels take no dropout), with the fast dropout. That path refuses any argument
    it does not handle, rather than drop it silently."""
    if not (dropout > 0.0 and query.device.type == "cpu" and torch.is_grad_enabled()):
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout,
                                      scaling=scaling, is_causal=is_causal, **kwargs)
    unknown = sorted(k for k, v in kwargs.items() if k not in IGNORED_KWARGS and v is not None)
    if unknown or kwargs.get("output_attentions") or getattr(module, "num_key_value_groups", 1) != 1:
        raise TypeError(f"gpt2tune's CPU dropout attention does not handle {unknown or 'grouped keys/values'}; "
                        f"{type(module).__name__} needs transformers' own attention")
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    *batch, q_len, width = query.shape
    k_len = key.shape[-2]
    # the scale and the mask inside one batched product: scores = bias + scale * q k^T (the mask's -inf in bias)
    bias = _mask_bias(attention_mask, tuple(batch), q_len, k_len, query.dtype, query.device)
    scores = torch.baddbmm(bias, query.reshape(-1, q_len, width), key.reshape(-1, k_len, width).transpose(1, 2),
                           alpha=scale).view(*batch, q_len, k_len)
    probs = torch.softmax(scores, dim=-1).to(value.dtype)  # bf16 under autocast: computed in fp32, stored in bf16
    out = torch.matmul(_Dropout.apply(probs, dropout), value)
    return out.transpose(1, 2).contiguous(), None


_bias_cache: list = []  # [(the mask, its shape key), bias]: every layer of one forward gets the same mask


def _mask_bias(mask: torch.Tensor | None, batch: tuple[int, ...], q_len: int, k_len: int, dtype: torch.dtype,
               device: torch.device) -> torch.Tensor:
    """The attention mask as an additive (batch..., q, k) bias flattened to (B, q, k): 0 where a query may attend,
    -inf where not (causal when there is no mask). Made once per mask and reused by the layers that share it."""
    key = (batch, q_len, k_len, dtype, device)
    if mask is not None and _bias_cache and _bias_cache[0][0]() is mask and _bias_cache[0][1] == key:
        return _bias_cache[1]
    allowed = (torch.ones(q_len, k_len, dtype=torch.bool, device=device).tril(k_len - q_len) if mask is None
               else mask[..., :k_len])
    if allowed.dtype == torch.bool:
        bias = torch.zeros(allowed.shape, dtype=dtype, device=device).masked_fill_(~allowed, float("-inf"))
    else:
        bias = allowed.to(dtype)
    bias = bias.expand(*batch, q_len, k_len).reshape(-1, q_len, k_len)
    if mask is not None:
        _bias_cache[:] = [(weakref.ref(mask), key), bias]
    return bias


def use_cpu_dropout(model: nn.Module) -> int:
    """Swap the model's nn.Dropout modules for Dropout and, for the model types in MODEL_TYPES (loaded with SDPA
    attention, as modeling.load does), route its attention through `attention`; returns the modules swapped."""
    swapped = 0
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if type(child) is nn.Dropout:
                setattr(module, name, Dropout(child.p, child.inplace))
                swapped += 1
    if getattr(getattr(model, "config", None), "model_type", None) in MODEL_TYPES:
        from transformers import AttentionInterface
        from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

        AttentionInterface.register(ATTENTION, attention)
        AttentionMaskInterface.register(ATTENTION, sdpa_mask)
        model.set_attn_implementation(ATTENTION)
    return swapped
