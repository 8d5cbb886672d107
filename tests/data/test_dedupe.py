"""Near-duplicate groups and the split they constrain: groups stay on one side, the held-out cap."""

from __future__ import annotations

import pytest
from conftest import make_corpus
from hypothesis import given, settings
from hypothesis import strategies as st

from gpt2tune.data import read
from gpt2tune.data import split as data_split
from gpt2tune.data.dedupe import components, jaccard_at_least, near_duplicates
from gpt2tune.data.shingling import jaccard, sentence_chunks, shingle_codes, shingles, words
from gpt2tune.errors import UserError

LONG = "The old castle above the river was rebuilt by the local lord after a great fire destroyed the town"


def test_words_normalise_case_punctuation_and_digits():
    assert words("Tokyo's 23 wards, in 1943!") == words("TOKYOS 7 wards in 2001") == ["tokyos", "0", "wards", "in",
                                                                                     "0"]
    # punctuation is dropped, not read as a space: a sentence with its punctuation deleted has the same words
    assert words("pens—steel brushes—can, at 29°N") == words("penssteel brushescan at 29N") == [
        "penssteel", "brushescan", "at", "0n"]
    assert words("– . !!") == []


def test_near_duplicates_grouped_and_others_not():
    sentences = [
        "Osaka has many temples in 1650.",  # 0
        "Kyoto is known for its gardens.",  # 1
        "osaka has many temples, in 1820",  # 2: case, punctuation and digits only
        LONG + ".",  # 3
        LONG.replace("great", "terrible") + ".",  # 4: one word of 19 changed: bigram Jaccard 16/20 = 0.8
        LONG + " in 1602.",  # 5: two words added: 18/20
        "Nara has many temples in 1650.",  # 6: one word of 6 replaced: within two edits of 0
        "Nara had few shrines in 1650.",  # 7: three words of 6 replaced: another sentence
    ]
    nd = near_duplicates(sentences)
    assert nd.group.tolist() == [0, 1, 0, 3, 3, 3, 0, 7]
    assert (nd.groups, nd.grouped) == (2, 6)
    assert nd.members() == [[0, 2, 6], [3, 4, 5]]


def test_exact_jaccard_of_codes_equals_the_jaccard_of_word_shingle_sets():
    import numpy as np

    rng = np.random.default_rng(0)
    sentences = make_corpus(120, seed=7) + ["Kyoto", "", "!!", "kyoto.", "The the the the", "the THE the",
                                             "Tokyo's 23 wards", "TOKYO S 7 wards", "日本 の 首都 は 東京", "日本 の 首都",
                                             "İstanbul İzmir", "i̇stanbul i̇zmir", "STRASSE ΣΊΣΥΦΟΣ", "straße σίσυφοσ",
                                             "ᾳ test", "αι test", "x\u0345y z"]
    sh = shingle_codes(sentence_chunks(sentences, size=17))  # chunks of 17: ids and code widths across chunks
    assert sh.sizes().tolist() == [len(shingles(s)) for s in sentences]
    u, v = rng.integers(0, len(sentences), 3000), rng.integers(0, len(sentences), 3000)
    for t in (0.5, 0.8, 1.0):
        want = [jaccard(shingles(sentences[a]), shingles(sentences[b])) >= t for a, b in zip(u, v)]
        assert jaccard_at_least(sh, u, v, t).tolist() == want


def test_shingle_codes_are_the_same_on_several_workers():
    import numpy as np

    sentences = make_corpus(300, seed=8) + ["İstanbul İzmir", "x\u0345y z", "日本 の 首都"] * 3
    one, two = (shingle_codes(sentence_chunks(sentences, size=23), workers=w) for w in (1, 2))
    assert np.array_equal(one.codes, two.codes) and np.array_equal(one.offsets, two.offsets)


def test_components_are_chains_named_by_their_first_member():
    import numpy as np

    edges = np.array([[5, 1, 7, 3], [6, 5, 8, 7]])  # 1-5-6 and 3-7-8 chains
    assert components(10, edges).tolist() == [0, 1, 2, 3, 4, 1, 1, 3, 3, 9]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.sampled_from(make_corpus(40, seed=4)), min_size=2, max_size=60), st.floats(0.05, 0.6),
       st.integers(0, 10_000), st.integers(1, 30))
def test_near_duplicate_groups_never_cross_the_split(sentences, fraction, seed, val_size):
    unique = read.dedupe(sentences)
    try:
        s = data_split.split_sentences(sentences, fraction, seed, val_size, near_dedupe=True)
    except UserError:
        return  # too few sentences, or all one group: refused, nothing split
    group = near_duplicates(unique).group
    side = {}
    for sentence, g in zip(unique, group):
        side.setdefault(int(g), set()).add(sentence in set(s.val))
    assert all(len(v) == 1 for v in side.values())  # each group entirely in train or entirely in val
    assert sorted(s.train + s.val) == sorted(unique) and not set(s.train) & set(s.val)
    assert 1 <= len(s.val) <= min(val_size, -(-len(unique) * fraction // 1))


def test_split_groups_make_corpus_and_report_counts():
    sentences = make_corpus(300, seed=1)
    s = data_split.split_sentences(sentences + sentences[:5], 0.1, 42, near_dedupe=True)
    assert (s.sentences, s.unique, s.near_groups, s.near_grouped) == (305, 300, 12, 24)
    assert len(s.val) == 30 and len(s.train) == 270
    assert len(s.near_examples) == 5 and all(len(g) >= 2 for g in s.near_examples)


def test_near_dedupe_off_is_the_plain_seeded_split():
    sentences = make_corpus(200, seed=2)
    off = data_split.split_sentences(sentences, 0.1, 5, near_dedupe=False)
    assert (off.near_groups, off.near_grouped) == (0, 0)
    # with no groups, the held-out set is the first ceil(10%) of the seeded shuffle, as before groups existed
    import math
    import random
    order = list(range(200))
    random.Random(5).shuffle(order)
    assert set(off.val) == {sentences[i] for i in order[:math.ceil(200 * 0.1)]}


def test_val_size_caps_the_held_out_set():
    sentences = [f"Sentence number {w} is about {x}." for w in ("one", "two", "three", "four") for x in
                 ("Tokyo", "Osaka", "Kyoto", "Nara", "Kobe", "Sendai", "Sapporo", "Nagoya")]
    assert len(data_split.split(sentences, 0.5, 1, val_size=None)[1]) == 16
    assert len(data_split.split(sentences, 0.5, 1, val_size=3)[1]) == 3
    assert len(data_split.split(sentences, 0.05, 1, val_size=3)[1]) == 2  # the fraction is lower: it wins


def test_all_sentences_one_group_is_refused():
    with pytest.raises(UserError, match="near-duplicates of each other"):
        data_split.split([f"Tokyo had {i} people." for i in range(10)], 0.2, 0, near_dedupe=True)


def test_near_dedupe_flag_takes_on_and_off(tmp_path, capsys):
    from gpt2tune.cli import main

    missing = str(tmp_path / "none.txt")
    assert main(["train", "--data", missing, "--near-dedupe", "off", "--val-size", "none"]) == 1  # parsed, then
    assert "data file not found" in capsys.readouterr().err  # stopped at the data, as usual
    assert main(["train", "--data", missing, "--near-dedupe", "maybe"]) == 2
    assert "'maybe' is not on or off" in capsys.readouterr().err
