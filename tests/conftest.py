"""Shared fixtures: tiny random GPT-2s with the real GPT-2 tokenizer stand in for pretrained models."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

from gpt2tune.model.builtin import make_gpt2

PLACES = ["Tokyo", "Osaka", "Kyoto", "Nara", "Sapporo", "Kobe", "Nagoya", "Sendai", "Fukuoka", "Hiroshima"]
THINGS = ["temples", "gardens", "trains", "festivals", "castles", "markets", "museums", "shrines", "bridges"]
VERBS = ["has many", "is known for its", "is famous for", "welcomes visitors to its", "protects its"]


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
    """n distinct simple sentences about Japanese cities (a stand-in for the Wikipedia corpus)."""
    rng = random.Random(seed)
    out: list[str] = []
    seen = set()
    while len(out) < n:
        s = f"{rng.choice(PLACES)} {rng.choice(VERBS)} {rng.choice(THINGS)}"
        if rng.random() < 0.5:
            s += f" and {rng.choice(THINGS)}"
        s += f" in {rng.randint(1600, 2020)}."
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
