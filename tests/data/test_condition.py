"""Title conditioning: titles read from .jsonl/.csv or a corpus manifest, `title: sentence` training lines, --about."""

from __future__ import annotations

import json

import pytest
import yaml
from conftest import make_corpus

from gpt2tune.cli import main
from gpt2tune.data.condition import FORMAT, Titled, read_titled, untitled
from gpt2tune.errors import UserError


def titled_rows(n: int = 240) -> list[Titled]:
    """Sentences about cities, each titled by its city (the first word)."""
    return [Titled(s, s.split()[0]) for s in make_corpus(n, seed=4)]


def write_jsonl(path, rows) -> None:
    path.write_text("".join(json.dumps({"text": r.text, "title": r.title}) + "\n" for r in rows), encoding="utf-8")


def test_titles_from_jsonl_csv_and_a_manifest(tmp_path):
    rows = titled_rows(30)
    write_jsonl(tmp_path / "a.jsonl", rows)
    assert read_titled(tmp_path / "a.jsonl") == rows
    (tmp_path / "a.csv").write_text("page,sentence\n" + "".join(f'"{r.title}","{r.text}"\n' for r in rows))
    assert read_titled(tmp_path / "a.csv", "sentence", "page") == rows
    (tmp_path / "a.txt").write_text("".join(r.text + "\n" for r in rows), encoding="utf-8")
    pages = [{"title": "Tokyo", "sentences_kept": 10}, {"title": "Osaka", "sentences_kept": 20}]
    (tmp_path / "a.txt.manifest.json").write_text(json.dumps({"pages": pages}), encoding="utf-8")
    got = read_titled(tmp_path / "a.txt")
    assert [r.title for r in got] == ["Tokyo"] * 10 + ["Osaka"] * 20 and [r.text for r in got] == [r.text for r in rows]


def test_no_titles_is_one_clear_error(tmp_path):
    (tmp_path / "plain.txt").write_text("Tokyo is big.\nOsaka is old.\n", encoding="utf-8")
    with pytest.raises(UserError, match="--condition title needs a title per sentence: .* has none"):
        read_titled(tmp_path / "plain.txt")
    (tmp_path / "b.jsonl").write_text('{"text": "Tokyo is big."}\n', encoding="utf-8")
    with pytest.raises(UserError, match="line 1 has no 'title' field"):
        read_titled(tmp_path / "b.jsonl")
    (tmp_path / "plain.txt.manifest.json").write_text(json.dumps({"pages": [{"title": "T", "sentences_kept": 5}]}))
    with pytest.raises(UserError, match="lists 5 sentences, .* holds 2"):
        read_titled(tmp_path / "plain.txt")


def test_a_tenth_of_the_sentences_train_untitled_always_the_same_ones():
    rows = titled_rows(2000)
    share = sum(untitled(r.text) for r in rows) / len(rows)
    assert 0.07 < share < 0.13
    r = next(r for r in rows if not untitled(r.text))
    assert r.line(FORMAT) == f"{r.title}: {r.text}" and r.line("[{title}] {text}") == f"[{r.title}] {r.text}"


def test_corpus_wikipedia_writes_titles_both_ways(tmp_path):
    from fake_wiki import FakeWiki, serve

    from gpt2tune.corpus import build_wikipedia_corpus

    wiki = FakeWiki()
    server, url = serve(wiki)
    try:
        opts = dict(topic="Japan", api_url=url, category=["Cities in Japan"], max_pages=20, rate=1000.0,
                    cache_dir=str(tmp_path / "cache"), progress=False)
        build_wikipedia_corpus(out=str(tmp_path / "c.jsonl"), **opts)
        build_wikipedia_corpus(out=str(tmp_path / "c.txt"), **opts)
    finally:
        server.shutdown()
        server.server_close()
    from_jsonl, from_manifest = read_titled(tmp_path / "c.jsonl"), read_titled(tmp_path / "c.txt")
    assert from_jsonl == from_manifest and len(from_jsonl) == 16
    assert [r.title for r in from_jsonl[:8]] == ["Japan"] * 8 and from_jsonl[8].title == "Osaka"


@pytest.fixture(scope="module")
def titled_run(tiny_model, tmp_path_factory):
    d = tmp_path_factory.mktemp("cond")
    write_jsonl(d / "cities.jsonl", titled_rows())
    out = d / "run"
    assert main(["train", "--model", str(tiny_model), "--data", str(d / "cities.jsonl"), "--out", str(out),
                 "--condition", "title", "--max-steps", "1", "--block-size", "64", "--batch-size", "4",
                 "--samples", "0"]) == 0
    return out


def test_a_conditioned_run_trains_on_title_lines_and_records_its_format(titled_run):
    cfg = yaml.safe_load((titled_run / "config.yaml").read_text())
    assert cfg["condition"] == "title" and cfg["condition_format"] == FORMAT
    rows = {r.text: r for r in titled_rows()}
    val = (titled_run / "val.txt").read_text(encoding="utf-8").splitlines()
    titled = [x for x in val if x.split(": ", 1)[-1] in rows and x != x.split(": ", 1)[-1]]
    assert len(titled) >= 0.8 * len(val)
    for line in titled:
        title, text = line.split(": ", 1)
        assert rows[text].title == title


def test_generate_about_conditions_and_hides_the_title(titled_run, capsys):
    capsys.readouterr()
    assert main(["generate", str(titled_run), "Kyoto is", "--about", "Kyoto", "-n", "2", "--max-new-tokens", "5",
                 "--json"]) == 0
    rows = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert len(rows) == 2 and all(r["text"].startswith("Kyoto is") for r in rows)
    assert main(["generate", str(titled_run), "Kyoto is", "-n", "2", "--max-new-tokens", "5", "--json"]) == 0
    plain = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [r["text"] for r in plain] != [r["text"] for r in rows]  # the title changed what was drawn


def test_condition_without_titles_refused_before_anything_is_written(tiny_model, tmp_path, capsys):
    data = tmp_path / "plain.txt"
    data.write_text("\n".join(make_corpus(50)) + "\n", encoding="utf-8")
    capsys.readouterr()
    assert main(["train", "--model", str(tiny_model), "--data", str(data), "--out", str(tmp_path / "r"),
                 "--condition", "title"]) == 1
    err = [x for x in capsys.readouterr().err.splitlines() if x.startswith("gpt2tune: error")]
    assert len(err) == 1 and "--condition title needs a title per sentence" in err[0]
    assert not (tmp_path / "r").exists()
