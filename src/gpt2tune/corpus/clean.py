"""Prose text -> clean, de-duplicated sentences: drop non-prose sections, strip markup, split, filter.

Sentences are split with pysbd (https://github.com/nipunsadvilkar/pySBD), a rule-based splitter that
passes the "Golden Rules" boundary test set: it knows abbreviations (Mr., U.S., Mt.), decimals, initials
and quotes, it has rules for 23 languages (en, ja, zh, de, fr, ...), it is pure Python and needs no model
download, so it works offline. spaCy's rule-based sentencizer splits at every period ("Mt." included) and
its parser needs a model download; NLTK's punkt needs a data download.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from dataclasses import dataclass, field
from typing import Iterable

import pysbd
import pysbd.languages

# Section titles whose content is lists, citations or links, not prose (compared case-insensitively;
# "Notes and references" is dropped as well because each of its parts is listed).
NON_PROSE_SECTIONS = {
    "references", "notes", "citations", "bibliography", "further reading", "external links", "see also",
    "sources", "footnotes", "works cited", "literature", "general references", "cited sources",
    "explanatory notes", "gallery", "discography", "filmography", "selected works", "publications",
}

TERMINAL = ".!?。！？…"
_END = re.compile(r"[.!?。！？…][\"'”’»」』)\]]*$")
_HEADING = re.compile(r"^(={2,6})\s*(.*?)\s*\1\s*$")
_CITATION_MARK = re.compile(
    r"\[\s*(?:\d+(?:\s*[,–-]\s*\d+)*|[a-z]{1,2}|(?:note|nb|n|fn|lower-alpha|upper-alpha)\s*\d+|"
    r"[^\]]{0,40}?(?:needed|citation|verify|verification|clarify|clarification|dubious|disputed|"
    r"when\?|who\?|which\?|according to whom|page|sic!?|failed|dead link|better source)[^\]]{0,40}?)\s*\]",
    re.IGNORECASE)
_REF = re.compile(r"<ref[^>/]*/>|<ref[^>]*>.*?</ref>", re.IGNORECASE | re.DOTALL)
_TAG = re.compile(r"</?[a-zA-Z][^<>]*>")
_TEMPLATE = re.compile(r"\{\{[^{}]*\}\}")
_WIKILINK = re.compile(r"\[\[(?:[^\[\]|]*\|)?([^\[\]|]*)\]\]")
_EXTLINK = re.compile(r"\[(?:https?:)?//[^\s\]]+\s*([^\]]*)\]")
_EMPTY_PARENS = re.compile(r"[(（]\s*[,;:、]?\s*[)）]")
_PARENS_LEAD = re.compile(r"([(（])\s*[,;:、]\s*")
_SPACE_BEFORE = re.compile(r"\s+([,.])(?=\s|$)")
_BULLET = re.compile(r"^\s*(?:[*#:;•·‣◦▪–-]+\s+|[*#•·‣◦▪]+)")
_INVISIBLE = dict.fromkeys(map(ord, "\u200b\u00ad\ufeff\u2060"), None)

# Fragment filters, checked in this order; a sentence is counted under the first that drops it.
_MARKUP = re.compile(r"[{}|\\]|==|displaystyle")
_URL = re.compile(r"https?://|\bwww\.|\bhttps?\s+www\b", re.IGNORECASE)
_CITATION = re.compile(
    r"\b(?:ISBN|ISSN|OCLC|doi|JSTOR|PMID|arXiv)\b|CS1 maint|\bRetrieved (?:on )?\d|\bRetrieved \w+ \d|"
    r"\bArchived from\b|\bet al\.|\bpp?\. ?\d|\bVol\. ?\d", re.IGNORECASE)
# A non-prose section's title glued to the next line's text ("See also Rice farming References The harvest ...").
_HEADING_RESIDUE = re.compile(r"\b(?:See also|External links|Further reading|References|Bibliography|"
                              r"Wikimedia Commons)\s+[A-Z0-9\"“]")
# Abbreviations a splitter leaves at the end of a cut-off stub ("... was long called Ezo 蝦夷 lit.").
# Not listed: those that also end real sentences (etc., Inc., Co., Ltd., Jr., U.S.).
STUB_ENDINGS = {
    "lit.", "mt.", "mts.", "st.", "ste.", "ft.", "pp.", "p.", "cf.", "e.g.", "i.e.", "ca.", "c.", "vol.",
    "vols.", "no.", "nos.", "ed.", "eds.", "trans.", "transl.", "dr.", "mr.", "mrs.", "ms.", "prof.",
    "approx.", "viz.", "fig.", "ch.", "chap.", "sr.", "gen.", "col.", "lt.", "capt.", "rev.", "fr.",
    "gov.", "sen.", "rep.", "pres.", "hon.", "op.", "esp.", "incl.", "var.", "syn.", "abbr.", "jap.",
    "jpn.", "chin.", "kor.", "ger.", "fr.", "lat.", "gr.", "skt.", "sans.", "pl.", "sing.", "orig.",
}
# Lowercase words a bibliography entry may hold ("Kodansha International, revised edition, 1989.").
_BIB_LOWER = {"of", "the", "and", "in", "on", "for", "a", "an", "de", "du", "des", "la", "le", "von", "van",
              "der", "und", "edition", "revised", "ed.", "eds.", "vol.", "no.", "trans.", "by", "et", "al.",
              "press", "publishing", "publishers", "books", "&"}
_YEAR_END = re.compile(r"\b(1[5-9]\d\d|20\d\d)[a-z]?\s*\)?\.$")

# pysbd's time grows with the square of its input's length (a 200 KB paragraph: minutes), so a longer paragraph
# is handed to it in windows of at most this many characters, each ending where a sentence likely ends
WINDOW = 3000
_LIKELY_END = re.compile(r"[.!?…][\"'”’»)\]]*\s+(?=[\"“‘«(\[]?[A-Z0-9])|[。！？][」』）]*")

FILTERS = ("markup", "url", "citation", "heading", "no_end", "fragment", "stub", "bibliography", "too_short", "too_long",
           "duplicate")


def is_non_prose(title: str) -> bool:
    """True for a section title such as 'References' or 'Notes and references'."""
    parts = [p for p in re.split(r"\s*(?:,|&|\band\b|/)\s*", title.casefold().strip(" :")) if p]
    return bool(parts) and all(p in NON_PROSE_SECTIONS for p in parts)


def wiki_paragraphs(text: str, join_wrapped: bool = False) -> list[str]:
    """Paragraphs of plain text with `== Heading ==` lines, non-prose sections left out.

    Each line is a paragraph (as in a Wikipedia extract); with `join_wrapped`, a line that does not end
    a sentence continues on the next line (hard-wrapped text files), and blank lines end paragraphs.
    """
    paragraphs: list[str] = []
    current: list[str] = []
    skip_level: int | None = None

    def flush() -> None:
        if current and skip_level is None:
            paragraphs.append(" ".join(current))
        current.clear()

    for raw in text.splitlines():
        line = raw.strip()
        heading = _HEADING.match(line)
        if heading:
            flush()
            level = len(heading.group(1))
            if skip_level is not None and level <= skip_level:
                skip_level = None
            if skip_level is None and is_non_prose(heading.group(2)):
                skip_level = level
            continue
        if not line:
            flush()
            continue
        current.append(line)
        if not join_wrapped or _END.search(line):
            flush()
    flush()
    return paragraphs


def strip_markup(text: str) -> str:
    """Remove citation markers, leftover wiki/HTML markup and empty brackets; normalise whitespace."""
    text = unicodedata.normalize("NFC", text).translate(_INVISIBLE)
    text = _REF.sub("", text)
    text = _TAG.sub("", text)
    for _ in range(3):  # nested templates, innermost first
        text = _TEMPLATE.sub("", text)
    text = _WIKILINK.sub(r"\1", text)
    text = _EXTLINK.sub(r"\1", text)
    text = text.replace("'''", "").replace("''", "")
    text = _CITATION_MARK.sub("", text)
    text = _PARENS_LEAD.sub(r"\1", text)
    text = _EMPTY_PARENS.sub("", text)
    text = _BULLET.sub("", " ".join(text.split()))
    return _SPACE_BEFORE.sub(r"\1", text)


def words(sentence: str) -> int:
    """Words in a sentence (whitespace-separated tokens)."""
    return len(sentence.split())


def drop_reason(sentence: str, min_words: int, max_words: int) -> str | None:
    """The name of the first filter that drops `sentence`, or None to keep it."""
    if _MARKUP.search(sentence):
        return "markup"
    if _URL.search(sentence):
        return "url"
    if _CITATION.search(sentence):
        return "citation"
    if _HEADING_RESIDUE.search(sentence):
        return "heading"
    if not _END.search(sentence):
        return "no_end"
    first = sentence.lstrip("\"'“‘«(「『")[:1]
    if first.islower() or first in ",;:)]-–—":
        return "fragment"
    tokens = sentence.split()
    if tokens[-1].casefold() in STUB_ENDINGS:
        return "stub"
    if _YEAR_END.search(sentence) and all(not t[:1].islower() or t.casefold() in _BIB_LOWER for t in tokens):
        return "bibliography"
    if len(tokens) < min_words:
        return "too_short"
    if len(tokens) > max_words:
        return "too_long"
    return None


def windows(text: str, size: int = WINDOW) -> list[str]:
    """`text` in consecutive pieces of at most `size` characters (joined, they are `text` again).

    Each piece ends at the last likely sentence end in its second half, else at its last space, else at `size`:
    every piece but the last is at least size/2 long, so the pieces are found in linear time.
    """
    pieces = []
    while len(text) > size:
        head = text[:size]
        cut = max((m.end() for m in _LIKELY_END.finditer(head, size // 2)), default=0)
        if not cut:
            cut = head.rfind(" ", size // 2) + 1 or size
        pieces.append(text[:cut])
        text = text[cut:]
    pieces.append(text)
    return pieces


def dedupe_key(sentence: str) -> str:
    """Sentences equal up to case, punctuation and spacing share a key."""
    return " ".join(re.sub(r"[\W_]+", " ", sentence.casefold()).split())


@dataclass
class CleanStats:
    """Counts of one cleaning run."""

    paragraphs: int = 0
    sentences: int = 0  # sentences the splitter produced
    kept: int = 0
    words: int = 0  # words in kept sentences
    max_words: int = 0
    dropped: Counter = field(default_factory=Counter)

    def as_dict(self) -> dict:
        return {
            "paragraphs": self.paragraphs,
            "sentences_split": self.sentences,
            "sentences_kept": self.kept,
            "words_kept": self.words,
            "words_per_sentence_mean": round(self.words / self.kept, 2) if self.kept else 0.0,
            "words_per_sentence_max": self.max_words,
            "dropped": {name: self.dropped[name] for name in FILTERS},
        }


class SentenceCleaner:
    """Splits paragraphs into sentences and keeps the clean ones, de-duplicated across all calls."""

    def __init__(self, min_words: int = 5, max_words: int = 60, lang: str = "en"):
        language = lang.split("-")[0]
        if language not in pysbd.languages.LANGUAGE_CODES:
            language = "en"  # English rules: periods, ! and ? with the common abbreviations
        self.segmenter = pysbd.Segmenter(language=language, clean=False)
        self.min_words = min_words
        self.max_words = max_words
        self.seen: set[str] = set()
        self.stats = CleanStats()

    def split(self, paragraph: str) -> list[str]:
        """Sentences of one paragraph (markup stripped, whitespace normalised)."""
        text = strip_markup(paragraph)
        if not text:
            return []
        return [s.strip() for piece in windows(text) for s in self.segment(piece) if s.strip()]

    def segment(self, text: str) -> list[str]:
        """pysbd's sentences of a text of at most WINDOW characters."""
        if not any(c in TERMINAL for c in text[:-1]):
            return [text]  # no boundary inside: what pysbd would return, without its cost
        return self.segmenter.segment(text)

    def clean(self, paragraphs: Iterable[str]) -> list[str]:
        """The kept sentences of `paragraphs`, in order; counts go to `self.stats`."""
        kept = []
        for paragraph in paragraphs:
            self.stats.paragraphs += 1
            for sentence in self.split(paragraph):
                self.stats.sentences += 1
                reason = drop_reason(sentence, self.min_words, self.max_words)
                if reason is None:
                    key = dedupe_key(sentence)
                    if key in self.seen:
                        reason = "duplicate"
                    else:
                        self.seen.add(key)
                if reason:
                    self.stats.dropped[reason] += 1
                    continue
                n = words(sentence)
                self.stats.kept += 1
                self.stats.words += n
                self.stats.max_words = max(self.stats.max_words, n)
                kept.append(sentence)
        return kept
