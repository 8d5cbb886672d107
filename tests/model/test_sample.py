"""TopKTopP: the same kept tokens and renormalised probabilities as HF's Temperature+TopK+TopP warpers."""

import pytest
import torch
from transformers import LogitsProcessorList, TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

from gpt2tune.model.sample import DrawTopKTopP, TopKTopP


def hf_warpers(k: int, p: float, t: float) -> LogitsProcessorList:
    warpers = [TemperatureLogitsWarper(t)] if t != 1.0 else []
    warpers.append(TopKLogitsWarper(k))
    if p < 1.0:
        warpers.append(TopPLogitsWarper(p))
    return LogitsProcessorList(warpers)


@pytest.mark.parametrize("k,p,t,scale", [(30, 0.9, 1.0, 3.0), (30, 0.9, 0.7, 3.0), (50, 0.5, 1.3, 1.0),
                                         (5, 1.0, 1.0, 2.0), (30, 0.05, 1.0, 3.0), (1, 0.9, 1.0, 1.0),
                                         (200, 0.95, 1.0, 8.0), (1000, 0.9, 1.0, 3.0)])
def test_same_kept_set_and_probabilities_as_hf(k, p, t, scale):
    g = torch.Generator().manual_seed(k + int(p * 100))
    scores = torch.randn(64, 50257, generator=g) * scale
    ids = torch.zeros(64, 3, dtype=torch.long)
    ours = TopKTopP(k, p, t)(ids, scores.clone())
    theirs = hf_warpers(k, p, t)(ids, scores.clone())
    assert torch.equal(torch.isinf(ours), torch.isinf(theirs))  # the same kept tokens in every row
    kept = (~torch.isinf(ours)).sum(dim=-1)
    assert kept.min() >= 1 and kept.max() <= min(k, scores.shape[-1])
    torch.testing.assert_close(ours.softmax(-1), theirs.softmax(-1), rtol=1e-5, atol=1e-7)


def test_top_p_cut_is_among_the_renormalised_top_k():
    # probabilities 0.4, 0.3, 0.2, 0.1: top-k 2 renormalises to 4/7, 3/7, so top-p 0.5 keeps one token
    # and top-p 0.6 keeps both (4/7 < 0.6)
    scores = torch.tensor([[0.4, 0.3, 0.2, 0.1]]).log()
    ids = torch.zeros(1, 1, dtype=torch.long)
    assert (~torch.isinf(TopKTopP(2, 0.5)(ids, scores))).sum() == 1
    assert (~torch.isinf(TopKTopP(2, 0.6)(ids, scores))).sum() == 2
    assert (~torch.isinf(TopKTopP(3, 0.6)(ids, scores))).sum() == 2  # 0.4/0.9 < 0.6 <= 0.7/0.9
    assert (~torch.isinf(TopKTopP(4, 1.0)(ids, scores))).sum() == 4


def test_k_above_the_vocabulary_keeps_what_top_p_keeps():
    scores = torch.randn(4, 100, generator=torch.Generator().manual_seed(1))
    ids = torch.zeros(4, 1, dtype=torch.long)
    assert torch.equal(TopKTopP(1000, 0.8)(ids, scores.clone()), TopPLogitsWarper(0.8)(ids, scores.clone()))


def test_rejects_bad_settings():
    with pytest.raises(ValueError):
        TopKTopP(0, 0.9)
    with pytest.raises(ValueError):
        TopKTopP(5, 0.0)


def test_draw_follows_the_warped_probabilities():
    # DrawTopKTopP picks one token per row, only from the kept set, with HF's renormalised probabilities
    g = torch.Generator().manual_seed(3)
    scores = (torch.randn(1, 1000, generator=g) * 3).repeat(20000, 1)
    ids = torch.zeros(20000, 1, dtype=torch.long)
    expected = hf_warpers(30, 0.9, 0.8)(ids[:1], scores[:1].clone()).softmax(-1)[0]
    torch.manual_seed(0)
    out = DrawTopKTopP(30, 0.9, 0.8)(ids, scores.clone())
    assert torch.equal((out == 0).sum(-1), torch.ones(20000, dtype=torch.long))  # one choice per row
    assert torch.isinf(out).sum() == 20000 * 999
    freq = torch.bincount(out.argmax(-1), minlength=1000).double() / 20000
    assert freq[expected == 0].sum() == 0  # never a token the warpers drop
    assert 2 < int((expected > 0).sum()) < 30
    assert (freq - expected.double()).abs().max() < 0.015  # 5 sigma at 20,000 draws


def test_sample_first_tokens_follow_the_model(tiny_model):
    # the batched path draws the first new token with the probabilities HF's warpers give the model's logits
    from gpt2tune.config import SamplingConfig
    from gpt2tune.model import load as modeling
    from gpt2tune.model.sample import generate_ids, prompt_ids

    model, tok = modeling.load(str(tiny_model))
    n = 3000
    cfg = SamplingConfig(n=n, max_new_tokens=1, seed=7, top_k=30, top_p=0.9, temperature=0.8, precision="fp32")
    x = torch.tensor([prompt_ids(tok, "Japan")])
    with torch.no_grad():
        logits = model(x).logits[:, -1, :].float()
    expected = hf_warpers(30, 0.9, 0.8)(x, logits).softmax(-1)[0].double()
    out, encoded = generate_ids(model, tok, ["Japan"], cfg)
    assert out.shape == (n, len(encoded[0]) + 1)
    freq = torch.bincount(out[:, -1], minlength=logits.shape[-1]).double() / n
    assert freq[: len(expected)][expected == 0].sum() == 0  # never a token the warpers drop
    assert int((freq > 0).sum()) > 5  # really sampled
    assert (freq[: len(expected)] - expected).abs().max() < 0.03  # ~5 sigma at 3,000 draws


def test_sample_is_seeded_in_every_precision(tiny_model):
    from gpt2tune.config import SamplingConfig
    from gpt2tune.model import load as modeling
    from gpt2tune.model.sample import sample

    model, tok = modeling.load(str(tiny_model))
    for precision in ("fp32", "bf16", "fp16", "auto"):  # fp16 (a GPU's fallback) runs on a CPU too
        cfg = SamplingConfig(n=3, max_new_tokens=8, seed=5, precision=precision)
        a, b = sample(model, tok, ["Japan", "Kyoto is the"], cfg), sample(model, tok, ["Japan", "Kyoto is the"], cfg)
        assert [s.text for s in a] == [s.text for s in b]
        other = sample(model, tok, ["Japan", "Kyoto is the"], SamplingConfig(n=3, max_new_tokens=8, seed=6,
                                                                           precision=precision))
        assert [s.text for s in a] != [s.text for s in other]
