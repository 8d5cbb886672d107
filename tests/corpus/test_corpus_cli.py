"""`gpt2tune corpus wikipedia|clean`: flags -> config -> API; user mistakes are one line and exit 1."""

from __future__ import annotations

import json

import pytest
from fake_wiki import FakeWiki, serve

from gpt2tune.cli import main


@pytest.fixture()
def wiki():
    w = FakeWiki()
    server, url = serve(w)
    w.url = url
    yield w
    server.shutdown()
    server.server_close()


def test_wikipedia_command(wiki, tmp_path, capsys):
    out = tmp_path / "japan.txt"
    args = ["corpus", "wikipedia", "Japan", "--out", str(out), "--api-url", wiki.url, "--rate", "1000",
            "--category", "Cities in Japan", "--category", "Category:Ports of Japan", "--max-pages", "4",
            "--min-words", "7", "--cache-dir", str(tmp_path / "cache"), "--user-agent", "tester/1.0 (me@example.org)"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "4 pages from" in printed and f"to {out}" in printed
    manifest = json.loads((tmp_path / "japan.txt.manifest.json").read_text(encoding="utf-8"))
    assert [p["title"] for p in manifest["pages"]] == ["Japan", "Osaka", "Sapporo", "Yayoi period"]
    assert manifest["categories"] == ["Cities in Japan", "Category:Ports of Japan"]
    assert {"title": "Category:Ports of Japan", "reason": "category empty or missing"} in manifest["skipped"]
    assert manifest["options"]["min_words"] == 7
    assert all(r["user_agent"] == "tester/1.0 (me@example.org)" for r in wiki.log)
    sentences = out.read_text(encoding="utf-8").splitlines()
    assert "The Yayoi period began around 300 BC." in sentences
    assert "Mt. Fuji last erupted in 1707." not in sentences  # 6 words < --min-words 7
    assert len(sentences) == manifest["totals"]["sentences_kept"]

    assert main(args) == 1
    assert capsys.readouterr().err == f"gpt2tune: error: {out} exists; pass --overwrite to replace it\n"


def test_wikipedia_command_reads_a_config_file(wiki, tmp_path):
    config = tmp_path / "corpus.yaml"
    config.write_text(f"api_url: {wiki.url}\nrate: 1000\ndepth: 0\ncache: false\nmax-words: 9\n")
    assert main(["corpus", "wikipedia", "Japan", "--config", str(config), "--out", str(tmp_path / "o.txt")]) == 0
    assert (tmp_path / "o.txt").read_text(encoding="utf-8").splitlines() == [
        "It is located in the Pacific Ocean.",
        "The Yayoi period began around 300 BC.",
        "Mt. Fuji last erupted in 1707.",
        "Traders sailed there from Honshu every summer.",
    ]


@pytest.mark.parametrize("flags, message", [
    (["--rate", "0"], "rate must be at least 0.01"),
    (["--depth", "-1"], "depth must be >= 0"),
    (["--lang", "Japanese!"], "lang must be a Wikipedia language code"),
    (["--api-url", "ftp://example.org/w/api.php"], "api-url must be an http(s) URL"),
    (["--min-words", "10", "--max-words", "5"], "max-words (5) must be at least min-words (10)"),
])
def test_wikipedia_bad_options(tmp_path, capsys, flags, message):
    assert main(["corpus", "wikipedia", "Japan", "--out", str(tmp_path / "o.txt"), *flags]) == 1
    err = capsys.readouterr().err
    assert err.startswith("gpt2tune: error: ") and message in err and err.count("\n") == 1


def test_clean_command(tmp_path, capsys):
    a = tmp_path / "a.md"
    a.write_text("# Nara\n\nNara was the first permanent capital of Japan. Deer roam its parks freely.\n\n"
                 "## See also\n\nKyoto was the next capital after Nara.\n", encoding="utf-8")
    b = tmp_path / "b.txt"
    b.write_text("Nara was the first permanent capital of Japan.\nTodai-ji holds a great bronze Buddha.\n",
                 encoding="utf-8")
    out = tmp_path / "nara.txt"
    assert main(["corpus", "clean", str(a), str(b), "--out", str(out), "--min-words", "4"]) == 0
    assert out.read_text(encoding="utf-8").splitlines() == [
        "Nara was the first permanent capital of Japan.", "Deer roam its parks freely.",
        "Todai-ji holds a great bronze Buddha."]
    assert "wrote 3 sentences" in capsys.readouterr().out
    assert main(["corpus", "clean", str(tmp_path / "nope.txt"), "--out", str(tmp_path / "x.txt")]) == 1
    assert capsys.readouterr().err == f"gpt2tune: error: file not found: {tmp_path / 'nope.txt'}\n"
    assert main(["corpus", "clean", str(a), "--out", str(out)]) == 1
    assert "exists; pass --overwrite" in capsys.readouterr().err
    assert main(["corpus", "clean", str(a)]) == 1
    assert "no output file: give --out FILE" in capsys.readouterr().err
