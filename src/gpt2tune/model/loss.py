"""Next-token loss without full-vocabulary logits: the LM head and cross-entropy fused, chunk by chunk.

GPT-2's head projects every token onto 50k words; with autocast, F.cross_entropy on those logits makes an fp32
copy, a log-softmax and a gradient of the same size (~200 MB each for 8x128 tokens) every step, and on a CPU
those fresh allocations cost page faults and memory bandwidth, not FLOPs. Here the gradient of the logits is
formed in the forward pass, in the compute dtype: the logits are projected into its buffer and turned into it a
cache-sized slice of rows at a time (without a gradient to form, a chunk of rows is projected at a time), and
only tokens that have a target are projected.
"""

from __future__ import annotations

import contextlib
import inspect
from typing import Iterator

import torch
import torch.nn.functional as F

IGNORE = -100
CHUNK_ELEMENTS = 1 << 23  # logits projected at once without a gradient to keep (evaluation); a GPU's slice below
SLICE_ROWS = 32  # rows soft-maxed at once on a CPU: their fp32 copy (6.4 MB for 50k words) stays in the cache
BACKEND = "own"  # "own": _LinearCrossEntropy below; "torch": torch.nn.functional.linear_cross_entropy (chunked)


def _loss_and_gradient(h: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                       need_grad: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """sum_i CE(h_i @ W^T, t_i) over rows whose target is not IGNORE and, with `need_grad`, its (n, V) gradient
    with respect to the logits, in h's dtype."""
    n, vocab = h.shape[0], weight.shape[0]
    valid = targets != IGNORE
    safe = targets.clamp(min=0)
    rows = torch.arange(n, device=h.device)
    cpu = h.device.type == "cpu"
    # every row has a target (the CPU path projects only those): no mask pass (reading it is free on a CPU only)
    masked = not cpu or not bool(valid.all())
    # with a gradient to keep, all rows are projected by one product (the (V, d) weight read once) into the buffer
    # that becomes the gradient, each slice of logits overwritten by its own; without one, a chunk at a time
    grad_logits = h @ weight.t() if need_grad else None
    rows_per_chunk = max(1, CHUNK_ELEMENTS // vocab)
    chunk = max(1, n) if need_grad else rows_per_chunk
    per_slice = SLICE_ROWS if cpu else rows_per_chunk  # a GPU: fewer, larger kernels
    buffer = torch.empty((min(per_slice, n), vocab), dtype=torch.float32, device=h.device) if cpu else None
    loss = torch.zeros((), dtype=torch.float32, device=h.device)
    for i in range(0, n, chunk):
        block = grad_logits[i:i + chunk] if need_grad else h[i:i + chunk] @ weight.t()
        for j in range(0, len(block), per_slice):
            logits, at = block[j:j + per_slice], i + j
            m = len(logits)
            r, t, v = rows[:m], safe[at:at + m], valid[at:at + m]
            top, picked = logits.amax(dim=-1).float(), logits[r, t].float()
            # one fused softmax on the fp32 copy serves the loss and the gradient: at the row's largest logit it is
            # exp(0) / sum(exp(logits - max)), so the log-sum-exp is max - log(its largest probability). In place
            # on a CPU (its kernel finishes each row's max and sum before writing it; checked by the tests here)
            if cpu:
                probs = torch.softmax(buffer[:m].copy_(logits), dim=-1, out=buffer[:m])
            else:
                probs = logits.float().softmax(dim=-1)
            loss += ((top - probs.amax(dim=-1).log() - picked) * v).sum()
            if need_grad:  # d loss / d logits = softmax - onehot, on rows with a target: over the logits read
                torch.mul(probs, v[:, None], out=logits) if masked else logits.copy_(probs)
    if need_grad:  # an indexed add: scatter_add_ along the vocabulary takes milliseconds per chunk
        grad_logits.index_put_((rows, safe), -valid.to(grad_logits.dtype), accumulate=True)
    return loss, grad_logits


class _LinearCrossEntropy(torch.autograd.Function):
    """The fused loss with its gradient: the (n, V) gradient of the logits is formed in the forward pass."""

    @staticmethod
    def forward(ctx, h: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        loss, grad_logits = _loss_and_gradient(h, weight, targets, ctx.needs_input_grad[0] or ctx.needs_input_grad[1])
        ctx.save_for_backward(h, weight, grad_logits)
        return loss

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        h, weight, grad_logits = ctx.saved_tensors
        g, scale = grad_logits, grad_out.to(h.dtype)  # scale the small (n, d) factors, not the (n, V) gradient
        grad_h = (g @ weight) * scale if ctx.needs_input_grad[0] else None
        grad_w = g.t() @ (h * scale) if ctx.needs_input_grad[1] else None  # not the (V, d) product
        return grad_h, grad_w, None


_KEPT: dict[int, tuple[torch.Tensor, torch.Tensor]] | None = None  # id(weight) -> (weight, its cast), while active


@contextlib.contextmanager
def casts_kept() -> Iterator[None]:
    """While active, and without gradients (an evaluation: the weights do not change), the head's weight is cast to
    the compute dtype once and the cast reused batch after batch, as autocast's own cache does for the layers'
    weights within one autocast context. GPT-2 small's (50k, 768) table takes ~30 ms to cast on a 2-core CPU."""
    global _KEPT
    outer, _KEPT = _KEPT, {}
    try:
        yield
    finally:
        _KEPT = outer


def _cast(weight: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    if _KEPT is None or torch.is_grad_enabled():
        return weight.to(dtype)
    kept = _KEPT.get(id(weight))
    if kept is None or kept[0] is not weight or kept[1].dtype != dtype:
        kept = _KEPT[id(weight)] = (weight, weight.to(dtype))
    return kept[1]


def linear_cross_entropy(h: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Summed cross-entropy of (h @ weight^T) against targets (IGNORE skipped), in autocast's dtype if active."""
    h, targets = h.reshape(-1, h.shape[-1]), targets.reshape(-1)
    device = h.device.type
    if torch.is_autocast_enabled(device):
        dtype = torch.get_autocast_dtype(device)
        h, weight = h.to(dtype), _cast(weight, dtype)
    elif weight.dtype != h.dtype:
        weight = _cast(weight, h.dtype)
    with torch.autocast(device, enabled=False):
        if BACKEND == "torch":
            return F.linear_cross_entropy(h, weight, targets, reduction="sum", ignore_index=IGNORE,
                                          options=torch.nn.LinearCrossEntropyOptions())
        if not torch.is_grad_enabled():  # evaluation: no gradient to form (a Function's forward cannot tell)
            return _loss_and_gradient(h, weight, targets, need_grad=False)[0]
        return _LinearCrossEntropy.apply(h, weight, targets)


def unwrap(model):
    """The Hugging Face model inside DDP / PEFT wrappers (--compile compiles layers in place: no wrapper)."""
    while True:
        if hasattr(model, "module") and isinstance(model.module, torch.nn.Module):
            model = model.module
        elif hasattr(model, "get_base_model"):
            model = model.get_base_model()
        else:
            return model


def supports_fused(model) -> bool:
    """True when the model's forward takes logits_to_keep and has a plain linear output head."""
    inner = unwrap(model)
    head = inner.get_output_embeddings() if hasattr(inner, "get_output_embeddings") else None
    return (head is not None and isinstance(getattr(head, "weight", None), torch.Tensor)
            and getattr(head, "bias", None) is None
            and "logits_to_keep" in inspect.signature(inner.forward).parameters)


@contextlib.contextmanager
def head_inputs(model) -> Iterator[list[torch.Tensor]]:
    """While active, the output head records its input and projects nothing (the loss projects it instead): its
    forward is replaced, so autocast does not even cast its (V, d) weight for it."""
    head = unwrap(model).get_output_embeddings()
    seen: list[torch.Tensor] = []
    vocab = head.weight.shape[0]

    def grab(x: torch.Tensor) -> torch.Tensor:
        seen.append(x)
        return x.new_empty((*x.shape[:-2], 0, vocab))  # zero rows of logits

    head.forward = grab
    try:
        yield seen
    finally:
        del head.forward


def causal_lm_loss(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor,
                   targets: torch.Tensor) -> torch.Tensor:
    """Summed next-token cross-entropy over targets != IGNORE, via the fused head (no full logits)."""
    keep = targets != IGNORE
    # on a CPU, project only the tokens with a target (~10% fewer FLOPs); on a GPU the boolean select would
    # sync with the host, so project all and let the loss mask them
    select = input_ids.device.type == "cpu"
    with head_inputs(model) as seen:
        model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
              logits_to_keep=keep if select else 0, use_cache=False)
    h = seen[-1]
    return linear_cross_entropy(h, unwrap(model).get_output_embeddings().weight,
                                targets[keep] if select else targets)
