"""TopKTopP: the same kept tokens and renormalised probabilities as HF's Temperature+TopK+TopP warpers."""

import pytest
import torch
from transformers import (LogitsProcessorList, TemperatureLogitsWarper, TopKLogitsWarper,
                          TopPLogitsWarper)

from gpt2tune.sampling import TopKTopP


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


def test_sample_draws_what_hf_warpers_draw(tiny_model):
    # same seed, same probabilities: the batched path with TopKTopP picks the same tokens as HF's warpers
    from gpt2tune import modeling
    from gpt2tune.config import SamplingConfig
    from gpt2tune.sampling import prompt_ids, sample

    model, tok = modeling.load(str(tiny_model))
    cfg = SamplingConfig(n=3, max_new_tokens=12, seed=7, top_k=30, top_p=0.9, temperature=0.8)
    ours = sample(model, tok, ["Japan"], cfg)
    x = torch.tensor([prompt_ids(tok, "Japan")])
    torch.manual_seed(7)
    out = model.generate(x, attention_mask=torch.ones_like(x), do_sample=True, top_k=30, top_p=0.9,
                         temperature=0.8, max_new_tokens=12, num_return_sequences=3,
                         pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
    theirs = [tok.decode(seq.tolist(), skip_special_tokens=True).strip() for seq in out]
    assert [s.text for s in ours] == theirs
    assert len(set(theirs)) > 1  # really sampled
