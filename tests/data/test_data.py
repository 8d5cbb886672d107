"""Data path: reading, dedupe, split, packing and the masked loss."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import AutoModelForCausalLM

from gpt2tune.data import blocks as data_blocks
from gpt2tune.data import read
from gpt2tune.data import split as data_split
from gpt2tune.errors import UserError
from gpt2tune.train.step import block_loss


def test_read_txt_crlf_blank_lines(tmp_path):
    p = tmp_path / "a.txt"
    p.write_bytes("Tokyo is big.\r\n\r\n  Osaka   is   old. \r\n日本 is Japan.\r\n".encode())
    assert read.read_sentences(p) == ["Tokyo is big.", "Osaka is old.", "日本 is Japan."]


def test_read_jsonl_and_csv(tmp_path):
    j = tmp_path / "a.jsonl"
    j.write_text(json.dumps({"text": "One."}) + "\n\n" + json.dumps({"text": "Two."}) + "\n")
    assert read.read_sentences(j) == ["One.", "Two."]
    c = tmp_path / "a.csv"
    c.write_text('id,sentence\n1,"Kyoto, old capital."\n2,Nara.\n')
    assert read.read_sentences(c, text_column="sentence") == ["Kyoto, old capital.", "Nara."]
    with pytest.raises(UserError, match="no column 'text'"):
        read.read_sentences(c)


def test_dedupe_keeps_first_order():
    assert read.dedupe(["b", "a", "b", "c", "a"]) == ["b", "a", "c"]


def test_split_seeded_disjoint_and_dedupes_first():
    sentences = [f"s{i}" for i in range(100)] + [f"s{i}" for i in range(30)]
    train, val = data_split.split(sentences, 0.1, seed=1)
    assert len(val) == 10 and len(train) == 90
    assert not set(train) & set(val)
    assert data_split.split(sentences, 0.1, seed=1) == (train, val)
    assert data_split.split(sentences, 0.1, seed=2) != (train, val)


def test_pack_no_sentence_split_and_little_padding():
    rng = torch.Generator().manual_seed(0)
    examples = [list(range(1, 1 + int(n))) for n in torch.randint(5, 40, (400,), generator=rng)]
    blocks = data_blocks.pack(examples, 128, pad_id=0)
    assert blocks.useful_fraction() > 0.97
    # every example sits whole in exactly one block, with positions restarting at 0
    found = 0
    for b in range(len(blocks)):
        seg = blocks.segments[b]
        for j in range(int(seg.max()) + 1):
            where = (seg == j).nonzero().flatten()
            assert (where == torch.arange(where[0], where[-1] + 1)).all()
            assert blocks.position_ids[b, where].tolist() == list(range(len(where)))
            found += 1
    assert found == len(examples)


def test_targets_masked_at_padding_and_sentence_starts():
    blocks = data_blocks.pack([[5, 6, 7], [8, 9]], 8, pad_id=0)
    assert blocks.input_ids[0].tolist() == [5, 6, 7, 8, 9, 0, 0, 0]
    assert blocks.targets[0].tolist() == [6, 7, -100, 9, -100, -100, -100, -100]


def test_packed_masked_loss_equals_reference_loss(tiny_model):
    """The llm.c idea: the fast packed path means the same as one sentence at a time, unpadded."""
    model = AutoModelForCausalLM.from_pretrained(tiny_model, attn_implementation="sdpa").eval()
    g = torch.Generator().manual_seed(0)
    examples = [torch.randint(0, 50257, (int(n),), generator=g).tolist() for n in (12, 30, 7, 19, 25, 3)]
    with torch.no_grad():
        ref = sum(F.cross_entropy(model(torch.tensor([x])).logits[0, :-1], torch.tensor(x[1:]), reduction="sum")
                  for x in examples)
        blocks = data_blocks.pack(examples, 64, pad_id=0)
        packed = block_loss(model, data_blocks.batch(blocks, range(len(blocks))))
    assert int(blocks.target_counts().sum()) == sum(len(x) - 1 for x in examples)
    assert packed.item() == pytest.approx(ref.item(), rel=1e-5)


def test_epoch_order_is_a_pure_function():
    assert data_blocks.epoch_order(50, 3, 1) == data_blocks.epoch_order(50, 3, 1)
    assert data_blocks.epoch_order(50, 3, 1) != data_blocks.epoch_order(50, 3, 2)
    assert sorted(data_blocks.epoch_order(50, 3, 1)) == list(range(50))


@settings(max_examples=60, deadline=None)
@given(st.lists(st.lists(st.integers(1, 1000), min_size=2, max_size=30), min_size=1, max_size=40),
       st.integers(30, 64))
def test_every_example_packed_once_in_order(examples, block_size):
    blocks = data_blocks.pack(examples, block_size, pad_id=0)
    pieces = []
    for b in range(len(blocks)):
        for j in range(int(blocks.segments[b].max()) + 1):
            pieces.append(tuple(blocks.input_ids[b][blocks.segments[b] == j].tolist()))
    assert sorted(pieces) == sorted(tuple(x) for x in examples)
    # a target is the next token of the same example, and nothing else is predicted
    n_targets = int(blocks.target_counts().sum())
    assert n_targets == sum(len(x) - 1 for x in examples)
