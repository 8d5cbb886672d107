"""Best-of-N: one batched draw, candidates checked and ranked by the model's own log-likelihood, seeded."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import make_corpus

from gpt2tune.cli import main
from gpt2tune.config import SamplingConfig, build
from gpt2tune.errors import UserError
from gpt2tune.evaluate.best_of import best_of, choose, faults
from gpt2tune.evaluate.text_metrics import CopyCheck, repeats_ngram
from gpt2tune.model.load import load_seeded
from gpt2tune.model.sample import Sample, TokenLogProbs, generate_ids

TRAINING = ["Kyoto is the old capital of Japan and has many temples.", "Osaka has a castle."]


def cand(text: str, logprob: float, ended: bool = True, prompt: str = "Kyoto is the") -> Sample:
    return Sample(prompt, text, ended, 5, logprob)


def test_faults_name_each_check():
    copies = CopyCheck(TRAINING)
    assert faults(cand("Kyoto is the seat of a prefecture.", -1), copies) == []
    assert faults(cand("Kyoto is the seat of a", -1, ended=False), copies) == ["not_ended"]
    # a training sentence's 8-word run inside a longer sample is a copy, though most of its 4-grams are new
    assert faults(cand("Kyoto is the old capital of Japan and has many temples, I think, said my friend Bob.",
                       -1), copies) == ["copy"]
    assert faults(cand("Kyoto is the city of the city of the north.", -1), copies) == ["repeat"]
    assert faults(cand("Kyoto is the end. It rains.", -1), copies) == ["off_prompt"]
    assert faults(cand("Osaka is big.", -1), copies) == ["off_prompt"]


def test_copy_check_and_repeats():
    copies = CopyCheck(TRAINING)
    assert copies("osaka has a castle")  # verbatim up to case and punctuation (compare's rule)
    assert not copies("Kyoto is the old capital of Korea, not of Japan.")  # a 4-word run is no recital
    assert repeats_ngram("a b c d x a b c d") and not repeats_ngram("a b c d a b c e")


def test_choose_ranks_passing_candidates_by_likelihood_and_counts_the_rest():
    cands = [cand("Kyoto is the capital.", -2.0), cand("Kyoto is the best city.", -0.5),
             cand("Kyoto is the best city.", -0.5), cand("Kyoto is the capital of", -0.1, ended=False),
             cand("Kyoto is the old capital of Japan and has many temples.", -0.05),
             cand("Kyoto is the town.", -1.0)]
    picks = choose(cands, 2, CopyCheck(TRAINING))
    assert [p.sample.text for p in picks] == ["Kyoto is the best city.", "Kyoto is the town."]  # a text kept once
    assert all(p.failed == [] for p in picks)
    assert picks[0].counts == {"drawn": 6, "passed": 4, "outranked": 2,
                               "dropped": {"not_ended": 1, "copy": 1, "repeat": 0, "off_prompt": 0}}
    # too few pass: the rest are those failing the fewest checks, marked with what they failed
    short = choose(cands[3:5], 2, CopyCheck(TRAINING))
    assert [p.failed for p in short] == [["copy"], ["not_ended"]]


def test_log_probabilities_equal_a_forward_pass(tiny_model):
    model, tokenizer = load_seeded(str(tiny_model), "auto", 0)
    cfg = SamplingConfig(n=3, max_new_tokens=8, seed=5, precision="fp32")
    recorder = TokenLogProbs()
    out, encoded = generate_ids(model, tokenizer, ["Kyoto is the"], cfg, recorder=recorder)
    recorded = recorder.finish(out)
    width = len(encoded[0])
    with torch.no_grad():
        logits = model(out).logits.float().log_softmax(-1)
    expected = logits[:, width - 1:-1].gather(-1, out[:, width:, None]).squeeze(-1)
    assert recorded.shape == expected.shape == (3, out.shape[1] - width)
    torch.testing.assert_close(recorded, expected, rtol=1e-4, atol=1e-4)


def test_best_of_draws_once_keeps_checked_samples_and_is_seeded(tiny_model, monkeypatch):
    model, tokenizer = load_seeded(str(tiny_model), "auto", 0)
    calls = []
    original = model.generate

    def counted(*args, **kwargs):
        calls.append(kwargs["input_ids"].shape[0])
        return original(*args, **kwargs)

    monkeypatch.setattr(model, "generate", counted)
    cfg = SamplingConfig(n=2, best_of=4, max_new_tokens=6, seed=3)
    first = best_of(model, tokenizer, ["Kyoto is the", "Osaka"], cfg, CopyCheck(make_corpus(50)))
    assert calls == [2 * 4 * 2]  # one batched call: n x best-of rows per prompt
    assert [p.sample.prompt for p in first.picks] == ["Kyoto is the"] * 2 + ["Osaka"] * 2
    for p in first.picks:
        assert p.failed == faults(p.sample, CopyCheck(make_corpus(50)))
        assert p.counts["drawn"] == 8
    assert first.totals["drawn"] == 16 and first.totals["kept"] == 4
    again = best_of(model, tokenizer, ["Kyoto is the", "Osaka"], cfg, CopyCheck(make_corpus(50)))
    assert [p.sample.text for p in again.picks] == [p.sample.text for p in first.picks]


def test_best_of_needs_a_temperature():
    with pytest.raises(UserError, match="best-of needs a temperature above 0"):
        build(SamplingConfig, {"best_of": 3, "temperature": 0})
    with pytest.raises(UserError, match="best-of must be at least 1"):
        build(SamplingConfig, {"best_of": 0})


@pytest.fixture(scope="module")
def small_run(tiny_model, tmp_path_factory):
    d = tmp_path_factory.mktemp("bo")
    data = d / "japan.txt"
    data.write_text("\n".join(make_corpus(200, seed=2)) + "\n", encoding="utf-8")
    out = d / "run"
    assert main(["train", "--model", str(tiny_model), "--data", str(data), "--out", str(out), "--max-steps", "1",
                 "--block-size", "64", "--batch-size", "4", "--samples", "0"]) == 0
    return out


def test_generate_cli_best_of_json_and_verbose(small_run, capsys):
    capsys.readouterr()
    args = ["generate", str(small_run), "Kyoto is the", "-n", "2", "--best-of", "3", "--max-new-tokens", "6",
            "--seed", "4", "--json", "-v"]
    assert main(args) == 0
    captured = capsys.readouterr()
    rows = [json.loads(x) for x in captured.out.splitlines()]
    assert len(rows) == 2
    assert {"prompt", "text", "ended", "logprob", "failed", "best_of"} <= set(rows[0])
    counts = rows[0]["best_of"]
    assert counts["drawn"] == 6 and set(counts["dropped"]) == {"not_ended", "copy", "repeat", "off_prompt"}
    summary = [x for x in captured.err.splitlines() if x.startswith("best-of 3:")]
    assert summary and "6 candidates drawn for 2 samples" in summary[0]
    assert main(args) == 0
    assert [json.loads(x) for x in capsys.readouterr().out.splitlines()] == rows  # same seed, same output


def test_about_without_titles_is_one_line_error(small_run, capsys):
    capsys.readouterr()
    assert main(["generate", str(small_run), "Kyoto is the", "--about", "Kyoto"]) == 1
    err = [x for x in capsys.readouterr().err.splitlines() if x.startswith("gpt2tune: error")]
    assert err == [f"gpt2tune: error: --about needs a run trained with --condition title; {small_run} was not"]
