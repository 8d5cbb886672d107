"""bench: sane, correctly counted measurements on the tiny shape (no timing assertions)."""

from __future__ import annotations

import statistics

import pytest

from gpt2tune.bench import CORPUS_MAX_TOKENS, BenchConfig, flops_per_token, format_table, run, synthetic_lengths
from gpt2tune.cli import main
from gpt2tune.errors import UserError
from gpt2tune.hardware import cpu_has_bf16
from gpt2tune.model import load as modeling


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
    assert r["peak_flops"]["fp32"] > 0
    # bf16 is measured only where it is native (emulated bf16 is ~50x slower than fp32: not a peak worth timing)
    assert (r["peak_flops"]["bf16"] is not None) == cpu_has_bf16()
    assert r["peak_flops"]["bf16"] is None or r["peak_flops"]["bf16"] > 0
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


def test_bench_counts_only_real_tokens(tiny_model, tmp_path):
    """Sentences of one token length, a whole number per block: every step of either loop holds a known count of
    real tokens, whichever sentences or blocks it draws."""
    from conftest import make_corpus

    _, tokenizer = modeling.load(str(tiny_model))
    by_length: dict[int, list[str]] = {}
    for s in make_corpus(3000, seed=5):
        by_length.setdefault(len(tokenizer(s, add_special_tokens=False)["input_ids"]), []).append(s)
    n, sentences = max(by_length.items(), key=lambda kv: len(kv[1]))
    per_block = 128 // (n + 2)  # <sos> s <eos> examples that fill a 128-token block
    sentences = sentences[: (len(sentences) // per_block) * per_block]  # only full blocks
    assert len(sentences) >= 8 * per_block
    path = tmp_path / "same_length.txt"
    path.write_text("\n".join(sentences) + "\n", encoding="utf-8")
    cfg = BenchConfig(shapes=["tiny"], steps=2, data=str(path), sentences=len(sentences), article_batch=8,
                      batch_size=4, generation=False, isolate=False, threads=1)
    article, ours = run(cfg, progress=lambda m: None)["shapes"][0]["train"]
    assert article["tokens_per_step"] == 8 * (n + 2) and article["pad_fraction"] == 0.0
    assert article["positions_per_step"] == 8 * (n + 2)
    assert ours["tokens_per_step"] == 4 * per_block * (n + 2)
    assert ours["positions_per_step"] == 4 * 128
    assert ours["pad_fraction"] == round(1 - per_block * (n + 2) / 128, 4)


def test_bench_config_errors():
    with pytest.raises(UserError, match="unknown shape"):
        BenchConfig(shapes=["huge"]).validate()
    with pytest.raises(UserError, match="steps"):
        BenchConfig(steps=0).validate()


def test_bench_cli_bad_shape_is_one_line(capsys):
    assert main(["bench", "--shapes", "nope"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("gpt2tune: error: unknown shape") and err.count("\n") == 1
