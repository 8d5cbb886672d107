"""A user's own files -> prose paragraphs: .txt as text, .md through markdown-it, .html through BeautifulSoup."""

from __future__ import annotations

import re
from pathlib import Path

from bs4 import BeautifulSoup, NavigableString
from bs4.element import Comment, Declaration, Doctype, ProcessingInstruction
from markdown_it import MarkdownIt

from gpt2tune.corpus.clean import is_non_prose, wiki_paragraphs
from gpt2tune.errors import UserError
from gpt2tune.files import check_not_binary, check_regular_file, decode_text

TEXT_SUFFIXES = {".txt", ".text"}
MARKDOWN_SUFFIXES = {".md", ".markdown"}
HTML_SUFFIXES = {".html", ".htm", ".xhtml"}

# Elements that hold no prose (code, tables, navigation, Wikipedia's reference lists and edit links).
_DROP_TAGS = ["head", "title", "script", "style", "noscript", "template", "nav", "header", "footer", "aside", "table", "pre",
              "figure", "math", "svg", "form", "button", "select", "textarea", "iframe", "object"]
_DROP_SELECTORS = ".reference, .mw-editsection, .navbox, .reflist, .references, #toc, .toc, .metadata, .noprint"
_BLOCKS = ["p", "li", "dd", "dt", "blockquote", "div", "section", "article", "main", "body", "td", "th",
           "caption", "figcaption", "h1", "h2", "h3", "h4", "h5", "h6"]
_HEADINGS = {"h1", "h2", "h3", "h4", "h5", "h6"}
_FRONT_MATTER = re.compile(r"\A---\s*\n.*?\n(?:---|\.\.\.)\s*\n", re.DOTALL)


def html_paragraphs(html: str | bytes) -> list[str]:
    """Prose paragraphs of an HTML document: text of its block elements, non-prose sections left out."""
    soup = BeautifulSoup(html, "html.parser")
    for tag in soup(_DROP_TAGS):
        tag.decompose()
    for tag in soup.select(_DROP_SELECTORS):
        tag.decompose()
    for br in soup.find_all("br"):
        br.replace_with("\n")
    paragraphs: list[str] = []
    parts: list[str] = []
    block = None
    skip_level: int | None = None
    for text in soup.find_all(string=True):
        if isinstance(text, (Comment, Declaration, Doctype, ProcessingInstruction)) or not isinstance(
                text, NavigableString):
            continue
        owner = text.find_parent(_BLOCKS)
        if owner is not block:
            paragraphs.append("".join(parts))
            parts = []
            block = owner
            if owner is not None and owner.name in _HEADINGS:
                level = int(owner.name[1])
                if skip_level is not None and level <= skip_level:
                    skip_level = None
                if skip_level is None and is_non_prose(owner.get_text(" ", strip=True)):
                    skip_level = level
        if skip_level is None and not (owner is not None and owner.name in _HEADINGS):
            parts.append(str(text))
    paragraphs.append("".join(parts))
    return [" ".join(p.split()) for p in paragraphs if p.strip()]


def markdown_paragraphs(markdown: str) -> list[str]:
    """Prose paragraphs of a Markdown document (rendered by markdown-it, then read as HTML)."""
    markdown = _FRONT_MATTER.sub("", markdown, count=1)
    return html_paragraphs(MarkdownIt("commonmark").enable("table").render(markdown))


def read_paragraphs(path: str | Path) -> list[str]:
    """Prose paragraphs of a .txt, .md or .html file; UserError for a missing or unreadable file."""
    p = Path(path)
    if not p.exists():
        raise UserError(f"file not found: {p}")
    if p.is_dir():
        raise UserError(f"{p} is a directory; give files (e.g. {p}/*.md)")
    check_regular_file(p)
    suffix = p.suffix.lower()
    if suffix not in TEXT_SUFFIXES | MARKDOWN_SUFFIXES | HTML_SUFFIXES:
        raise UserError(f"{p}: unsupported file type {suffix or '(none)'}; give .txt, .md or .html files")
    raw = p.read_bytes()
    check_not_binary(p, raw)
    if suffix in HTML_SUFFIXES:
        return html_paragraphs(raw)  # BeautifulSoup reads the declared charset
    text = decode_text(p, raw)
    if suffix in MARKDOWN_SUFFIXES:
        return markdown_paragraphs(text)
    return wiki_paragraphs(text, join_wrapped=True)
