"""The fused head + cross-entropy equals the plain loss on full logits, value and gradients."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from gpt2tune.data import blocks as data_blocks
from gpt2tune.model import load as modeling
from gpt2tune.model import loss


def _batch(tokenizer, n_blocks=3):
    from conftest import make_corpus

    ex = data_blocks.encode(tokenizer, make_corpus(40), tokenizer.bos_token_id, tokenizer.eos_token_id, 64)
    blocks = data_blocks.pack(ex, 64, tokenizer.pad_token_id)
    return data_blocks.batch(blocks, list(range(n_blocks)))


def _plain(model, b):
    logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"],
                   position_ids=b["position_ids"]).logits
    return F.cross_entropy(logits.flatten(0, 1).float(), b["targets"].flatten(), ignore_index=data_blocks.IGNORE,
                           reduction="sum")


@pytest.mark.parametrize("autocast", [False, True])
def test_fused_loss_matches_plain_cross_entropy(tiny_model, autocast, monkeypatch):
    monkeypatch.setattr(loss, "CHUNK_ELEMENTS", 50_000 * 7)  # several chunks, a ragged last one
    monkeypatch.setattr(loss, "SLICE_ROWS", 5)  # several slices of each, a ragged last one
    model, tokenizer = modeling.load(str(tiny_model), dropout=0.0)
    b = _batch(tokenizer)
    assert loss.supports_fused(model)
    grads = []
    values = []
    for fn in (_plain, lambda m, x: loss.causal_lm_loss(m, x["input_ids"], x["attention_mask"],
                                                        x["position_ids"], x["targets"])):
        model.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            value = fn(model, b)
        (value * 0.25).backward()
        values.append(value.item())
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    tol = 2e-2 if autocast else 1e-5
    assert values[1] == pytest.approx(values[0], rel=tol / 10)
    for name, g in grads[0].items():
        scale = g.abs().max().item() + 1e-12
        assert (grads[1][name] - g).abs().max().item() <= tol * scale, name


def test_fused_loss_ignores_targets_and_needs_no_grad_under_no_grad():
    torch.manual_seed(0)
    h, w = torch.randn(6, 8), torch.randn(11, 8)
    t = torch.tensor([1, -100, 3, 10, -100, 0])
    want = F.cross_entropy(h @ w.t(), t, ignore_index=-100, reduction="sum")
    with torch.no_grad():
        got = loss.linear_cross_entropy(h, w, t)
    assert got.item() == pytest.approx(want.item(), rel=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fused_loss_and_gradient_with_ignored_rows_and_far_off_targets(dtype, monkeypatch):
    """Rows without a target give nothing, and a target whose logit is ~300 below the row's largest (its softmax
    probability is 0 in fp32) still costs its exact loss: the log-sum-exp is not read off that probability."""
    monkeypatch.setattr(loss, "CHUNK_ELEMENTS", 11 * 4)  # four rows a chunk: several chunks, a ragged last one
    monkeypatch.setattr(loss, "SLICE_ROWS", 3)  # three rows a slice: ragged again
    torch.manual_seed(0)
    h = torch.randn(10, 8, dtype=dtype, requires_grad=True)
    w = torch.randn(11, 8, dtype=dtype, requires_grad=True)
    t = torch.tensor([1, -100, 3, 10, -100, 0, 5, 7, -100, 2])
    with torch.no_grad():
        w[4] = h[0] * 40  # row 0's largest logit is word 4, far above its target's
    want_h, want_w = h.detach().float().requires_grad_(), w.detach().float().requires_grad_()
    want = F.cross_entropy(want_h @ want_w.t(), t, ignore_index=-100, reduction="sum")
    want.backward()
    got = loss.linear_cross_entropy(h, w, t)
    got.backward()
    assert want.item() > 300
    assert got.item() == pytest.approx(want.item(), rel=1e-5 if dtype == torch.float32 else 1e-2)
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    for mine, theirs in ((h.grad, want_h.grad), (w.grad, want_w.grad)):
        assert (mine.float() - theirs).abs().max().item() <= tol * theirs.abs().max().item()
    assert h.grad[[1, 4, 8]].abs().max().item() == 0  # no target, no gradient
    # evaluation's path (chunks of four rows projected, then sliced) forms no gradient, though h and w want one
    monkeypatch.setattr(loss._LinearCrossEntropy, "apply", None)
    with torch.no_grad():
        assert loss.linear_cross_entropy(h, w, t).item() == pytest.approx(got.item(), rel=1e-6)


def test_under_autocast_the_head_weight_is_cast_once_per_step_and_the_head_is_restored(tiny_model):
    """The model's own head projects nothing while the fused loss runs (not even autocast's cast of its (V, d)
    weight); the loss casts it once, and the head works again afterwards."""
    from torch.profiler import ProfilerActivity, profile

    model, tokenizer = modeling.load(str(tiny_model), dropout=0.0)
    b = _batch(tokenizer)
    head = model.get_output_embeddings()
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss.causal_lm_loss(model, b["input_ids"], b["attention_mask"], b["position_ids"], b["targets"])
    weight_shape = list(head.weight.shape)
    casts = [e for e in prof.events() if e.name == "aten::_to_copy" and e.input_shapes[:1] == [weight_shape]]
    assert len(casts) == 1
    assert "forward" not in vars(head)
    assert model(input_ids=b["input_ids"]).logits.shape[-1] == weight_shape[0]


def test_fused_loss_of_no_rows_is_zero_with_zero_gradients():
    """A process without a block in the step's last micro-batch scores an all-padding block: no rows projected."""
    h = torch.randn(0, 8, requires_grad=True)
    w = torch.randn(11, 8, requires_grad=True)
    t = torch.zeros(0, dtype=torch.long)
    with torch.no_grad():
        assert loss.linear_cross_entropy(h, w, t).item() == 0
    got = loss.linear_cross_entropy(h, w, t)
    got.backward()
    assert got.item() == 0
    assert h.grad.shape == (0, 8) and w.grad.abs().max().item() == 0
