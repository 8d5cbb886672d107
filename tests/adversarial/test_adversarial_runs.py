"""Long paragraphs and hand-edited run files: sentence splitting in bounded time, a report of what is valid."""

from __future__ import annotations

import json

from attack import run_cli, snapshot
from conftest import make_corpus
from fake_wiki import JAPAN
from hypothesis import given, settings
from hypothesis import strategies as st

from gpt2tune.config import TrainConfig, write_config
from gpt2tune.corpus import clean
from gpt2tune.corpus.clean import WINDOW, SentenceCleaner, windows


@settings(max_examples=200, deadline=None)
@given(text=st.text(alphabet=st.sampled_from("ab .!?。A\n\"'"), max_size=400), size=st.integers(4, 60))
def test_windows_cover_the_text_in_pieces_of_bounded_size(text, size):
    pieces = windows(text, size)
    assert "".join(pieces) == text
    assert all(len(p) <= size for p in pieces)
    assert all(len(p) >= size // 2 for p in pieces[:-1])  # each cut moves on by half a window at least: linear


def test_a_one_megabyte_line_reaches_pysbd_in_bounded_windows(monkeypatch):
    sentences = make_corpus(300)
    line = " ".join(sentences[i % 300] for i in range(30_000))[:1_000_000]
    cleaner = SentenceCleaner()
    seen: list[int] = []
    real = cleaner.segmenter.segment
    monkeypatch.setattr(cleaner.segmenter, "segment", lambda text: seen.append(len(text)) or real(text[:200]))
    cleaner.split(line)
    assert max(seen) <= WINDOW and sum(seen) >= 990_000  # every character went through, none in a long piece
    assert len(seen) <= 2 * len(line) // WINDOW + 1


def test_normal_paragraphs_split_as_before():
    cleaner = SentenceCleaner()
    paragraphs = clean.wiki_paragraphs(JAPAN) + [" ".join(make_corpus(140))]  # the last one is ~6.4 KB: 3 windows
    assert len(paragraphs[-1]) > 2 * WINDOW
    for p in paragraphs:
        text = clean.strip_markup(p)
        direct = [s.strip() for s in cleaner.segmenter.segment(text) if s.strip()]
        assert cleaner.split(p) == direct


def test_corpus_clean_of_a_long_line_finishes(capsys, tmp_path):
    # 60 KB in one line took 15 s before windows (time grew with its square); now it is linear
    src = tmp_path / "long.txt"
    src.write_text(" ".join(make_corpus(2000))[:60_000] + "\n", encoding="utf-8")
    rc, out, err = run_cli(capsys, "corpus", "clean", src, "--out", tmp_path / "out.txt", "--min-words", "3")
    assert rc == 0, err
    assert len((tmp_path / "out.txt").read_text(encoding="utf-8").splitlines()) > 1000


def _rows():
    good = [{"epoch": 0, "step": 0, "train_loss": None, "val_loss": 5.0, "val_ppl": 148.4, "best": True,
             "event": "start"},
            {"epoch": 1, "step": 10, "train_loss": 4.2, "val_loss": 4.0, "val_ppl": 54.6, "best": True,
             "event": "epoch"}]
    bad = [{"epoch": 2, "train_loss": 3.0, "val_loss": 3.9, "val_ppl": 49.4, "event": "epoch"},  # no step
           {"epoch": 2, "step": 20, "val_loss": 3.9, "val_ppl": 49.4, "event": "epoch"},  # no train_loss
           {"epoch": 2, "step": 20, "train_loss": "low", "val_loss": 3.9, "val_ppl": 49.4, "event": "epoch"}]
    return good, bad


def hand_edited_run(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    write_config(TrainConfig(data="/home/someone/private/corpus.txt", out=str(run), model="gpt2", patience=2),
                 run / "config.yaml")
    good, bad = _rows()
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in good[:1] + bad + good[1:]) + "[1, 2]\n")
    samples = [{"step": 10, "epoch": 1, "keyword": "Tokyo", "text": "Tokyo is a city.", "ended": True},
               {"step": 10, "epoch": 1, "text": "no keyword here", "ended": True}]
    (run / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in samples))
    (run / "compare.json").write_text(json.dumps([{"metric": "perplexity"}]))
    return run


def test_report_of_a_hand_edited_run_renders_what_is_valid(capsys, tmp_path):
    run = hand_edited_run(tmp_path)
    before = snapshot(run)
    rc, out, err = run_cli(capsys, "report", run)
    assert rc == 0, err
    warnings = err.strip().splitlines()
    assert warnings == [
        f"gpt2tune: warning: {run}: skipped 4 lines of metrics.jsonl (line 2: no integer step)",
        f"gpt2tune: warning: {run}: skipped 1 line of samples.jsonl (line 2: no text keyword)",
        f"gpt2tune: warning: {run}: left out compare.json: it holds a list, not an object"]
    page = (run / "report.html").read_text(encoding="utf-8")
    assert "skipped 4 lines of metrics.jsonl" in page and "Tokyo is a city." in page
    assert "148.40</b> before training" in page and "54.60</b> at the best evaluation" in page
    assert "/home/someone" not in page and "corpus.txt" in page  # an absolute path is shown by its name
    after = snapshot(run)
    assert {k: v for k, v in after.items() if k not in ("report.html", "loss.png")} == before  # nothing else touched


def test_report_of_unreadable_compare_json_is_a_note(capsys, tmp_path):
    run = hand_edited_run(tmp_path)
    (run / "compare.json").write_text('{"table": [{"label": "x"}]}')
    rc, _, err = run_cli(capsys, "report", run)
    assert rc == 0 and "left out compare.json: a table row lacks label, base, tuned, better or winner" in err
