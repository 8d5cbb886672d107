"""Sentence files as gpt2tune reads them: one sentence a line (.txt), a text field (.jsonl) or column (.csv);
exact duplicates removed in order."""

from __future__ import annotations

import codecs
import csv
import io
import json
import re
from pathlib import Path
from typing import Iterator, Sequence

from gpt2tune.errors import UserError
from gpt2tune.files import check_not_binary, check_regular_file, decode_text, is_text

MAX_LINE_CHARS = 20_000  # a "sentence" longer than this is a file in the wrong shape, not a sentence
# a run of whitespace within a line (what str.split() splits on) other than one plain space: two or more
# characters, or one that is not a space (matching every single space made this pass 10x slower)
_SPACES = re.compile(r"(?: [^\S\n]|[^\S\n ])[^\S\n]*")


def read_sentences(path: str | Path, text_column: str = "text") -> list[str]:
    """Read sentences from .txt (one per line), .jsonl (a field) or .csv (a column); blank lines skipped."""
    p = Path(path)
    check_data_path(p)
    sentences = list(iter_sentences(p, text_column))
    if not sentences:
        raise UserError(f"{p} holds no sentences (it is empty or only blank lines)")
    return sentences


def check_data_path(p: Path) -> None:
    """A UserError unless p is a data file that can be read."""
    if not p.exists():
        raise UserError(f"data file not found: {p}")
    if p.is_dir():
        raise UserError(f"data path is a directory, not a file: {p}")
    check_regular_file(p, "data file")  # a FIFO or device would block, or be consumed, by hashing and reading


def iter_sentences(p: Path, text_column: str = "text") -> Iterator[str]:
    """The sentences of a data file one at a time (whitespace collapsed, blank lines skipped), streamed."""
    for batch in iter_sentence_batches(p, text_column):
        yield from batch


def iter_sentence_batches(p: Path, text_column: str = "text") -> Iterator[list[str]]:
    """The sentences of a data file, a few MiB of text at a time (whitespace collapsed, blank lines skipped)."""
    suffix = p.suffix.lower()
    if suffix in (".jsonl", ".csv"):  # rows may span lines (csv) or need the whole text's error messages
        text = decode_text(p, p.read_bytes())
        rows = _read_jsonl(p, text, text_column) if suffix == ".jsonl" else _read_csv(p, text, text_column)
        for a in range(0, len(rows), 65536):
            batch = [" ".join(row.split()) for row in rows[a:a + 65536]]
            _check_lengths(p, batch, a)
            yield [s for s in batch if s]
        return
    number = 0
    for lines in _text_lines(p):  # lines without line breaks: whitespace collapsed in a few passes over the text
        batch = _collapse("\n".join(lines)).split("\n")
        _check_lengths(p, batch, number)
        number += len(batch)
        yield list(filter(None, batch))


def _collapse(text: str) -> str:
    """Every line of text as " ".join(line.split()), in a few passes over the whole text."""
    return _SPACES.sub(" ", text).replace(" \n", "\n").replace("\n ", "\n").strip(" ")


def _check_lengths(p: Path, rows: list[str], before: int) -> None:
    if rows and max(map(len, rows)) > MAX_LINE_CHARS:
        i = next(i for i, s in enumerate(rows) if len(s) > MAX_LINE_CHARS)
        raise UserError(f"{p}: line {before + i + 1} is {len(rows[i]):,} characters long; expected one sentence "
                        f"per line (at most {MAX_LINE_CHARS:,} characters)")


def _text_lines(p: Path) -> Iterator[list[str]]:
    """A text file's lines without their line breaks, decoded as UTF-8 piece by piece (4 MiB at a time: a whole
    4M-line file never sits in memory)."""
    with p.open("rb") as f:
        check_not_binary(p, f.read(65536))
        f.seek(0)
        decoder = codecs.getincrementaldecoder("utf-8-sig")()
        tail = ""
        while True:
            raw = f.read(1 << 22)
            try:
                text = tail + decoder.decode(raw, final=not raw)
            except UnicodeDecodeError:
                decode_text(p, p.read_bytes())  # names the bad byte and its line
                raise
            lines = text.splitlines(keepends=True)
            # the last piece may be a line cut in two by the read: keep it for the next round
            tail = lines.pop() if raw and lines and lines[-1].splitlines() == [lines[-1]] else ""
            if lines:
                yield "".join(lines).splitlines()
            if not raw:
                return


def _read_jsonl(p: Path, text: str, field: str) -> list[str]:
    rows = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise UserError(f"{p}: line {number} is not valid JSON ({e.msg})") from None
        if not isinstance(obj, dict) or not isinstance(obj.get(field), str):
            raise UserError(f"{p}: line {number} has no text field '{field}' (use --text-column)")
        if not is_text(obj[field]):
            raise UserError(f"{p}: line {number} holds invalid text (a lone surrogate escape such as \\ud800)")
        rows.append(obj[field])
    return rows


def _read_csv(p: Path, text: str, column: str) -> list[str]:
    reader = csv.DictReader(io.StringIO(text))
    try:
        if reader.fieldnames is None or column not in reader.fieldnames:
            have = ", ".join(reader.fieldnames or []) or "none"
            raise UserError(f"{p} has no column '{column}' (columns: {have}); use --text-column")
        return [row[column] or "" for row in reader]
    except csv.Error as e:  # e.g. a field over csv's limit of 131,072 characters
        raise UserError(f"{p}: line {reader.line_num + 1} is not valid CSV ({e})") from None


def dedupe(sentences: Sequence[str]) -> list[str]:
    """Exact duplicates removed, first occurrence kept, order kept."""
    return list(dict.fromkeys(sentences))


