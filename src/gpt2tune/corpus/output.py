"""Writing a corpus: the sentence file and its `<out>.manifest.json`, never over a user's file by surprise."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from gpt2tune.errors import UserError
from gpt2tune.files import atomic_write, check_makeable, make_dir

CC_BY_SA = {
    "license": "CC BY-SA 4.0",
    "license_url": "https://creativecommons.org/licenses/by-sa/4.0/",
}


def manifest_path(out: str | Path) -> Path:
    """`<out>.manifest.json`."""
    out = Path(out)
    return out.with_name(out.name + ".manifest.json")


def check_writable(out: str | Path, overwrite: bool) -> None:
    """UserError if --out or its manifest exists (unless `overwrite`) or --out is a directory."""
    out = Path(out)
    check_makeable(out, "--out", file=True)
    for path in (out, manifest_path(out)):
        if path.exists() and not overwrite:
            raise UserError(f"{path} exists; pass --overwrite to replace it")


def write_corpus(out: str | Path, sentences: list[str], manifest: dict[str, Any],
                 titles: list[str] | None = None) -> Path:
    """Write the sentences to `out` and the manifest beside it; returns the manifest's path. A `.jsonl` out gets one
    {"text", "title"} object per line (the title of the page or file each sentence came from, for
    `train --condition title`); any other name one sentence per line (the manifest's pages hold the titles)."""
    out = Path(out)
    make_dir(out.parent, "--out")
    if out.suffix.lower() == ".jsonl":
        titles = titles if titles is not None else [""] * len(sentences)
        atomic_write(out, "".join(json.dumps({"text": s, "title": t}, ensure_ascii=False) + "\n"
                                  for s, t in zip(sentences, titles)))
    else:
        atomic_write(out, "".join(s + "\n" for s in sentences))
    path = manifest_path(out)
    atomic_write(path, json.dumps(manifest, ensure_ascii=False, indent=2) + "\n")
    return path


def wikipedia_attribution(api_url: str) -> dict[str, str]:
    """The attribution CC BY-SA 4.0 asks for when sharing text taken from Wikipedia pages."""
    return {
        **CC_BY_SA,
        "attribution": (
            "Sentences taken from the Wikipedia articles listed under 'pages' (at the revision ids given), "
            f"written by Wikipedia contributors (fetched through {api_url}) and licensed under CC BY-SA 4.0. "
            "Each article's authors are listed in its history (its URL + '?action=history'). Changes: the "
            "text was converted to plain text, non-prose sections were removed, and it was split into "
            "sentences that were filtered and de-duplicated. Share this corpus, and text derived from it, "
            "under CC BY-SA 4.0 with this attribution."),
    }
