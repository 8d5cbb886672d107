"""Property-based tests (hypothesis) for the data path."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from gpt2tune.data import blocks as data_blocks
from gpt2tune.data import split as data_split
from gpt2tune.model.builtin import gpt2_tokenizer

BOS, EOS, PAD = 50257, 50258, 50259


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    tok = gpt2_tokenizer(tmp_path_factory.mktemp("tok"))
    tok.add_special_tokens({"bos_token": "<sos>", "eos_token": "<eos>", "pad_token": "<pad>"})
    return tok


text = st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=60)
settings_ = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@settings_
@given(st.lists(text, min_size=1, max_size=30), st.integers(24, 96))
def test_every_sentence_packed_once_whole_and_in_order(tokenizer, sentences, block_size):
    examples = data_blocks.encode(tokenizer, sentences, BOS, EOS, block_size)
    blocks = data_blocks.pack(examples, block_size, PAD)
    pieces = []
    for b in range(len(blocks)):
        ids, seg = blocks.input_ids[b], blocks.segments[b]
        for j in range(int(seg.max()) + 1):
            pieces.append(ids[seg == j].tolist())  # contiguous, tokens in order (checked in test_data too)
    assert sorted(map(tuple, pieces)) == sorted(map(tuple, examples))


@settings_
@given(st.lists(text, min_size=1, max_size=30), st.integers(24, 96))
def test_targets_masked_exactly_where_nothing_is_predicted(tokenizer, sentences, block_size):
    blocks = data_blocks.pack(data_blocks.encode(tokenizer, sentences, BOS, EOS, block_size), block_size, PAD)
    for b in range(len(blocks)):
        ids, seg, tgt = blocks.input_ids[b].tolist(), blocks.segments[b].tolist(), blocks.targets[b].tolist()
        for t in range(block_size):
            same_next = t + 1 < block_size and seg[t] >= 0 and seg[t + 1] == seg[t]
            assert tgt[t] == (ids[t + 1] if same_next else data_blocks.IGNORE)
        assert all(i == PAD for i, s in zip(ids, seg) if s < 0)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.text(min_size=1, max_size=20), min_size=2, max_size=80), st.floats(0.05, 0.5),
       st.integers(0, 10_000))
def test_no_sentence_in_both_train_and_val(sentences, fraction, seed):
    assume(len(set(sentences)) * fraction < len(set(sentences)) - 1)
    train, val = data_split.split(sentences, fraction, seed)
    assert not set(train) & set(val)
    assert sorted(train + val) == sorted(set(sentences))
    assert len(val) >= 1


@settings_
@given(text)
def test_any_unicode_round_trips_clean_tokenize_decode(tokenizer, raw):
    cleaned = " ".join(raw.split())
    assume(cleaned and "<sos>" not in cleaned and "<eos>" not in cleaned and "<pad>" not in cleaned)
    [ids] = data_blocks.encode(tokenizer, [cleaned], BOS, EOS, 10_000)
    assert ids[0] == BOS and ids[-1] == EOS
    assert tokenizer.decode(ids, skip_special_tokens=True) == cleaned
