"""Keyword prompts from a corpus itself: its most frequent subjects (names) and the sentence openings they start.

A *name* is a capitalised word that the corpus does not write lower-case at least as often where no sentence
starts ("Kyoto", "Shinto"; not "The" or "In", which are lower-case inside sentences), so no stop-word list is
needed and any cased language works. A *subject* is a run of one to three names that starts some sentence
("Mount Fuji", "Japan") and is not mostly followed by a number ("April 1945"); subjects are ranked by the
sentences that mention them. An *opening* is a subject and the lower-case word after it ("Japan has"), or the next
two ("Tokyo is the") when at least half of the sentences that start so go on alike, ranked by the sentences it
starts. Every keyword chosen occurs in (an
opening: starts) at least MIN_SHARE of the sentences counted.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from typing import Iterable, Sequence

from gpt2tune.config import ARTICLE_KEYWORDS

AUTO, ARTICLE = "auto", "article"
CAP = 10  # keywords at most (the article sampled ten)
SUBJECT_SHARE = 0.6  # of the cap: subjects first, then openings
MIN_SHARE = 0.001  # a keyword occurs in at least 0.1 % of the sentences
MAX_SENTENCES = 200_000  # counted at most (the first ones): enough for stable ranks, seconds on millions
MAX_SUBJECT_WORDS = 3
_TOKEN = re.compile(r"\S+")
_WORD = re.compile(r"^[\"'“‘(\[]*(\w[\w'’.-]*?)[\"'”’)\]]*([,;:.!?]*)$")


def resolve(keywords: Sequence[str], sentences: Iterable[str] | None = None, cap: int = CAP) -> list[str]:
    """The keyword prompts a run samples: `auto` = chosen from `sentences`, `article` = the article's ten, else
    the list as given."""
    if list(keywords) == [ARTICLE]:
        return list(ARTICLE_KEYWORDS)
    if list(keywords) == [AUTO]:
        return from_corpus(sentences or [], cap)
    return list(keywords)


def from_corpus(sentences: Iterable[str], cap: int = CAP) -> list[str]:
    """Up to `cap` keywords from a corpus: its most mentioned subjects, then the openings they start; each occurs
    in at least MIN_SHARE of the sentences; ties alphabetical, so the same corpus gives the same list."""
    counted = [s.split() for _, s in zip(range(MAX_SENTENCES), sentences)]
    if not counted:
        return []
    least = max(1, math.ceil(MIN_SHARE * len(counted)))
    common = _common(counted)
    starts = [o for words in counted if (o := _opening(words, common)) is not None and len(o[0]) > 1]
    mentions: Counter = Counter()
    dated: Counter = Counter()  # mentions followed by a number: a date ("April 1945") or a label, not a subject
    for words in counted:
        runs = _runs(words, common)
        mentions.update({run for run, _ in runs})
        dated.update({run for run, numbered in runs if numbered})
    subjects = [s for s in _ranked(mentions, least) if s in {o[0] for o in starts} and 2 * dated[s] <= mentions[s]]
    openings = _openings(starts, least)
    take = min(len(subjects), max(cap - len(openings), math.ceil(cap * SUBJECT_SHARE)))
    return (subjects[:take] + openings)[:cap]


def _ranked(counts: Counter, least: int) -> list[str]:
    """Keys counted at least `least` times, most frequent first, ties alphabetical."""
    return [k for k, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])) if n >= least]


def _bare(token: str) -> tuple[str, str] | None:
    """(word, trailing punctuation) of a whitespace token, quotes and brackets peeled; None for no word."""
    m = _WORD.match(token)
    return (m.group(1), m.group(2)) if m else None


def _common(sentences: list[list[str]]) -> set[str]:
    """The lower-cased words that are NOT names: written lower-case at least as often as capitalised where no
    sentence starts ("the", "however"). A word seen only at sentence starts counts as a name."""
    upper: Counter = Counter()
    lower: Counter = Counter()
    for words in sentences:
        for token in words[1:]:
            bare = _bare(token)
            if bare is not None and bare[0][:1].isalpha():
                (upper if bare[0][0].isupper() else lower)[bare[0].lower()] += 1
    return {w for w, n in lower.items() if n >= upper[w]}


def _name(token: str, common: set[str]) -> tuple[str, str] | None:
    """(word, trailing punctuation) when the token is a name, else None."""
    bare = _bare(token)
    return bare if bare is not None and bare[0][:1].isupper() and bare[0].lower() not in common else None


def _runs(words: list[str], common: set[str]) -> list[tuple[str, bool]]:
    """The runs of one to MAX_SUBJECT_WORDS names in a sentence (punctuation ends one; longer runs, mostly titles of
    works, are left out), each with whether a number follows it."""
    runs: list[tuple[list[str], bool]] = []
    run: list[str] = []
    for i, token in enumerate(words + [""]):
        name = _name(token, common) if token else None
        if name is not None:
            run.append(name[0])
        if run and (name is None or name[1] or name[0] != token):
            runs.append((run, name is None and token[:1].isdigit()))
            run = []
    return [(" ".join(r), numbered) for r, numbered in runs if len(r) <= MAX_SUBJECT_WORDS]


def _opening(words: list[str], common: set[str]) -> tuple[str, str | None, str | None] | None:
    """(subject, next word, the word after it) of a sentence that starts with one to MAX_SUBJECT_WORDS names;
    a next word is given only when it is a plain lower-case word (and the subject ends in no punctuation)."""
    subject: list[str] = []
    for token in words[:MAX_SUBJECT_WORDS + 1]:
        name = _name(token, common)
        if name is None:
            break
        subject.append(name[0])
        if name[1] or name[0] != token:  # punctuation or a quote ends the subject
            return (" ".join(subject), None, None) if len(subject) <= MAX_SUBJECT_WORDS else None
    n = len(subject)
    if not 1 <= n <= MAX_SUBJECT_WORDS:
        return None
    word = words[n] if n < len(words) and _plain(words[n]) else None
    after = words[n + 1] if word and n + 1 < len(words) and _plain(words[n + 1]) else None
    return " ".join(subject), word, after


def _openings(starts: list[tuple[str, str | None, str | None]], least: int) -> list[str]:
    """Sentence starts "<subject> <word>", or "<subject> <word> <word>" when at least half of those go on with
    the same word, most frequent first."""
    two = Counter(f"{subject} {word}" for subject, word, _ in starts if word)
    three = Counter(f"{subject} {word} {after}" for subject, word, after in starts if word and after)
    longest: dict[str, str] = {}
    for t in _ranked(three, least):
        longest.setdefault(t.rsplit(" ", 1)[0], t)
    chosen = []
    for opening in _ranked(two, least):
        t = longest.get(opening)
        chosen.append(t if t is not None and 2 * three[t] >= two[opening] else opening)
    return chosen


def _plain(token: str) -> bool:
    """A lower-case word with no punctuation around it ("is", "has"): what a prompt may end on."""
    return len(token) > 1 and token.isalpha() and token[0].islower()
