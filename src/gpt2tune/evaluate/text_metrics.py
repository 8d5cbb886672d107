"""Sample metrics: pure functions over generated texts (EOS rate, length, distinct-n, copy rate, faithfulness)."""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from typing import Any, Iterable, Sequence

_WORD = re.compile(r"\w+(?:['’]\w+)*")


def words(text: str) -> list[str]:
    """Lower-cased word tokens (letters/digits/underscore runs, inner apostrophes kept; punctuation dropped)."""
    return _WORD.findall(text.lower())


def ngrams(tokens: Sequence[str], n: int) -> list[tuple[str, ...]]:
    """All contiguous n-grams of a token list, in order."""
    return [tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)]


def eos_rate(ended: Iterable[bool]) -> float:
    """Share of samples that produced the end token before the length cap."""
    ended = list(ended)
    return sum(bool(x) for x in ended) / len(ended) if ended else 0.0


def mean_length(texts: Iterable[str]) -> float:
    """Mean number of words per text (see `words`)."""
    counts = [len(words(t)) for t in texts]
    return sum(counts) / len(counts) if counts else 0.0


def distinct_n(texts: Iterable[str], n: int) -> float:
    """Distinct word n-grams over all n-grams, pooled across the texts (Li et al. 2016); 0 when there are none."""
    grams = [g for t in texts for g in ngrams(words(t), n)]
    return len(set(grams)) / len(grams) if grams else 0.0


class NgramIndex:
    """Training sentences indexed by word n-gram, to find near-copies among thousands of sentences fast."""

    def __init__(self, sentences: Iterable[str], n: int = 4):
        self.n = n
        self.exact: set[tuple[str, ...]] = set()
        self.sizes: list[int] = []
        self.postings: dict[tuple[str, ...], list[int]] = defaultdict(list)
        for s in sentences:
            w = words(s)
            self.exact.add(tuple(w))
            grams = set(ngrams(w, n))
            for g in grams:
                self.postings[g].append(len(self.sizes))
            self.sizes.append(len(grams))

    def is_copy(self, text: str, threshold: float = 0.9, min_ngrams: int = 3) -> bool:
        """True when `text` is a training sentence verbatim or nearly; see `copy_rate`."""
        w = words(text)
        if tuple(w) in self.exact:
            return True
        grams = set(ngrams(w, self.n))
        shared = Counter(i for g in grams for i in self.postings.get(g, ()))
        for i, overlap in shared.items():
            shorter = min(len(grams), self.sizes[i])
            if shorter >= min_ngrams and overlap >= threshold * shorter:
                return True
        return False


class CopyCheck:
    """Whether a text recites a training sentence: compare's copy rule (`NgramIndex.is_copy`), or a run of `span`
    words that some training sentence also has (a recited stretch inside a longer text)."""

    def __init__(self, sentences: Iterable[str], span: int = 8, index: NgramIndex | None = None):
        sentences = list(sentences)
        self.span = span
        self.index = index or NgramIndex(sentences)
        self.spans = {hash(g) for s in sentences for g in ngrams(words(s), span)}

    def __call__(self, text: str) -> bool:
        return self.index.is_copy(text) or any(hash(g) in self.spans for g in ngrams(words(text), self.span))


def repeats_ngram(text: str, n: int = 4) -> bool:
    """True when some word n-gram occurs twice in the text."""
    grams = ngrams(words(text), n)
    return len(set(grams)) < len(grams)


def copy_rate(texts: Iterable[str], training: Iterable[str] | NgramIndex, threshold: float = 0.9, n: int = 4,
              min_ngrams: int = 3) -> float:
    """Share of texts that repeat a training sentence verbatim or nearly.

    Verbatim: the same words (see `words`: case and punctuation ignored). Nearly: the text and a training
    sentence share at least `threshold` of the word n-grams of whichever of the two has fewer, and that one has
    at least `min_ngrams` of them (so a recited sentence counts whether the sample runs on past it or stops
    inside it, while a common 4-word phrase alone does not).
    """
    index = training if isinstance(training, NgramIndex) else NgramIndex(training, n)
    texts = list(texts)
    return sum(index.is_copy(t, threshold, min_ngrams) for t in texts) / len(texts) if texts else 0.0


_BOUNDARY = re.compile(r"[.!?][\"'”’)\]]*\s+(?=\S)|\n")
ABBREVIATIONS = {"mr", "mrs", "ms", "dr", "st", "mt", "jr", "sr", "no", "vs", "etc", "e.g", "i.e", "ca", "approx"}


def sentence_count(text: str) -> int:
    """Sentences in a text: breaks at . ! ? (then closing quotes/brackets) before more text, and at line breaks.

    A period after a single letter ("U.S.") or a listed abbreviation ("St.", "Mt.") is not a break.
    """
    text = text.strip()
    if not text:
        return 0
    breaks = 0
    for m in _BOUNDARY.finditer(text):
        if m.group() != "\n" and text[m.start()] == ".":
            before = re.search(r"(\S+)$", text[:m.start()])
            word = before.group(1).lower() if before else ""
            if len(word) == 1 and word.isalpha() or word.rstrip(".") in ABBREVIATIONS or re.fullmatch(r"(\w\.)+\w", word):
                continue
        breaks += 1
    return breaks + 1


def is_faithful(text: str, keyword: str) -> bool:
    """True when `text` begins with `keyword` and continues it as one sentence; see `prompt_faithfulness`."""
    if not keyword or not text.startswith(keyword):
        return False
    rest = text[len(keyword):]
    if not words(rest):
        return False  # nothing added
    if keyword[-1].isalnum() and rest[0].isalnum():
        return False  # the keyword's last word grew into another word ("Osaka" -> "Osakan")
    return sentence_count(text) == 1


def prompt_faithfulness(texts: Sequence[str], keywords: Sequence[str]) -> float:
    """Share of samples that begin with their keyword and continue it as one sentence.

    texts[i] was prompted with keywords[i]. A sample is faithful when (1) its text starts with the keyword
    exactly; (2) the continuation adds at least one word; (3) the keyword's last word is not merged into a longer
    word (after a keyword ending in a letter or digit the continuation starts with a space or punctuation); and
    (4) the whole text is one sentence: no . ! ? followed by more text (abbreviations such as "St." or "U.S."
    excepted) and no line break. Whether the sentence was finished is `eos_rate`'s business, not this one's.
    """
    if len(texts) != len(keywords):
        raise ValueError("texts and keywords must have the same length")
    return sum(is_faithful(t, k) for t, k in zip(texts, keywords)) / len(texts) if texts else 0.0


def sample_metrics(samples: Sequence[Any], index: NgramIndex) -> dict[str, float]:
    """All sample metrics for a list of sampling.Sample."""
    texts = [s.text for s in samples]
    return {
        "eos_rate": eos_rate(s.ended for s in samples),
        "mean_length": mean_length(texts),
        "distinct_1": distinct_n(texts, 1),
        "distinct_2": distinct_n(texts, 2),
        "copy_rate": copy_rate(texts, index),
        "prompt_faithfulness": prompt_faithfulness(texts, [s.prompt for s in samples]),
    }
