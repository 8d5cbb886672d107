"""Never silent: what loads is named, slow phases show a bar on stderr, and quick ones show none."""

from __future__ import annotations

import re

from gpt2tune import progress
from gpt2tune.cli import main

from conftest import make_corpus


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
