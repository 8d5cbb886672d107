"""Perplexity scored as training scores it, sample metrics on hand-made cases, and a deterministic compare."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from conftest import make_corpus

from gpt2tune.cli import main
from gpt2tune.config import SamplingConfig, TrainConfig, write_config
from gpt2tune.data import blocks, read
from gpt2tune.data import split as data_split
from gpt2tune.evaluate.run import compare, metrics_table, perplexity
from gpt2tune.evaluate.text_metrics import (
    NgramIndex,
    copy_rate,
    distinct_n,
    eos_rate,
    is_faithful,
    mean_length,
    prompt_faithfulness,
    sentence_count,
)
from gpt2tune.model import load as modeling
from gpt2tune.model.load import load_seeded

# ------------------------------------------------------------------------------------------------ sample metrics

def test_eos_rate_and_mean_length():
    assert eos_rate([True, False, True, True]) == 0.75
    assert eos_rate([]) == 0.0
    assert mean_length(["one two three", "Four, five!"]) == 2.5


def test_distinct_n_of_a_known_list():
    texts = ["a b a b", "A c"]  # words: a b a b a c
    assert distinct_n(texts, 1) == 3 / 6
    assert distinct_n(texts, 2) == 3 / 4  # (a b) (b a) (a b) (a c): bigrams never cross texts
    assert distinct_n(["x y z"], 4) == 0.0


LONG = ("Kyoto was the imperial capital of Japan for more than one thousand years before the emperor moved "
        "to Tokyo in the year of the Meiji restoration")  # 26 words, 23 word 4-grams


def test_copy_rate_verbatim_is_one():
    training = make_corpus(200)
    assert copy_rate(training[:7], training) == 1.0
    assert copy_rate([training[0].upper().rstrip(".") + " !"], training) == 1.0  # case and punctuation ignored


def test_copy_rate_near_copies_and_originals():
    index = NgramIndex(make_corpus(200) + [LONG])
    w = LONG.split()
    assert index.is_copy(" ".join(w[:-1] + ["Edo"]))  # last word changed: 22 of 23 4-grams kept (96%)
    assert not index.is_copy(" ".join(w[:12] + ["Edo"] + w[13:]))  # a middle word changed: 19 of 23 (83%)
    assert index.is_copy(LONG + " and it kept its temples")  # runs on past a recited sentence
    assert index.is_copy(" ".join(w[:15]))  # stops inside a recited sentence
    assert not index.is_copy("Kyoto was the imperial city")  # a shared phrase alone (2 4-grams) is no copy
    assert not index.is_copy("The mountains of Hokkaido are covered with snow for half of the year")
    assert copy_rate([LONG, "Something entirely new about Kyoto and its many old houses"], index) == 0.5


def test_sentence_count():
    assert sentence_count("Osaka is big.") == 1
    assert sentence_count("Osaka is big. It has temples.") == 2
    assert sentence_count("Osaka is near Mt. Rokko and the U.S. base. Yes") == 2
    assert sentence_count("One line\nanother") == 2
    assert sentence_count('He said "Go!" Then he left') == 2


@pytest.mark.parametrize("text,keyword,ok", [
    ("Osaka is a city in Japan.", "Osaka", True),
    ("Osaka's castle is old.", "Osaka", True),
    ("Osaka, a port, grew.", "Osaka", True),
    ("Osaka is near Mt. Rokko and the U.S. consulate", "Osaka", True),  # one sentence, not finished: still faithful
    ("Osakan food is good.", "Osaka", False),  # the keyword grew into another word
    ("Osaka", "Osaka", False),  # nothing added
    ("Osaka.", "Osaka", False),
    ("Tokyo is big.", "Osaka", False),
    ("osaka is big.", "Osaka", False),
    ("Osaka is big. It has temples.", "Osaka", False),  # two sentences
    ("Osaka is big\nand has temples", "Osaka", False),
    ("Tokyo is the capital of Japan.", "Tokyo is the", True),
])
def test_is_faithful(text, keyword, ok):
    assert is_faithful(text, keyword) is ok


def test_prompt_faithfulness_share():
    texts = ["Osaka is big.", "Osaka is big. Very.", "Kyoto is old.", "Nara"]
    assert prompt_faithfulness(texts, ["Osaka", "Osaka", "Kyoto", "Nara"]) == 0.5


def test_metrics_table_winners():
    base = {"perplexity": 20.0, "eos_rate": 0.1, "mean_length": 40.0, "distinct_1": 0.5, "distinct_2": 0.8,
            "copy_rate": 0.0, "prompt_faithfulness": 0.2}
    tuned = {**base, "perplexity": 10.0, "mean_length": 22.0, "copy_rate": 0.3, "distinct_2": 0.8}
    winners = {r["metric"]: r["winner"] for r in metrics_table(base, tuned, reference_length=20.0)}
    assert winners == {"perplexity": "tuned", "eos_rate": "tie", "mean_length": "tuned", "distinct_1": "tie",
                       "distinct_2": "tie", "copy_rate": "base", "prompt_faithfulness": "tie"}


# ---------------------------------------------------------------------------------------------------- perplexity

@pytest.fixture(scope="module")
def tiny(tiny_model):
    model, tokenizer = modeling.load(str(tiny_model))
    return model, tokenizer


class Oracle(torch.nn.Module):
    """Puts (almost exactly) probability 1 on the true next token everywhere, by peeking at the next input."""

    def __init__(self, vocab: int):
        super().__init__()
        self.vocab = vocab

    def forward(self, input_ids, attention_mask=None, position_ids=None):
        logits = torch.zeros(*input_ids.shape, self.vocab)
        nxt = input_ids.roll(-1, dims=1)
        # the next position holds this sentence's next token where the position count goes on (packing restarts it)
        same = position_ids.roll(-1, dims=1) == position_ids + 1
        logits.scatter_(2, nxt[..., None], torch.where(same, 1e4, 0.0)[..., None])
        return SimpleNamespace(logits=logits)


def test_perplexity_of_a_model_that_is_always_right_is_one(tiny):
    _, tokenizer = tiny
    sentences = make_corpus(12)
    examples = blocks.encode(tokenizer, sentences, tokenizer.bos_token_id, tokenizer.eos_token_id, 64)
    result = perplexity(Oracle(len(tokenizer)), tokenizer, sentences, batch_size=3, block_size=64,
                        precision="fp32")
    assert result["perplexity"] == pytest.approx(1.0, abs=1e-6)
    assert result["tokens"] == sum(len(ex) - 1 for ex in examples)
    assert result["sentences"] == 12


def test_perplexity_equals_a_plain_per_sentence_loop(tiny):
    model, tokenizer = tiny
    sentences = make_corpus(40, seed=3)
    result = perplexity(model, tokenizer, sentences + sentences[:5], batch_size=4, block_size=64, precision="fp32")
    total, count = 0.0, 0
    with torch.no_grad():
        for s in sentences:  # one sentence at a time, unpadded, no packing
            ids = torch.tensor([[tokenizer.bos_token_id] + tokenizer(s, add_special_tokens=False)["input_ids"]
                                + [tokenizer.eos_token_id]])
            logits = model(input_ids=ids).logits[0, :-1]
            total += F.cross_entropy(logits.float(), ids[0, 1:], reduction="sum").item()
            count += ids.shape[1] - 1
    assert result["sentences"] == 40  # duplicates scored once, as training's split dedupes
    assert result["tokens"] == count
    assert result["loss"] == pytest.approx(total / count, rel=1e-5)
    assert result["perplexity"] == pytest.approx(math.exp(total / count), rel=1e-5)
    assert set(result) >= {"perplexity", "loss", "tokens", "sentences", "seconds"}


# ------------------------------------------------------------------------------------------------------- compare

@pytest.fixture(scope="module")
def run_dir(tiny_model, tmp_path_factory):
    """A run directory by hand: config.yaml naming its data, and a best/ model (another random tiny GPT-2)."""
    from gpt2tune.model.builtin import make_gpt2

    d = tmp_path_factory.mktemp("run")
    corpus = d / "corpus.txt"
    corpus.write_text("\n".join(make_corpus(60, seed=5)) + "\n", encoding="utf-8")
    write_config(TrainConfig(data=str(corpus), out=str(d), model=str(tiny_model), seed=7, val_fraction=0.2,
                             block_size=64), d / "config.yaml")
    other = make_gpt2(tmp_path_factory.mktemp("other") / "m", "tiny", n_positions=256, seed=1)
    model, tokenizer = modeling.load(str(other))
    modeling.save(model, tokenizer, d / "best")
    return d


def _without_timings(result):
    return {**result, "base": {k: v for k, v in result["base"].items() if k != "seconds"},
            "tuned": {k: v for k, v in result["tuned"].items() if k != "seconds"}}


def test_compare_is_deterministic_and_uses_the_runs_val_split(tiny_model, run_dir):
    sampling = SamplingConfig(max_new_tokens=6, seed=3)
    args = dict(keywords=["Tokyo", "Osaka is"], sampling=sampling, samples=2, precision="fp32")
    first = compare(str(tiny_model), str(run_dir), **args)
    second = compare(str(tiny_model), str(run_dir), **args)
    assert _without_timings(first) == _without_timings(second)
    train_s, val_s = data_split.split(read.read_sentences(run_dir / "corpus.txt"), 0.2, 7, val_size=2000,
                                near_dedupe=True)
    assert first["settings"]["heldout_sentences"] == len(val_s) == 12
    assert first["settings"]["copy_reference_sentences"] == len(train_s)
    assert [(s["keyword"], s["index"]) for s in first["samples"]] == [("Tokyo", 0), ("Tokyo", 1),
                                                                      ("Osaka is", 0), ("Osaka is", 1)]
    assert all(s["base"]["text"].startswith(s["keyword"]) for s in first["samples"])
    assert first["base"]["perplexity"] != first["tuned"]["perplexity"]  # two different models were scored
    assert [r["metric"] for r in first["table"]] == ["perplexity", "eos_rate", "mean_length", "distinct_1",
                                                     "distinct_2", "copy_rate", "prompt_faithfulness"]
    # each model is scored on the run's val split with the run's block size (and loaded with the sampling seed)
    model, tokenizer = load_seeded(str(tiny_model), "auto", seed=3)
    assert first["base"]["perplexity"] == pytest.approx(
        perplexity(model, tokenizer, val_s, block_size=64, precision="fp32")["perplexity"], rel=1e-9)


def test_cli_evaluate_and_compare(tiny_model, run_dir, tmp_path, capsys):
    held = tmp_path / "held.txt"
    held.write_text("\n".join(make_corpus(10, seed=9)) + "\n", encoding="utf-8")
    assert main(["evaluate", str(tiny_model), "--data", str(held), "--json", "--precision", "fp32"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["sentences"] == 10 and result["tokens"] > 0 and result["perplexity"] > 1

    out = tmp_path / "cmp"
    argv = ["compare", "--base", str(tiny_model), "--tuned", str(run_dir), "--out", str(out), "--keywords",
            "Kyoto", "--samples", "1", "--max-new-tokens", "6", "--precision", "fp32"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "| held-out perplexity |" in printed
    saved = json.loads((out / "compare.json").read_text(encoding="utf-8"))
    assert saved["settings"]["sampling"]["max_new_tokens"] == 6 and saved["settings"]["sampling"]["n"] == 1
    assert "| Kyoto |" in (out / "compare.md").read_text(encoding="utf-8")
    assert main(argv) == 1  # never overwrites silently
    assert "--overwrite" in capsys.readouterr().err
    assert main(["evaluate", str(tiny_model), "--data", str(tmp_path / "nope.txt")]) == 1
    assert "data file not found" in capsys.readouterr().err


def test_compare_of_a_model_with_itself_ties_everywhere(tiny_model, tmp_path):
    held = tmp_path / "held.txt"
    held.write_text("\n".join(make_corpus(15, seed=11)) + "\n", encoding="utf-8")
    result = compare(str(tiny_model), str(tiny_model), str(held), keywords=["Nara"], samples=3,
                     sampling=SamplingConfig(max_new_tokens=5), precision="fp32")
    assert result["settings"]["heldout_sentences"] == 15  # not a run: every sentence of --data is held out
    assert all(s["base"] == s["tuned"] for s in result["samples"])  # same seed, same settings, same samples
    assert {r["winner"] for r in result["table"]} == {"tie"}
