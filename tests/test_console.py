"""Never silent: what loads is named, slow phases show a bar on stderr, and quick ones show none."""

from __future__ import annotations

import re

from conftest import make_corpus

from gpt2tune import console as progress
from gpt2tune.cli import main


def test_loading_says_what_it_loads(tiny_model, tmp_path, capsys):
    held = tmp_path / "held.txt"
    held.write_text("\n".join(make_corpus(12)) + "\n", encoding="utf-8")
    assert main(["evaluate", str(tiny_model), "--data", str(held), "--threads", "1"]) == 0
    err = capsys.readouterr().err.splitlines()
    assert err[0] == "gpt2tune: 1 thread (--threads)"
    assert re.fullmatch(rf"gpt2tune: loading model {re.escape(str(tiny_model))} \.\.\. gpt2, 3\.3M parameters "
                        r"\(\d+\.\d s\)", err[1])
    assert len(err) == 2  # a quick evaluation draws no bar


def test_slow_phases_show_progress_on_stderr(tiny_model, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(progress, "DELAY_S", 0.0)  # every phase counts as slow
    held = tmp_path / "held.txt"
    held.write_text("\n".join(make_corpus(12)) + "\n", encoding="utf-8")
    assert main(["generate", str(tiny_model), "Osaka", "Kyoto", "-n", "3", "--max-new-tokens", "4"]) == 0
    out, err = capsys.readouterr()
    assert "sampling 6 rows" in err and "sampling" not in out  # samples alone on stdout
    assert len(out.splitlines()) == 6
    assert main(["compare", "--base", str(tiny_model), "--tuned", str(tiny_model), "--data", str(held),
                 "--out", str(tmp_path / "cmp"), "--keywords", "Kyoto", "--samples", "1", "--max-new-tokens", "3"]) == 0
    err = capsys.readouterr().err
    for phase in ("base: scoring", "base: sampling 1 rows", "tuned: scoring", "tuned: sampling 1 rows"):
        assert phase in err
    assert "loading base model" in err and "loading tuned model" in err
    assert "\r" not in err  # not a terminal: whole lines, no redraws


def test_bar_lines_when_stderr_is_not_a_terminal(monkeypatch, capsys):
    monkeypatch.setattr(progress, "DELAY_S", 0.0)
    with progress.bar(10, "counting", " things") as b:
        b.update(10)
    err = capsys.readouterr().err
    assert err.startswith("counting:") and err.endswith("\n") and "\r" not in err


def test_a_slow_step_says_what_it_does_and_a_quick_one_says_nothing(monkeypatch, capsys):
    import time

    with progress.phase("quick"):
        pass
    assert capsys.readouterr().err == ""
    monkeypatch.setattr(progress, "DELAY_S", 0.05)
    monkeypatch.setattr(progress, "EVERY_S", 0.1)
    with progress.phase("slow"):
        time.sleep(0.4)
    err = capsys.readouterr().err.splitlines()
    assert err[0] == "gpt2tune: slow ..." and re.fullmatch(r"gpt2tune: slow: done in 0\.\d s", err[-1])
    assert any(re.fullmatch(r"gpt2tune: slow: \d+ s so far", x) for x in err[1:-1])  # and every LOG_EVERY_S
    try:
        with progress.phase("failing"):
            time.sleep(0.2)
            raise ValueError("x")
    except ValueError:
        pass
    assert "done" not in capsys.readouterr().err  # a step that failed is not "done"


def test_preparing_data_the_first_time_is_not_silent(tmp_path, monkeypatch, capsys):
    from gpt2tune.data import cache as datacache
    from gpt2tune.model.builtin import gpt2_tokenizer

    monkeypatch.setattr(progress, "DELAY_S", 0.0)  # every step counts as slow
    corpus = tmp_path / "c.txt"
    corpus.write_text("\n".join(make_corpus(50)) + "\n", encoding="utf-8")
    tok = gpt2_tokenizer(tmp_path / "tok")
    tok.add_special_tokens({"bos_token": "<sos>", "eos_token": "<eos>", "pad_token": "<pad>"})
    split = datacache.cached_split(str(corpus), "text", 0.1, 0, None, True, str(tmp_path / "cache"))
    split.blocks(tok, 64, str(tmp_path / "cache"))
    err = capsys.readouterr().err
    assert "reading, deduplicating and grouping c.txt and splitting it" in err
    assert "tokenizing and packing sentences" in err and err.count("done in") == 3  # the split, train and val
    again = datacache.cached_split(str(corpus), "text", 0.1, 0, None, True, str(tmp_path / "cache"))
    again.blocks(tok, 64, str(tmp_path / "cache"))
    assert capsys.readouterr().err == ""  # from the cache: nothing to say
