"""bench: sane, correctly counted measurements on the tiny shape (no timing assertions)."""

from __future__ import annotations

import statistics

import pytest
import torch

from gpt2tune import data, modeling
from gpt2tune.bench import (CORPUS_MAX_TOKENS, BenchConfig, corpus_examples, flops_per_token, format_table, run,
                            synthetic_lengths)
from gpt2tune.cli import main
from gpt2tune.errors import UserError


def test_synthetic_lengths_look_like_the_japan_corpus():
    lengths = synthetic_lengths(20_000, seed=3)
    assert max(lengths) == CORPUS_MAX_TOKENS
    assert min(lengths) >= 3
    assert 17.6 < statistics.mean(lengths) < 19.6


def test_flops_per_token_counts_head_once_and_skips_lookups(tiny_model):
    model, _ = modeling.load(str(tiny_model))
    n, fpt = flops_per_token(model, 128)
    total = sum(p.numel() for p in model.parameters())  # the tied wte/lm_head table is counted once here
    wpe = model.transformer.wpe.weight.numel()
    assert n == total - wpe
    assert fpt == 6 * n + 12 * 2 * 64 * 128


@pytest.fixture(scope="module")
def result(tiny_model):
    cfg = BenchConfig(shapes=["tiny"], steps=2, sentences=64, article_batch=8, max_new_tokens=4, isolate=False,
                      threads=1)
    return cfg, run(cfg, progress=lambda m: None)


def test_bench_reports_sane_fields(result):
    cfg, r = result
    assert r["peak_flops"]["bf16"] > 0 and r["peak_flops"]["fp32"] > 0
    (row,) = r["shapes"]
    article, ours = row["train"]
    assert article["loop"] == "article" and ours["loop"] == "gpt2tune"
    assert article["precision"] == "fp32"
    assert article["pad_fraction"] > 0.5  # every sentence padded to the corpus's longest
    assert ours["pad_fraction"] < 0.2  # packed
    for x in (article, ours):
        assert x["useful_tokens_per_s"] > 0 and x["ratio"] > 0 and 0 < x["mfu"] < 2
        assert len(x["step_s"]) == cfg.steps and x["peak_memory_bytes"] > 50 * 2**20
    assert article["ratio"] == 1.0
    g = row["generation"]
    assert g["samples"] == 20 and g["ratio"] > 0 and g["article_samples_per_s"] > 0
    table = format_table(r)
    assert "tiny" in table and "x article" in table and "GFLOP/s" in table


def test_bench_counts_useful_tokens_exactly(result, tiny_model):
    cfg, r = result
    article, ours = r["shapes"][0]["train"]
    _, tokenizer = modeling.load(str(tiny_model))
    examples = corpus_examples(cfg, tokenizer)
    # the article's loop: real tokens of the sentences of timed steps 1..steps (pads not counted)
    order = torch.randperm(len(examples), generator=torch.Generator().manual_seed(cfg.seed))
    bs = cfg.article_batch
    want = [sum(len(examples[j]) for j in order[(i * bs) % (len(order) - bs + 1):][:bs].tolist())
            for i in range(1, cfg.steps + 1)]
    assert article["tokens_per_step"] == statistics.mean(want)
    assert article["positions_per_step"] == bs * max(len(x) for x in examples)
    # gpt2tune's loop: real tokens in the packed blocks of the timed steps
    blocks = data.pack(examples, cfg.block_size, tokenizer.pad_token_id)
    useful = (blocks.segments >= 0).sum(dim=1).tolist()
    order = data.epoch_order(len(blocks), cfg.seed, 0)
    want = [sum(useful[order[(i * cfg.batch_size + j) % len(order)]] for j in range(cfg.batch_size))
            for i in range(1, cfg.steps + 1)]
    assert ours["tokens_per_step"] == statistics.mean(want)


def test_bench_config_errors():
    with pytest.raises(UserError, match="unknown shape"):
        BenchConfig(shapes=["huge"]).validate()
    with pytest.raises(UserError, match="steps"):
        BenchConfig(steps=0).validate()


def test_bench_cli_bad_shape_is_one_line(capsys):
    assert main(["bench", "--shapes", "nope"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("gpt2tune: error: unknown shape") and err.count("\n") == 1
