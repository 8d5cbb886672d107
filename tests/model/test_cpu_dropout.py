"""cpu_dropout: the fast CPU dropout drops p of the elements, scales the rest, replays with the seed, and the
attention path equals transformers' SDPA attention up to the dropout."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from gpt2tune.model.cpu_dropout import Dropout, attention, dropout, keep_mask, use_cpu_dropout


@pytest.mark.parametrize("p", [0.1, 0.5, 0.02])
def test_mask_keeps_one_minus_p(p):
    torch.manual_seed(0)
    keep = keep_mask((1000, 1000), p)
    assert keep.dtype == torch.bool and keep.shape == (1000, 1000)
    assert abs(keep.float().mean().item() - (1 - p)) < 0.002  # 1e6 draws: sigma 0.0003
    # no structure: the four 16-bit lanes of each word and neighbouring rows keep alike
    lanes = keep.flatten()[:999_996].view(-1, 4).float().mean(0)
    assert (lanes - (1 - p)).abs().max() < 0.005
    assert abs((keep[:, 1:] & keep[:, :-1]).float().mean().item() - (1 - p) ** 2) < 0.003


def test_odd_sizes_and_edges():
    torch.manual_seed(1)
    assert keep_mask((3, 5), 0.3).shape == (3, 5)
    assert keep_mask((7,), 0.0).all()  # p 0 keeps everything
    assert keep_mask((4096,), 1.0 - 1 / 65536).sum() < 5  # keeps only the top 16-bit value


def test_forward_scales_kept_and_backward_uses_the_same_mask():
    torch.manual_seed(2)
    x = torch.randn(64, 384, requires_grad=True)
    y = dropout(x, 0.25, training=True)
    kept = y != 0
    torch.testing.assert_close(y[kept], x[kept] / 0.75)
    assert 0.70 < kept.float().mean() < 0.80
    y.backward(torch.ones_like(y))
    torch.testing.assert_close(x.grad, kept.float() / 0.75)


def test_seeded_and_off_in_eval():
    x = torch.randn(32, 32)
    torch.manual_seed(3)
    a = dropout(x, 0.1)
    torch.manual_seed(3)
    b = dropout(x, 0.1)
    assert torch.equal(a, b)
    assert not torch.equal(a, dropout(x, 0.1))  # the generator moved on
    assert dropout(x, 0.1, training=False) is x
    m = Dropout(0.1).eval()
    assert m(x) is x
    assert isinstance(m, nn.Dropout) and m.p == 0.1


def test_bf16_stays_bf16():
    x = torch.randn(16, 16, dtype=torch.bfloat16)
    assert dropout(x, 0.1).dtype == torch.bfloat16


class _Attn(nn.Module):
    num_key_value_groups = 1
    is_causal = True
    training = True


def _qkv(dtype=torch.float32):
    g = torch.Generator().manual_seed(4)
    return [torch.randn(2, 3, 10, 8, generator=g, dtype=dtype, requires_grad=True) for _ in range(3)]


def test_attention_math_equals_sdpa_without_dropout():
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    segments = torch.tensor([[0] * 4 + [1] * 6, [0] * 10])
    same = segments[:, :, None] == segments[:, None, :]
    mask = (same & torch.ones(10, 10, dtype=torch.bool).tril())[:, None]
    q, k, v = _qkv()
    # p tiny: the fast path runs (dropout > 0) but keeps every element
    ours, _ = attention(_Attn(), q, k, v, mask, dropout=1e-9, scaling=0.3)
    theirs, _ = sdpa_attention_forward(_Attn(), q, k, v, mask, dropout=0.0, scaling=0.3)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)
    g_ours = torch.autograd.grad(ours.sum(), (q, k, v))
    g_theirs = torch.autograd.grad(theirs.sum(), (q, k, v))
    for a, b in zip(g_ours, g_theirs):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    # no mask: causal
    ours, _ = attention(_Attn(), q, k, v, None, dropout=1e-9)
    theirs = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)


def test_attention_drops_probabilities():
    q, k, v = _qkv()
    torch.manual_seed(5)
    out, _ = attention(_Attn(), q, k, v, None, dropout=0.5)
    base, _ = attention(_Attn(), q, k, v, None, dropout=1e-9)
    assert not torch.allclose(out, base)
    with torch.no_grad():  # not training: PyTorch's SDPA, no dropout
        a, _ = attention(_Attn(), q, k, v, None, dropout=0.5)
    assert a.shape == base.shape


def test_model_swap_keeps_outputs_and_trains(tiny_model):
    import copy

    from transformers import AttentionInterface

    from gpt2tune.model import load as modeling
    from gpt2tune.model.cpu_dropout import ATTENTION

    model, _ = modeling.load(str(tiny_model))
    plain = copy.deepcopy(model)
    n = use_cpu_dropout(model)
    calls = []
    AttentionInterface.register(ATTENTION, lambda *a, **kw: calls.append(kw) or attention(*a, **kw))
    try:
        _swapped_model_trains(model, plain, n, calls)
    finally:
        AttentionInterface.register(ATTENTION, attention)


def _swapped_model_trains(model, plain, n, calls):
    assert n == sum(type(m) is Dropout for m in model.modules()) and n > 0
    assert not any(type(m) is nn.Dropout for m in model.modules())
    ids = torch.randint(0, 1000, (2, 12))
    model.eval()
    plain.eval()
    assert torch.equal(model(ids).logits, plain(ids).logits)  # eval: PyTorch's own SDPA, identical
    model.train()
    torch.manual_seed(6)
    a = model(ids, labels=ids).loss
    torch.manual_seed(6)
    b = model(ids, labels=ids).loss
    assert torch.equal(a, b) and torch.isfinite(a)
    # every attention call went through the path, and a transformers upgrade that passes it more arguments
    # fails here, loudly, instead of having them dropped
    assert len(calls) == 3 * model.config.n_layer and calls[-1]["dropout"] > 0
    a.backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_attention_refuses_arguments_it_does_not_handle():
    q, k, v = _qkv()
    with pytest.raises(TypeError, match="softcap"):
        attention(_Attn(), q, k, v, None, dropout=0.1, softcap=30.0)
    grouped = _Attn()
    grouped.num_key_value_groups = 2
    with pytest.raises(TypeError, match="grouped"):
        attention(grouped, q, k, v, None, dropout=0.1)
    out, _ = attention(_Attn(), q, k, v, None, dropout=0.1, position_ids=None, use_cache=False)  # GPT-2's extras
    assert out.shape == (2, 10, 3, 8)


def test_attention_path_only_for_tested_model_types():
    from transformers import LlamaConfig, LlamaForCausalLM

    from gpt2tune.model.cpu_dropout import ATTENTION, MODEL_TYPES

    cfg = LlamaConfig(vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                      num_attention_heads=4, num_key_value_heads=2, attention_dropout=0.1, attn_implementation="sdpa")
    llama = LlamaForCausalLM(cfg)
    assert "llama" not in MODEL_TYPES
    use_cpu_dropout(llama)
    assert llama.config._attn_implementation == "sdpa"  # reading it is test-only; the code never does
    llama.train()
    ids = torch.randint(0, 100, (2, 8))
    assert torch.isfinite(llama(ids, labels=ids).loss)  # transformers' own attention, with its own dropout
    assert ATTENTION != "sdpa"


def test_attention_bias_is_made_once_per_mask_and_matches_the_unfused_math():
    from gpt2tune.model import cpu_dropout

    segments = torch.tensor([[0] * 4 + [1] * 6, [0] * 3 + [1] * 3 + [-1] * 4])
    same = segments[:, :, None] == segments[:, None, :]
    pad = (segments < 0)[:, :, None]
    eye = torch.eye(10, dtype=torch.bool)
    mask = ((same & torch.ones(10, 10, dtype=torch.bool).tril() & ~pad) | (eye & pad))[:, None]
    bias = cpu_dropout._mask_bias(mask, (2, 3), 10, 10, torch.bfloat16, torch.device("cpu"))
    assert bias.shape == (6, 10, 10) and bias.dtype == torch.bfloat16
    assert torch.equal(bias.view(2, 3, 10, 10) == 0, mask.expand(2, 3, 10, 10))
    assert torch.isneginf(bias.view(2, 3, 10, 10)[~mask.expand(2, 3, 10, 10)]).all()
    # the layers of one forward share the mask: the same bias back; a new mask (even an equal one): a new bias
    assert cpu_dropout._mask_bias(mask, (2, 3), 10, 10, torch.bfloat16, torch.device("cpu")) is bias
    assert cpu_dropout._mask_bias(mask.clone(), (2, 3), 10, 10, torch.bfloat16, torch.device("cpu")) is not bias
    # bf16 with a power-of-two scale (head width 64): bit for bit the scaled, masked product it replaces
    g = torch.Generator().manual_seed(2)
    q, k, v = [torch.randn(2, 3, 10, 64, generator=g).bfloat16() for _ in range(3)]
    torch.manual_seed(0)
    ours, _ = attention(_Attn(), q, k, v, mask, dropout=0.2)
    scores = torch.matmul(q * 0.125, k.transpose(-1, -2)).masked_fill(~mask, float("-inf"))
    torch.manual_seed(0)
    probs = cpu_dropout._Dropout.apply(torch.softmax(scores.float(), dim=-1).bfloat16(), 0.2)
    assert torch.equal(ours, torch.matmul(probs, v).transpose(1, 2).contiguous())
