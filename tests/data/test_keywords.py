"""Keywords from the corpus: its frequent subjects and openings, deterministic, each in >= 0.1 % of sentences."""

from __future__ import annotations

import random

import yaml
from conftest import make_corpus

from gpt2tune.cli import main
from gpt2tune.config import ARTICLE_KEYWORDS
from gpt2tune.data.keywords import MIN_SHARE, from_corpus, resolve


def biology(n: int, seed: int = 0) -> list[str]:
    """Sentences about cells: 'Mitochondria' and 'Ribosomes' start many, 'The' and 'In' start many more."""
    rng = random.Random(seed)
    heads = ["Mitochondria are the", "Ribosomes make", "The cell membrane holds", "In the nucleus, DNA forms",
             "Mitochondria produce", "The Golgi apparatus sorts", "Chloroplasts capture"]
    tails = ["energy", "proteins", "lipids", "signals", "sugars", "water", "ions", "enzymes"]
    return [f"{rng.choice(heads)} {rng.choice(tails)} in {rng.choice(tails)} number {i}." for i in range(n)]


def occurs(keyword: str, sentences: list[str]) -> int:
    return sum(keyword in s for s in sentences)


def test_keywords_come_from_the_corpus_and_each_is_frequent_enough():
    sentences = biology(3000)
    chosen = from_corpus(sentences)
    assert 1 <= len(chosen) <= 10
    assert {"Mitochondria", "Ribosomes", "Golgi", "Chloroplasts"} & set(chosen)
    assert not {"The", "In", "Osaka", "Japan"} & set(chosen)  # sentence-initial function words are no subjects
    assert "Mitochondria are the" in chosen or "Mitochondria are" in chosen  # an opening a subject starts
    for k in chosen:
        assert occurs(k, sentences) >= MIN_SHARE * len(sentences), k


def test_same_corpus_same_keywords_whatever_the_order():
    sentences = make_corpus(400, seed=3)
    shuffled = sentences[:]
    random.Random(1).shuffle(shuffled)
    assert from_corpus(sentences) == from_corpus(shuffled) == from_corpus(sentences)
    from conftest import PLACES

    chosen = from_corpus(sentences)
    assert {k.split()[0] for k in chosen} <= set(PLACES) and len(chosen) == 10


def test_a_subject_below_the_share_is_left_out():
    sentences = [f"Tokyo is large number {i}." for i in range(1990)] + \
                [f"Rareville is small number {i}." for i in range(1)] + \
                [f"Osaka has ships number {i}." for i in range(9)]
    chosen = from_corpus(sentences)
    assert "Tokyo" in chosen and "Osaka" in chosen  # 9 of 2,000 sentences: 0.45 %
    assert "Rareville" not in chosen and not any(k.startswith("Rareville") for k in chosen)  # 0.05 %


def test_article_and_lists_resolve_as_given():
    assert resolve(["article"]) == ARTICLE_KEYWORDS
    assert resolve(["Osaka", "Kyoto is the"]) == ["Osaka", "Kyoto is the"]
    assert resolve(["auto"], biology(200)) == from_corpus(biology(200))
    assert from_corpus([]) == []


def test_train_chooses_prints_and_records_auto_keywords(tiny_model, tmp_path, capsys):
    data = tmp_path / "cells.txt"
    data.write_text("\n".join(biology(300)) + "\n", encoding="utf-8")
    out = tmp_path / "run"
    assert main(["train", "--model", str(tiny_model), "--data", str(data), "--out", str(out), "--max-steps", "1",
                 "--block-size", "64", "--batch-size", "4", "--samples", "1",
                 "--near-dedupe", "off"]) == 0  # made-up sentences of one template: near-duplicates all
    printed = capsys.readouterr()
    recorded = yaml.safe_load((out / "config.yaml").read_text())["keywords"]
    assert recorded == from_corpus(_train_sentences(out, data))
    line = next(x for x in (printed.out + printed.err).splitlines() if x.startswith("keywords ("))
    assert line == f"keywords (chosen from the training sentences): {', '.join(recorded)}"
    sampled = {r.split('"keyword": ')[1].split('"')[1] for r in (out / "samples.jsonl").read_text().splitlines()}
    assert sampled == set(recorded)


def _train_sentences(run, data) -> list[str]:
    val = set((run / "val.txt").read_text(encoding="utf-8").splitlines())
    return [s for s in data.read_text(encoding="utf-8").splitlines() if s not in val]


def test_auto_or_article_in_a_list_is_one_line_error(tmp_path, capsys):
    data = tmp_path / "d.txt"
    data.write_text("\n".join(biology(50)) + "\n", encoding="utf-8")
    assert main(["train", "--data", str(data), "--out", str(tmp_path / "r"), "--keywords", "auto,Osaka"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == "gpt2tune: error: keywords: auto stands alone (not in a list)"
    assert not (tmp_path / "r").exists()
