"""compare's best-of column and a conditioned run's topic report; title scoring agrees with training's scoring."""

from __future__ import annotations

import json
import math

import pytest
from conftest import make_corpus

from gpt2tune.cli import main
from gpt2tune.config import SamplingConfig
from gpt2tune.data.condition import Titled
from gpt2tune.evaluate.run import compare, format_table, perplexity
from gpt2tune.evaluate.topic import mentions, page_words, sentence_nll
from gpt2tune.model.load import load_seeded


def test_bare_sentence_scoring_equals_the_packed_perplexity(tiny_model):
    model, tokenizer = load_seeded(str(tiny_model), "auto", 0)
    sentences = make_corpus(12, seed=5)
    scored = sentence_nll(model, tokenizer, [("", s) for s in sentences], batch_size=5)
    packed = perplexity(model, tokenizer, sentences, block_size=64, precision="fp32")
    assert sum(n for _, n in scored) == packed["tokens"]
    assert math.exp(sum(x for x, _ in scored) / packed["tokens"]) == pytest.approx(packed["perplexity"], rel=1e-4)
    # a prefix is context, not scored: the sentence's count stays its bare token count
    titled = sentence_nll(model, tokenizer, [("Kyoto: ", s) for s in sentences], batch_size=5)
    assert [n for _, n in titled] == [n for _, n in scored] and titled != scored


def test_mentions_counts_the_title_or_a_page_word_past_the_prompt():
    rows = [Titled("Kyoto has many temples and shrines.", "Kyoto"), Titled("Osaka has a castle.", "Osaka")]
    vocab = page_words(rows)
    assert "temples" in vocab["Kyoto"] and "castle" in vocab["Osaka"] and "has" not in vocab["Kyoto"]
    assert mentions("Osaka is near the temples.", "Osaka", "Kyoto", vocab["Kyoto"])
    assert mentions("It lies near Kyoto.", "It", "Kyoto", vocab["Kyoto"])
    assert not mentions("Kyoto is old.", "Kyoto", "Kyoto", vocab["Kyoto"])  # the prompt itself does not count


def test_compare_adds_a_best_of_column_and_a_conditioned_runs_topic_report(tiny_model, tmp_path, capsys):
    rows = [Titled(s, s.split()[0]) for s in make_corpus(200, seed=6)]
    data = tmp_path / "cities.jsonl"
    data.write_text("".join(json.dumps({"text": r.text, "title": r.title}) + "\n" for r in rows), encoding="utf-8")
    run = tmp_path / "run"
    assert main(["train", "--model", str(tiny_model), "--data", str(data), "--out", str(run), "--condition", "title",
                 "--max-steps", "1", "--block-size", "64", "--batch-size", "4", "--samples", "0"]) == 0
    result = compare(str(tiny_model), str(run), keywords=["Kyoto is"], samples=2, precision="fp32",
                     sampling=SamplingConfig(max_new_tokens=5, seed=2, best_of=3))
    assert result["settings"]["best_of"] == 3 and result["best_of"]["counts"]["drawn"] == 6
    assert all("best_of" in r for r in result["table"])
    assert all(s["best_of"]["text"].startswith("Kyoto is") for s in result["samples"])
    table = format_table(result)
    assert "| metric | base | tuned | tuned, best of 3 | better | winner |" in table
    assert "best of 3: 6 candidates drawn; sampling took" in table
    topic = result["topic"]
    assert topic["sentences"] == result["settings"]["heldout_sentences"] and topic["tokens"] > 0
    assert topic["perplexity_with_title"] > 1 and topic["perplexity_without_title"] > 1
    assert topic["lower_by"] == pytest.approx(1 - topic["perplexity_with_title"] / topic["perplexity_without_title"])
    assert topic["samples"] == len(topic["titles"]) and 1 <= len(topic["titles"]) <= 5
    assert "held-out perplexity of the tuned model on" in table and "samples --about a title" in table
