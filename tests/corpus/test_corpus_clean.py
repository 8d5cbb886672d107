"""The sentence cleaner on hand-made text."""

from __future__ import annotations

import pytest

from gpt2tune.corpus.clean import SentenceCleaner, dedupe_key, drop_reason, is_non_prose, strip_markup, wiki_paragraphs


def keep(sentence: str, min_words: int = 5, max_words: int = 60) -> str | None:
    return drop_reason(sentence, min_words, max_words)


@pytest.mark.parametrize("title", ["References", "See also", "External links", "Further reading", "Notes",
                                   "Citations", "Bibliography", "Sources", "Notes and references",
                                   "references ", "Footnotes"])
def test_non_prose_titles(title):
    assert is_non_prose(title)


@pytest.mark.parametrize("title", ["History", "Notes on the language", "Sources of law", "Economy"])
def test_prose_titles(title):
    assert not is_non_prose(title)


def test_wiki_paragraphs_drop_non_prose_sections_and_their_subsections():
    text = ("Intro line one.\n\n== History ==\nOld times.\n=== Edo ===\nEdo times.\n"
            "== References ==\nBook one.\n=== Web ===\nSite two.\n== Culture ==\nTea.\n"
            "== See also ==\nList of things\n")
    assert wiki_paragraphs(text) == ["Intro line one.", "Old times.", "Edo times.", "Tea."]


def test_wrapped_text_is_joined_until_a_sentence_ends():
    text = "Kyoto was the capital\nof Japan for a long time.\nIt has temples.\n\nA new paragraph\n"
    assert wiki_paragraphs(text, join_wrapped=True) == [
        "Kyoto was the capital of Japan for a long time.", "It has temples.", "A new paragraph"]
    assert wiki_paragraphs(text) == ["Kyoto was the capital", "of Japan for a long time.", "It has temples.",
                                     "A new paragraph"]


@pytest.mark.parametrize("raw, clean", [
    ("Tokyo is large.[1][23] It grew.[citation needed]", "Tokyo is large. It grew."),
    ("Japan[a] is an island country.[note 2]", "Japan is an island country."),
    ("Osaka ( ; Japanese: 大阪) is a city.", "Osaka (Japanese: 大阪) is a city."),
    ("Nara () was the capital ( ).", "Nara was the capital."),
    ("'''Kyoto''' is in [[Kansai region|Kansai]] and [[Japan]].{{efn|x}}", "Kyoto is in Kansai and Japan."),
    ("A <b>bold</b> claim<ref>Smith 2001, p. 4</ref> here.", "A bold claim here."),
    ("Spaces\u00a0and\ttabs   and\u200bzero width .", "Spaces and tabs andzero width."),
    ("• The tea fields are found on the southern hills.", "The tea fields are found on the southern hills."),
    ("Sapporo 札幌市 in Hokkaidō keeps its ō and kanji.", "Sapporo 札幌市 in Hokkaidō keeps its ō and kanji."),
])
def test_strip_markup(raw, clean):
    assert strip_markup(raw) == clean


@pytest.mark.parametrize("sentence, reason", [
    ("Kyoto has many old temples and gardens.", None),
    ("Nagano joined the national league in 1998.", None),
    ("Sapporo hosted the Winter Olympics in 1972!", None),
    ("He said it was “the best city in Japan.”", None),
    ("東京は日本の首都 です 。 とても 大きい 。", None),
    ("Kodansha International 1989.", "bibliography"),
    ("Tuttle Publishing  Revised edition  June 3  1998.", "bibliography"),
    ("Kimono A Short Illustrated History 1850–1930.", "bibliography"),
    ("The northern island was long called Ezo 蝦夷 lit.", "stub"),
    ("The hikers finally reached the top of Mt.", "stub"),
    ("Some islands are used for several purposes e.g.", "stub"),
    ("can be seen from the train near Kyoto.", "fragment"),
    ("The north of the island is covered in fores", "no_end"),
    ("It rains a lot.", "too_short"),
    ("Smith John 2001 Japan A Short History Tuttle ISBN 978 4 8053.", "citation"),
    ("Retrieved 3 March 2019 from the city archive website.", "citation"),
    ("See the list at https www.example.org for more details.", "url"),
    ("See also Rice farming Tea culture References The harvest begins in October.", "heading"),
    ("External links Official site Tourism office The town hosts a market on Sundays.", "heading"),
    ("References to Mount Fuji appear in many old poems.", None),
    ("The formula is displaystyle e x sum k over all values.", "markup"),
])
def test_drop_reason(sentence, reason):
    assert keep(sentence) == reason


def test_word_limits():
    s = "One two three four five six."
    assert keep(s, min_words=6, max_words=6) is None
    assert keep(s, min_words=7, max_words=9) == "too_short"
    assert keep(s, min_words=1, max_words=5) == "too_long"


def test_dedupe_key_ignores_case_punctuation_and_spacing():
    assert dedupe_key("Tokyo is big.") == dedupe_key("tokyo  is big !") == "tokyo is big"
    assert dedupe_key("東京 は 大きい。") == "東京 は 大きい"


def test_cleaner_splits_with_pysbd_filters_dedupes_and_counts():
    cleaner = SentenceCleaner(min_words=4, max_words=12)
    kept = cleaner.clean([
        "Mr. Tanaka moved to Osaka in 1990. He opened a small noodle shop near the station! Did it succeed?",
        "Mt. Fuji is the highest mountain in Japan. It is short.",
        "Mr. Tanaka  moved to OSAKA in 1990 . The shop closed in 2001 after a long run of success for him.",
    ])
    assert kept == ["Mr. Tanaka moved to Osaka in 1990.", "He opened a small noodle shop near the station!",
                    "Mt. Fuji is the highest mountain in Japan."]
    stats = cleaner.stats.as_dict()
    assert stats["paragraphs"] == 3 and stats["sentences_split"] == 7 and stats["sentences_kept"] == 3
    assert stats["dropped"]["too_short"] == 2  # "Did it succeed?", "It is short."
    assert stats["dropped"]["duplicate"] == 1 and stats["dropped"]["too_long"] == 1
    assert stats["words_per_sentence_max"] == 9
    assert stats["words_per_sentence_mean"] == pytest.approx((7 + 9 + 8) / 3, abs=0.01)


def test_japanese_text_is_split_with_japanese_rules_and_kept_intact():
    cleaner = SentenceCleaner(min_words=1, lang="ja")
    assert cleaner.clean(["東京は日本の首都です。大阪は大きな都市です！京都には寺が多い。"]) == [
        "東京は日本の首都です。", "大阪は大きな都市です！", "京都には寺が多い。"]
