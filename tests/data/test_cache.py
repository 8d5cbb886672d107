"""The data cache: hit, miss on changed data or settings, damaged entries rebuilt, the same blocks as in memory."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import make_corpus

from gpt2tune.cli import main
from gpt2tune.data import blocks as data_blocks
from gpt2tune.data import cache as datacache
from gpt2tune.data import read
from gpt2tune.data import split as data_split
from gpt2tune.errors import UserError
from gpt2tune.model.builtin import gpt2_tokenizer


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    tok = gpt2_tokenizer(tmp_path_factory.mktemp("tok"))
    tok.add_special_tokens({"bos_token": "<sos>", "eos_token": "<eos>", "pad_token": "<pad>"})
    return tok


@pytest.fixture()
def corpus(tmp_path):
    p = tmp_path / "corpus.txt"
    sentences = make_corpus(300, seed=6)
    p.write_text("\n".join(sentences + sentences[:10]) + "\n", encoding="utf-8")
    return p


def _split(path, cache, **kw):
    args = dict(text_column="text", val_fraction=0.1, seed=3, val_size=2000, near_dedupe=True, cache_dir=str(cache))
    return datacache.cached_split(str(path), **{**args, **kw})


def test_split_hit_and_miss(corpus, tmp_path):
    cache = tmp_path / "cache"
    first = _split(corpus, cache)
    assert not first.hit and _split(corpus, cache).hit
    want = data_split.split_sentences(read.read_sentences(corpus), 0.1, 3, 2000, near_dedupe=True)
    assert list(first.sentences("train")) == want.train and list(first.sentences("val")) == want.val
    assert first.info["train"] == 270 and first.info["val"] == 30 and first.info["near_grouped"] == want.near_grouped
    assert not _split(corpus, cache, val_size=7).hit  # another setting: another entry
    assert _split(corpus, cache, val_size=7).info["val"] == 7
    with corpus.open("a", encoding="utf-8") as f:
        f.write("Kobe has a new museum of ships.\n")  # another content: another entry
    assert not _split(corpus, cache).hit
    assert len(list((cache / "data").glob("split-*"))) == 3
    assert not list((cache / "data").glob(".*"))  # no temporary directories left


def test_cached_blocks_equal_packing_in_memory_and_hit(corpus, tmp_path, tokenizer):
    split = _split(corpus, tmp_path / "c")
    train, val = split.blocks(tokenizer, 48, str(tmp_path / "c"))
    assert not train.hit and not val.hit
    sentences = list(split.sentences("train"))
    mem = data_blocks.pack(data_blocks.encode(tokenizer, sentences, tokenizer.bos_token_id, tokenizer.eos_token_id, 48), 48,
                    tokenizer.pad_token_id)
    idx = list(range(len(mem)))
    a, b = mem.rows(idx), train.rows(idx)
    for name in ("input_ids", "targets", "position_ids", "segments"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    assert torch.equal(mem.target_counts(), train.target_counts())
    assert torch.equal(mem.useful_counts(), train.useful_counts())
    assert train.n_examples == len(sentences) == 270 and len(train) == len(mem)
    batch = data_blocks.batch(train, [2, 0])
    assert torch.equal(batch["input_ids"], mem.input_ids[[2, 0]])
    again, _ = split.blocks(tokenizer, 48, str(tmp_path / "c"))
    assert again.hit and len(again) == len(train)
    other, _ = split.blocks(tokenizer, 64, str(tmp_path / "c"))  # another block size: another entry
    assert not other.hit and other.block_size == 64


@pytest.mark.parametrize("damage", ["flip a byte", "truncate", "torn manifest", "missing file"])
def test_damaged_entry_is_rebuilt_not_trusted(corpus, tmp_path, tokenizer, damage, capsys):
    cache = tmp_path / "c"
    split = _split(corpus, cache)
    train, _ = split.blocks(tokenizer, 48, str(cache))
    want = train.rows(list(range(len(train))))
    entry = next(p for p in (cache / "data").glob("blocks-*") if (p / "ids.npy").stat().st_size
                 == train.ids.nbytes + 128)
    del train
    ids = entry / "ids.npy"
    raw = bytearray(ids.read_bytes())
    if damage == "flip a byte":
        raw[-3] ^= 0xFF
        ids.write_bytes(bytes(raw))
    elif damage == "truncate":
        ids.write_bytes(bytes(raw[: len(raw) // 2]))
    elif damage == "torn manifest":
        m = (entry / "manifest.json").read_text()
        (entry / "manifest.json").write_text(m[: len(m) // 2])
    else:
        (entry / "segments.npy").unlink()
    rebuilt, _ = split.blocks(tokenizer, 48, str(cache))
    assert not rebuilt.hit
    assert "damaged or incomplete; rebuilding" in capsys.readouterr().err
    got = rebuilt.rows(list(range(len(rebuilt))))
    assert all(torch.equal(getattr(got, k), getattr(want, k)) for k in ("input_ids", "targets", "segments"))
    assert split.blocks(tokenizer, 48, str(cache))[0].hit


def test_stale_entry_with_another_key_is_not_used(corpus, tmp_path):
    cache = tmp_path / "c"
    split = _split(corpus, cache)
    manifest = json.loads((split.path / "manifest.json").read_text())
    manifest["version"] = datacache.VERSION + 1  # written by another gpt2tune version
    (split.path / "manifest.json").write_text(json.dumps(manifest))
    assert not _split(corpus, cache).hit


def test_cache_dir_from_environment_and_unusable_dir(tmp_path, monkeypatch):
    monkeypatch.setenv(datacache.ENV, str(tmp_path / "env"))
    assert datacache.cache_root() == tmp_path / "env" / "data"
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(UserError, match="cannot use the data cache directory"):
        datacache.cache_root(str(blocker))


def test_streamed_reading_equals_whole_file_reading(tmp_path):
    p = tmp_path / "big.txt"
    # lines cross the 4 MiB read boundary; unusual line breaks (\u2028, \x85) and CRLF as splitlines sees them
    p.write_bytes("Tōkyō is large.\u2028Osaka\x85is old.\r\n  Kyoto   has temples. \n\n".encode() * 120_000)
    text = p.read_bytes().decode("utf-8")
    want = [" ".join(x.split()) for x in text.splitlines() if x.split()]
    assert read.read_sentences(p) == want


def test_bad_data_leaves_no_run_and_no_cache_entry(tmp_path, tiny_model, monkeypatch, capsys):
    monkeypatch.setenv(datacache.ENV, str(tmp_path / "cache"))
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"Tokyo is big.\n" + b"\xff\xfe bad\n")
    out = tmp_path / "run"
    assert main(["train", "--model", str(tiny_model), "--data", str(bad), "--out", str(out)]) == 1
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith("gpt2tune: 1 thread")  # the thread choice is always the first line
    assert len(err) == 2 and "not UTF-8 text (bad byte 0xff on line 2)" in err[1]  # then the error, one line
    assert not out.exists() and not any((tmp_path / "cache" / "data").iterdir())


def test_data_inspect_json(tmp_path, tiny_model, capsys):
    p = tmp_path / "c.txt"
    sentences = make_corpus(120, seed=8)
    p.write_text("\n".join(sentences + sentences[:4] + ["Click here: http://example.com/x"]) + "\n")
    out = tmp_path / "inspect.json"
    assert main(["data", "inspect", str(p), "--model", str(tiny_model), "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "121 unique" in text and "one epoch:" in text and "tokens per sentence:" in text
    r = json.loads(out.read_text())
    assert (r["sentences"], r["unique"]) == (125, 121)
    assert r["exact_duplicates"] == {"groups": 4, "extra_copies": 4}
    assert r["near_duplicates"]["groups"] >= 1 and len(r["near_duplicates"]["examples"]) <= 5
    tok = gpt2_tokenizer(tmp_path / "tok")
    unique = list(dict.fromkeys(sentences + ["Click here: http://example.com/x"]))
    lengths = [len(x) for x in tok(unique, add_special_tokens=False)["input_ids"]]
    assert r["tokens"]["total"] == sum(lengths) and r["tokens"]["max"] == max(lengths)
    assert sum(h["count"] for h in r["tokens"]["histogram"]) == 121
    assert r["longest"][0]["tokens"] == max(lengths) and len(r["longest"]) == 5
    assert r["non_prose"]["by_filter"]["url"]["lines"] == 1
    e = r["epoch"]
    assert e["tokens"] == sum(lengths) + 2 * 121 and e["parameters"] > 0 and e["seconds_at_peak"] > 0
    assert "FLOP estimate" in e["method"]


def test_evaluate_packs_its_data_once(tmp_path, tiny_model, monkeypatch):
    from gpt2tune.evaluate.options import EvaluateConfig
    from gpt2tune.evaluate.run import evaluate, perplexity
    from gpt2tune.model.load import load_seeded

    monkeypatch.setenv(datacache.ENV, str(tmp_path / "cache"))
    held = tmp_path / "held.txt"
    sentences = make_corpus(30, seed=11)
    held.write_text("\n".join(sentences + sentences[:3]) + "\n")
    cfg = EvaluateConfig(data=str(held), block_size=64, precision="fp32")
    first, second = evaluate(str(tiny_model), cfg), evaluate(str(tiny_model), cfg)
    assert len(list((tmp_path / "cache" / "data").glob("blocks-*"))) == 1
    assert first["perplexity"] == second["perplexity"] and first["sentences"] == 30
    model, tokenizer = load_seeded(str(tiny_model), "auto")
    direct = perplexity(model, tokenizer, sentences, block_size=64, precision="fp32")
    assert first["perplexity"] == pytest.approx(direct["perplexity"], rel=1e-9) and first["tokens"] == direct["tokens"]
