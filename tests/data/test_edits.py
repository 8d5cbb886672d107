"""Near-duplicates within two word edits: the exact check, the candidates (none missed), planted twins that never
cross the split, and template sentences that differ in three words staying apart."""

from __future__ import annotations

import random
import re

import numpy as np
import pytest

from gpt2tune.data import edits
from gpt2tune.data.dedupe import components, near_duplicates
from gpt2tune.data.edits import at_most_two_edits, pairs_within_two_edits, word_edits
from gpt2tune.data.split import split_file


def flat(sentences: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
    words = np.array([w for s in sentences for w in s], np.uint32)
    return words, np.concatenate([[0], np.cumsum([len(s) for s in sentences])]).astype(np.int64)


def edited(rng: random.Random, s: list[int], edits: int, vocab: int) -> list[int]:
    t = list(s)
    for _ in range(edits):
        op = rng.randrange(3)
        if op == 0 and t:
            t.pop(rng.randrange(len(t)))
        elif op == 1:
            t.insert(rng.randint(0, len(t)), rng.randrange(2, vocab))
        elif t:
            t[rng.randrange(len(t))] = rng.randrange(2, vocab)
    return t


def random_family(seed: int, n: int, longest: int, vocab: int) -> list[list[int]]:
    """Random word-id sentences from a small vocabulary (many shared segments), each with 0 to 3 copies that are
    0 to 3 random edits away."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        s = [rng.randrange(2, vocab) for _ in range(rng.randint(0, longest))]
        out += [s] + [edited(rng, s, rng.randint(0, 3), vocab) for _ in range(rng.randint(0, 3))]
    return out


def test_word_edits_is_levenshtein_over_words():
    assert word_edits(["a", "b", "c", "d"], ["a", "c", "d"]) == 1
    assert word_edits(["a", "b", "c", "d"], ["a", "x", "c", "y"]) == 2
    assert word_edits(["a", "b", "c"], ["c", "b", "a"]) == 2
    assert word_edits([], ["a", "b"]) == 2


def test_exact_check_agrees_with_the_edit_distance():
    sentences = random_family(0, 100, 14, 7)
    words, offsets = flat(sentences)
    u, v = np.triu_indices(len(sentences), 1)
    ok, same = at_most_two_edits(words, offsets, u, v)
    want = [abs(len(sentences[a]) - len(sentences[b])) <= 2 and word_edits(sentences[a], sentences[b]) <= 2
            for a, b in zip(u.tolist(), v.tolist())]
    assert ok.tolist() == want and sum(want) > 500  # many pairs on each side
    assert same.tolist() == [sentences[a] == sentences[b] for a, b in zip(u.tolist(), v.tolist())]


@pytest.mark.parametrize("small", [False, True])
def test_no_pair_within_two_edits_is_missed(small, monkeypatch):
    """Short and long sentences from 6 words (so segments and variants are shared by unrelated sentences): the
    groups are the components of every pair within two edits (the longer of >= 6 words) or with the same words.
    `small`: chunks of 7 sentences, 5 pairs and 16 words a pass, so every pass is cut in many."""
    if small:
        for name, value in (("CHUNK", 7), ("PAIRS", 5), ("WORDS", 16)):
            monkeypatch.setattr(edits, name, value)
    for seed, longest in ((1, 12), (2, 40)):
        sentences = random_family(seed, 100, longest, 6)
        words, offsets = flat(sentences)
        n = len(sentences)
        want = [(a, b) for a in range(n) for b in range(a + 1, n)
                if sentences[a] == sentences[b] or (max(len(sentences[a]), len(sentences[b])) >= 6
                                                    and abs(len(sentences[a]) - len(sentences[b])) <= 2
                                                    and word_edits(sentences[a], sentences[b]) <= 2)]
        got = pairs_within_two_edits(words, offsets)
        assert set(map(tuple, got.T.tolist())) <= set(want)
        assert components(n, got).tolist() == components(n, np.array(want).T).tolist()
        assert len(set(components(n, got).tolist())) < n - 40  # many groups of two or more


SYLLABLES = ["ka", "mi", "to", "re", "su", "no", "ha", "ri", "ku", "se", "yo", "ma", "ne", "chi", "fu", "ro", "wa",
             "ten", "shi", "go"]
NOUNS = [a + b for a in SYLLABLES for b in SYLLABLES]  # 400 made-up words: sentences share little by chance


def sentence(rng: random.Random, length: int) -> str:
    words = [rng.choice(NOUNS) for _ in range(length)]
    words[0] = words[0].capitalize()
    return " ".join(words[:-1]) + ", " + words[-1] + "."


def twins(rng: random.Random, s: str) -> list[str]:
    """The sentence lower-cased without punctuation; with its 4th word removed; with a word put in; with a word
    replaced; with one word removed and another replaced."""
    w = s.split()
    plain = re.sub(r"[^\w\s]", "", s).lower()
    removed = " ".join(w[:3] + w[4:])
    put_in = " ".join(w[:2] + ["inserted"] + w[2:])
    replaced = " ".join(w[:-2] + ["replacement"] + w[-1:])
    both = " ".join(w[1:3] + ["other"] + w[4:])
    return [plain, removed, put_in, replaced, both]


def test_planted_twins_never_cross_the_split(tmp_path):
    """300 sentences of 10 words and 300 of 6, each with five twins (one or two words removed, put in or replaced,
    or case and punctuation), split 80/20 through the real split path: no group on both sides."""
    rng = random.Random(3)
    groups = [[s] + twins(rng, s) for length in (10, 6) for s in (sentence(rng, length) for _ in range(300))]
    lines = [x for g in groups for x in g]
    rng.shuffle(lines)
    p = tmp_path / "twins.txt"
    p.write_text("\n".join(lines) + "\n")
    info = split_file(p, "text", 0.2, 7, None, True, tmp_path)
    val = set((tmp_path / "val.txt").read_text().splitlines())
    train = set((tmp_path / "train.txt").read_text().splitlines())
    assert len(val) == info["val"] > 0.15 * len(lines) and val | train == set(lines)
    sides = [{x in val for x in g} for g in groups]
    assert sum(len(s) == 2 for s in sides) == 0
    assert info["near_groups"] == len(groups) and info["near_grouped"] == len(lines)  # no group joins another


def test_planted_twins_are_all_grouped_and_nothing_else():
    rng = random.Random(4)
    groups = [[s] + twins(rng, s) for length in (6, 8, 10, 14, 25) for s in (sentence(rng, length) for _ in range(40))]
    lines = [x for g in groups for x in g]
    nd = near_duplicates(lines)
    assert nd.members() == sorted(([i * 6 + k for k in range(6)] for i in range(len(groups))),
                                  key=lambda m: (-len(m), m[0]))


def test_template_sentences_differing_in_three_words_stay_apart():
    """One template, three slots: sentences that differ in all three slots are not grouped, even in chains;
    those that differ in two of them are."""
    template = "The {} of {} was built in the year 1603 by the {} family"  # 14 words
    towers = ["red", "white", "gold", "blue", "stone", "tall"]
    towns = ["Edo", "Nara", "Kyoto", "Sakai", "Ise", "Mito"]
    clans = ["Oda", "Date", "Mori", "Shimazu", "Uesugi", "Takeda"]
    three = [template.format(towers[i], towns[i], clans[i]) for i in range(6)]
    nd = near_duplicates(three)
    assert nd.groups == 0
    two = [template.format("a", "b", "c"), template.format("a", "d", "e"), template.format("f", "d", "e")]
    assert near_duplicates(two).members() == [[0, 1, 2]]
    short = ["Nara had few temples in 1650.", "Kobe has many temples in 1700."]  # 6 words, 3 replaced
    assert near_duplicates(short).groups == 0


def test_below_six_words_only_the_same_words_group():
    sentences = ["Brazil signed the treaty.", "Mexico signed the treaty.", "BRAZIL signed the treaty!",
                 "Brazil signed the big treaty."]
    assert near_duplicates(sentences).members() == [[0, 2]]
