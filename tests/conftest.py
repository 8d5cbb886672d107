"""Shared fixtures: tiny random GPT-2s with the real GPT-2 tokenizer stand in for pretrained models."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

from gpt2tune.model.builtin import make_gpt2

# Five slots of 17 single words each. A sentence's slots are a codeword of a Reed-Solomon code over GF(17)
# (a polynomial of degree <= 2 at 0..4), so two sentences from different codewords differ in at least three words
# and are not near-duplicates (which are within two word edits); the same codeword with another year is one.
PLACES = ["Tokyo", "Osaka", "Kyoto", "Nara", "Sapporo", "Kobe", "Nagoya", "Sendai", "Fukuoka", "Hiroshima",
          "Yokohama", "Kanazawa", "Nagasaki", "Okayama", "Matsue", "Kumamoto", "Niigata"]
VERBS = ["has", "keeps", "shows", "builds", "protects", "restores", "opens", "welcomes", "celebrates", "guards",
         "cleans", "paints", "lights", "honours", "rebuilds", "loves", "praises"]
KINDS = ["old", "new", "famous", "quiet", "busy", "small", "large", "red", "ancient", "modern", "wooden", "stone",
         "hidden", "bright", "calm", "grand", "humble"]
THINGS = ["temples", "gardens", "trains", "festivals", "castles", "markets", "museums", "shrines", "bridges",
          "parks", "towers", "harbours", "libraries", "theatres", "schools", "streets", "lanterns"]
NEAR = ["Fuji", "Biwa", "Aso", "Hakone", "Nikko", "Kamakura", "Ise", "Izumo", "Akan", "Daisen", "Zao", "Kiso",
        "Shima", "Oze", "Kurobe", "Tateyama", "Unzen"]


@pytest.fixture(autouse=True, scope="session")
def _data_cache(tmp_path_factory):
    """The data cache of every test run lives in a temporary directory, never in ~/.cache."""
    os.environ["GPT2TUNE_CACHE_DIR"] = str(tmp_path_factory.mktemp("data-cache"))


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    """Every command a test runs (in-process or as a subprocess) takes one thread unless it asks for more: the
    auto choice follows the machine's load, and runs compared bit for bit must not differ in thread count
    (another count sums floats in another order). The tests of the auto policy unset it."""
    os.environ.setdefault("OMP_NUM_THREADS", "1")


def make_corpus(n: int, seed: int = 0) -> list[str]:
    """n distinct simple sentences about Japanese cities (a stand-in for the Wikipedia corpus): two of them are
    near-duplicates only where they differ in the year alone."""
    rng = random.Random(seed)
    out: list[str] = []
    seen = set()
    while len(out) < n:
        a, b, c = rng.randrange(17), rng.randrange(17), rng.randrange(17)
        slot = [(a + b * x + c * x * x) % 17 for x in range(5)]
        s = (f"{PLACES[slot[0]]} {VERBS[slot[1]]} {KINDS[slot[2]]} {THINGS[slot[3]]} near {NEAR[slot[4]]} "
             f"in {rng.randint(1600, 2020)}.")
        if s not in seen:
            seen.add(s)
            out.append(s)
    return out


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    """A saved tiny GPT-2 (2 layers, 64 wide, GPT-2's real 50257-token vocabulary)."""
    return make_gpt2(tmp_path_factory.mktemp("tiny") / "model", "tiny", n_positions=256)


@pytest.fixture()
def corpus_file(tmp_path) -> Path:
    """A 300-sentence corpus file with a few exact duplicates and CRLF line ends."""
    sentences = make_corpus(300)
    lines = sentences + sentences[:20]  # duplicates that must not leak across the split
    p = tmp_path / "corpus.txt"
    p.write_bytes(("\r\n".join(lines) + "\r\n").encode("utf-8"))
    return p
