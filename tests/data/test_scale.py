"""The paths built for millions of sentences give exactly what the simple ones give: ids, splits, packing."""

from __future__ import annotations

import itertools
import random

import numpy as np
import pytest
from conftest import make_corpus

from gpt2tune.data import blocks, encode, read
from gpt2tune.data import split as data_split
from gpt2tune.data import split as splitfile
from gpt2tune.model.builtin import gpt2_tokenizer

TRICKY = [
    "Tokyo's 23 wards aren't small; they'll grow, we've seen, I'm sure, you'd say, she's 3.5 km away.",
    "Hyōgo Prefecture (兵庫県, Hyōgo-ken) is in the Kansai region of Honshu.",
    "第二部分：从“九一八”事变到西安事变 The emergency erupts .",
    "Some delicacies are នំបញ្ចុក Num Banh chok អាម៉ុក Amok .",
    "Emoji 🗾🍣 and ZWJ 👩‍👩‍👧 and flags 🇯🇵, combining e\u0301 and İstanbul, ᾳ, ß.",
    "A literal <sos> token, and <|endoftext|> too.",  # added tokens: this chunk goes through the tokenizer
    "Numbers 1,000,000 and ١٢٣ and ½ and Ⅻ; tabs\tand\u00a0spaces and \u3000 ideographic space.",
    "'s 't 're 've 'm 'll 'd 'S 'T — “quotes” «guillemets» ‘single’",
    "x",
    "a" * 300,
]


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    tok = gpt2_tokenizer(tmp_path_factory.mktemp("tok"))
    tok.add_special_tokens({"bos_token": "<sos>", "eos_token": "<eos>", "pad_token": "<pad>"})
    return tok


def _reference(tokenizer, lines):
    ids = tokenizer(lines, add_special_tokens=False)["input_ids"]
    return np.array([len(x) for x in ids]), np.fromiter(itertools.chain.from_iterable(ids), np.int32)


@pytest.mark.parametrize("workers", [1, 2])
def test_piece_encoder_gives_the_tokenizers_ids(tokenizer, workers):
    lines = [" ".join(s.split()) for s in TRICKY] + make_corpus(500, seed=3)
    random.Random(0).shuffle(lines)
    got = list(encode.encode_chunks(tokenizer, encode.text_chunks(lines, size=400), workers=workers))
    lengths, flat = _reference(tokenizer, lines)
    assert np.array_equal(np.concatenate([g[1] for g in got]), lengths)
    assert np.array_equal(np.concatenate([g[0] for g in got]), flat)
    assert len(got) > 10  # many chunks: some fast, some (with <sos>) through the tokenizer


def test_piece_encoder_uses_the_fast_path_only_where_it_is_exact(tokenizer):
    enc = encode.PieceEncoder(tokenizer)
    assert enc.fast and enc._safe("Tokyo has temples.\nHyōgo 兵庫県") and not enc._safe("a <sos> b")


def test_the_fast_path_is_only_for_plain_byte_level_bpe(tokenizer):
    from tokenizers import Tokenizer, normalizers, pre_tokenizers

    def variant(change):
        backend = Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())
        change(backend)
        return encode._plain_byte_level_bpe(backend)

    assert variant(lambda b: None)
    assert not variant(lambda b: setattr(b, "normalizer", normalizers.NFC()))
    assert not variant(lambda b: setattr(b, "pre_tokenizer", pre_tokenizers.ByteLevel(add_prefix_space=True)))
    assert not variant(lambda b: setattr(b, "pre_tokenizer", pre_tokenizers.ByteLevel(use_regex=False)))
    assert not variant(lambda b: setattr(b, "pre_tokenizer", pre_tokenizers.Whitespace()))
    assert not variant(lambda b: setattr(b.model, "dropout", 0.1))
    assert not variant(lambda b: b.add_special_tokens([f"<t{i}>" for i in range(70)]))


def test_file_chunks_are_whole_lines(tmp_path):
    p = tmp_path / "t.txt"
    lines = [f"line {i} " + "é" * (i % 7) for i in range(1000)]
    p.write_text("\n".join(lines) + "\n", encoding="utf-8")
    chunks = list(encode.file_chunks(p, size=97))
    assert len(chunks) > 10 and "\n".join(chunks).split("\n") == lines


def test_split_file_equals_splitting_the_sentences(tmp_path):
    sentences = make_corpus(400, seed=9)
    lines = sentences + sentences[:30] + ["  ", "", " Osaka   has many\ttemples in 1650. "] + TRICKY[:5]
    lines += [s.upper().replace(" in ", " in the year ") for s in sentences[:40]]  # near-duplicates
    random.Random(1).shuffle(lines)
    p = tmp_path / "c.txt"
    p.write_bytes(("\r\n".join(lines) + "\r\n").encode("utf-8"))
    for near in (True, False):
        info = splitfile.split_file(p, "text", 0.1, 7, 25, near, tmp_path)
        want = data_split.split_sentences(read.read_sentences(p), 0.1, 7, 25, near)
        assert (tmp_path / "train.txt").read_text(encoding="utf-8").splitlines() == want.train
        assert (tmp_path / "val.txt").read_text(encoding="utf-8").splitlines() == want.val
        assert {k: info[k] for k in want.summary()} == want.summary()
        assert info["near_examples"] == want.near_examples and (want.near_groups > 0) == near


def test_exact_duplicates_found_by_hash_keep_the_first_copy():
    buf, offsets = np.frombuffer(b"a\nb\na\nc\nb\n", np.uint8), np.array([0, 2, 4, 6, 8, 10])
    collide = np.array([5, 5, 5, 5, 5])  # every hash equal: the bytes decide
    assert splitfile.first_copies(buf, offsets, collide).tolist() == [True, True, False, True, False]


def test_best_fit_packing_is_unchanged():
    def reference(lengths, block_size):  # the packing every cached block was made with
        space, members, free, out = [], [], [[] for _ in range(block_size + 1)], []
        for length in lengths:
            b = next((free[k].pop() for k in range(length, block_size + 1) if free[k]), None)
            if b is None:
                b = len(space)
                space.append(block_size)
                members.append(0)
            out.append((b, members[b], block_size - space[b]))
            members[b] += 1
            space[b] -= length
            free[space[b]].append(b)
        return out, len(space)

    lengths = np.random.default_rng(0).integers(2, 129, 5000)
    block, slot, start, n = blocks.assign_blocks(lengths, 128)
    want, want_n = reference(lengths.tolist(), 128)
    assert list(zip(block.tolist(), slot.tolist(), start.tolist())) == want and n == want_n


def test_whitespace_collapsed_over_a_whole_piece_as_line_by_line():
    rng = random.Random(0)
    alphabet = ["a", "b", " ", "  ", "\t", "\u00a0", "\u3000", "\n", "\x1f", "x y", "\0"]
    for _ in range(5000):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 12)))
        assert read._collapse(text) == "\n".join(" ".join(line.split()) for line in text.split("\n"))
