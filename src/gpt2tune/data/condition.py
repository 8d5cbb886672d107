"""Topic conditioning: sentences with the title of the page they came from, trained as `<sos> title: sentence <eos>`.

A sentence file carries titles as a `title` field (.jsonl) or column (.csv), or through the manifest that
`gpt2tune corpus` writes beside a .txt (its pages, in order, with the sentences kept from each). A run trained with
`--condition title` records its format (`condition_format`, default "{title}: {text}"); UNTITLED_SHARE of the
sentences, picked by a hash of their text, train without a title, so the same run also writes (and is scored)
without one. `generate --about TITLE` puts the format's part before {text} in front of every prompt.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gpt2tune.data.read import jsonl_rows
from gpt2tune.errors import UserError
from gpt2tune.files import check_regular_file, decode_text, digest

FORMAT = "{title}: {text}"
UNTITLED_SHARE = 0.1  # sentences trained without their title (by a hash of the text: the same ones every time)


@dataclass(frozen=True)
class Titled:
    """A sentence and the title of its page."""

    text: str
    title: str

    def line(self, fmt: str = FORMAT) -> str:
        """The training line: the format filled in, or the bare text for an untitled sentence."""
        return self.text if untitled(self.text) else fill(fmt, self.title, self.text)


def check_format(fmt: str) -> None:
    """A format holds {title} once and ends with {text}, so a prompt can follow its prefix."""
    if fmt.count("{title}") != 1 or fmt.count("{text}") != 1 or not fmt.endswith("{text}"):
        raise UserError(f"condition-format must hold {{title}} once and end with {{text}}, got {fmt!r}")


def fill(fmt: str, title: str, text: str) -> str:
    """The format with a title and a text (a plain replace: braces in either stay as they are)."""
    return prefix(fmt, title) + text


def prefix(fmt: str, title: str) -> str:
    """What goes before the sentence for this title: "Kyoto: "."""
    return fmt[:fmt.index("{text}")].replace("{title}", title)


def untitled(text: str) -> bool:
    """Whether this sentence trains without its title (UNTITLED_SHARE of them, fixed by the text)."""
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "big") % 1000 \
        < UNTITLED_SHARE * 1000


def read_titled(path: str | Path, text_column: str = "text", title_column: str = "title") -> list[Titled]:
    """Every sentence of a data file with its title: a .jsonl field, a .csv column, or a .txt's corpus manifest;
    a UserError in one line when the file carries no titles."""
    p = check_regular_file(path, "data file")
    suffix = p.suffix.lower()
    if suffix in (".jsonl", ".csv"):
        text = decode_text(p, p.read_bytes())
        rows = _jsonl(p, text, text_column, title_column) if suffix == ".jsonl" else \
            _csv(p, text, text_column, title_column)
    else:
        rows = _from_manifest(p)
    if not rows:
        raise UserError(f"{p} holds no sentences (it is empty or only blank lines)")
    return rows


def _clean(value: Any) -> str:
    return " ".join(str(value).split())


def _jsonl(p: Path, text: str, text_column: str, title_column: str) -> list[Titled]:
    rows = []
    for number, obj in jsonl_rows(p, text, text_column):
        if not isinstance(obj.get(title_column), str) or not obj[title_column].strip():
            raise UserError(f"--condition title needs a title for every sentence: {p} line {number} has no "
                            f"'{title_column}' field (use --title-column)")
        if _clean(obj[text_column]):
            rows.append(Titled(_clean(obj[text_column]), _clean(obj[title_column])))
    return rows


def _csv(p: Path, text: str, text_column: str, title_column: str) -> list[Titled]:
    reader = csv.DictReader(io.StringIO(text))
    names = reader.fieldnames or []
    if text_column not in names:
        raise UserError(f"{p} has no column '{text_column}' (columns: {', '.join(names) or 'none'}); use --text-column")
    if title_column not in names:
        raise UserError(f"--condition title needs a title per sentence: {p} has no column '{title_column}' "
                        f"(columns: {', '.join(names)}); use --title-column")
    rows = []
    for row in reader:
        if _clean(row[text_column] or ""):
            if not _clean(row[title_column] or ""):
                raise UserError(f"--condition title needs a title for every sentence: {p} line "
                                f"{reader.line_num} has an empty '{title_column}'")
            rows.append(Titled(_clean(row[text_column]), _clean(row[title_column])))
    return rows


def _from_manifest(p: Path) -> list[Titled]:
    """A corpus .txt's titles from its manifest: pages in order, each with the count of sentences kept from it."""
    manifest = p.with_name(p.name + ".manifest.json")
    try:
        pages = json.loads(manifest.read_text(encoding="utf-8"))["pages"]
        counts = [(str(page["title"]), int(page["sentences_kept"])) for page in pages]
    except (OSError, ValueError, KeyError, TypeError):
        raise UserError(f"--condition title needs a title per sentence: {p} has none (give a .jsonl with "
                        "'text' and 'title' fields, a .csv with a title column, or a file `gpt2tune corpus "
                        "wikipedia` wrote, with its manifest)") from None
    sentences = [" ".join(line.split()) for line in decode_text(p, p.read_bytes()).splitlines()]
    sentences = [s for s in sentences if s]
    if sum(n for _, n in counts) != len(sentences):
        raise UserError(f"{manifest} lists {sum(n for _, n in counts):,} sentences, {p} holds {len(sentences):,}: "
                        "the file changed since the corpus was built, so its titles cannot be matched")
    titles = [title for title, n in counts for _ in range(n)]
    return [Titled(text, title) for text, title in zip(sentences, titles)]


def conditioned_file(path: str | Path, text_column: str, title_column: str, fmt: str,
                     cache_dir: str | None = None) -> Path:
    """The data file as training lines (the format filled in), written once to the data cache."""
    from gpt2tune.data.cache import cache_root, entry_key

    check_format(fmt)
    p = Path(path)
    key = entry_key({"titled": digest(p), "format": p.suffix.lower(), "text_column": text_column,
                    "title_column": title_column, "condition_format": fmt, "untitled": UNTITLED_SHARE})
    out = cache_root(cache_dir) / f"titled-{key}.txt"
    if not out.is_file():
        lines = "".join(row.line(fmt) + "\n" for row in read_titled(p, text_column, title_column))
        fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.tmp-")
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(lines)
        os.replace(tmp, out)
    return out


def training_file(cfg) -> Path:
    """The file whose lines a run trains on: cfg.data, or its `title: sentence` lines with --condition title."""
    if getattr(cfg, "condition", None) != "title":
        return Path(cfg.data)
    return conditioned_file(cfg.data, cfg.text_column, cfg.title_column, cfg.condition_format, cfg.cache_dir)


def run_prefix(run: dict[str, Any] | None, about: str | None, model: str) -> str:
    """The prefix --about asks for, from the run's recorded format; refused when the run has none."""
    if about is None:
        return ""
    if not run or run.get("condition") != "title":
        raise UserError(f"--about needs a run trained with --condition title; {model} was not")
    return prefix(str(run.get("condition_format") or FORMAT), " ".join(about.split()))
