"""Planted twins on a real corpus: how many near-duplicate groups the train/val split cuts in two.

300 sentences of >= 10 words are drawn (seeded) from the corpus's unique sentences; for each, two twins are added
to the corpus: its lower-cased, de-punctuated form and the sentence with its 4th word removed. The corpus is then
split through the real path (`data.cache.cached_split`, as `train` does, near-dedupe on, --val-fraction 0.2,
--val-size none) and each group of three is looked up in train.txt and val.txt. Also prints the corpus's grouped
share (unique sentences in near-duplicate groups). Run it with another src on the path to measure another version:

    PYTHONPATH=src python benchmarks/planted_twins.py --data ../shared/data/japan_wiki.txt [--groups 300]
"""

from __future__ import annotations

import argparse
import json
import random
import re
import tempfile
import time
from pathlib import Path

from gpt2tune.data.cache import cached_split
from gpt2tune.data.read import dedupe, read_sentences


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--groups", type=int, default=300)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--val-fraction", type=float, default=0.2)
    args = ap.parse_args()
    unique = dedupe(read_sentences(args.data))
    rng = random.Random(args.seed)
    picked = rng.sample([s for s in unique if len(s.split()) >= 10], args.groups)
    groups = [[s, re.sub(r"[^\w\s]", "", s).lower(), " ".join(s.split()[:3] + s.split()[4:])] for s in picked]
    groups = [[" ".join(x.split()) for x in g] for g in groups]  # as the reader collapses whitespace
    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp) / "corpus.txt"
        lines = unique + [x for g in groups for x in g[1:]]
        corpus.write_text("\n".join(lines) + "\n", encoding="utf-8")
        t = time.perf_counter()
        plain = cached_split(str(args.data), "text", args.val_fraction, 42, None, True, tmp + "/cache0")
        split = cached_split(str(corpus), "text", args.val_fraction, 42, None, True, tmp + "/cache")
        seconds = time.perf_counter() - t
        val = set((split.path / "val.txt").read_text(encoding="utf-8").splitlines())
        train = set((split.path / "train.txt").read_text(encoding="utf-8").splitlines())
    missing = sum(x not in val and x not in train for g in groups for x in g)
    cut = sum(len({x in val for x in g}) == 2 for g in groups)
    info = plain.info
    print(json.dumps({"corpus": str(args.data), "unique": info["unique"], "near_groups": info["near_groups"],
                      "near_grouped": info["near_grouped"],
                      "grouped_share": round(info["near_grouped"] / info["unique"], 4),
                      "planted_groups": len(groups), "groups_on_both_sides": cut, "twins_not_found": missing,
                      "val": split.info["val"], "train": split.info["train"], "seconds": round(seconds, 1)}))


if __name__ == "__main__":
    main()
