"""Model cards: every best/ and last/ gets a README.md in the Hugging Face format that huggingface_hub loads, with
the data (and its license from the corpus manifest), the recipe, the results and how to load the model."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml
from conftest import make_corpus
from huggingface_hub import ModelCard

import gpt2tune
from gpt2tune.corpus.output import wikipedia_attribution
from gpt2tune.run import card


@pytest.fixture(scope="module")
def run(tiny_model, tmp_path_factory) -> Path:
    """A 4-step run on a corpus that `gpt2tune corpus wikipedia` could have written (a manifest beside it)."""
    folder = tmp_path_factory.mktemp("data")
    data = folder / "japan.txt"
    data.write_text("\n".join(make_corpus(150, seed=9)) + "\n", encoding="utf-8")
    manifest = {"tool": "gpt2tune", "source": "wikipedia", "api_url": "https://en.wikipedia.org/w/api.php",
                "topic": "Japan", "pages": [{"title": "Japan"}, {"title": "Kyoto"}],
                **wikipedia_attribution("https://en.wikipedia.org/w/api.php")}
    (folder / "japan.txt.manifest.json").write_text(json.dumps(manifest), encoding="utf-8")
    out = tmp_path_factory.mktemp("runs") / "japan"
    gpt2tune.train(model=str(tiny_model), data=str(data), out=str(out), max_steps=4, eval_every=2, batch_size=4,
                   block_size=64, samples=0, patience=None, threads=1, lr=3e-3, keywords=["Osaka", "Kyoto is the"])
    return out


def test_best_and_last_get_a_card_huggingface_hub_loads(run):
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    best = [r for r in rows if r["best"]][-1]
    for which, row in (("best", best), ("last", rows[-1])):
        loaded = ModelCard.load(run / which / "README.md")
        meta = loaded.data.to_dict()
        assert meta == {"license": "cc-by-sa-4.0", "tags": ["gpt2tune", "text-generation", "fine-tuned", "gpt2"],
                        "library_name": "transformers", "pipeline_tag": "text-generation", "language": "en"}
        assert "base_model" not in meta  # a local --model is no Hub id
        text = loaded.text
        assert f"**{rows[0]['val_ppl']:.2f} before → {row['val_ppl']:.2f} after** (step {row['step']}" in text
        assert "- source: Wikipedia (https://en.wikipedia.org/w/api.php): the page 'Japan' and the pages around it, " \
               "2 pages" in text
        assert "- license: CC BY-SA 4.0 (https://creativecommons.org/licenses/by-sa/4.0/)" in text
        assert "Attribution: Sentences taken from the Wikipedia articles" in text
        data = json.loads((run / "data.json").read_text())
        assert f"- {data['sentences']:,} sentences read" in text and f"{data['tokens']['total']:,} tokens" in text
        assert "| lr | `0.003` |" in text and "| block-size | `64` |" in text
        assert f'pipeline("text-generation", model="{run / which}")' in text
        assert f"gpt2tune generate {run / which} 'Kyoto is the' -n 3" in text


def test_a_hub_base_model_compare_and_an_export_show_in_the_card(run, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(run, copy)
    cfg = yaml.safe_load((copy / "config.yaml").read_text())
    (copy / "config.yaml").write_text(yaml.safe_dump({**cfg, "model": "gpt2"}))
    table = [{"label": "held-out perplexity", "base": 221.36, "tuned": 37.7, "better": "lower", "winner": "tuned"},
             {"label": "mean length (words)", "base": 36.5, "tuned": 10.35, "better": "closer", "winner": "tuned"}]
    (copy / "compare.json").write_text(json.dumps({"settings": {"heldout_mean_length": 12.08}, "table": table,
                                                   "samples": []}))
    (copy / "exports.json").write_text(json.dumps({"gguf": [{"path": "/x/japan.gguf", "type": "q8_0"}]}))
    assert card.write_cards(copy) == [copy / "best" / "README.md", copy / "last" / "README.md"]
    loaded = ModelCard.load(copy / "best" / "README.md")
    assert loaded.data.base_model == "gpt2"
    assert "| held-out perplexity | 221.4 | 37.7 | lower | tuned |\n" \
           "| mean length (words) | 36.5 | 10.35 | closer to 12.1 | tuned |" in loaded.text
    assert "As GGUF (`japan.gguf`, q8_0; llama.cpp, Ollama, LM Studio):" in loaded.text


def test_a_readme_the_user_wrote_is_kept(run, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(run, copy)
    mine = "# my own notes\n"
    (copy / "best" / "README.md").write_text(mine)
    warnings = []
    assert card.write_cards(copy, warn=warnings.append) == [copy / "last" / "README.md"]
    assert (copy / "best" / "README.md").read_text() == mine
    assert warnings == [f"{copy / 'best' / 'README.md'} was not written by gpt2tune: left as it is"]


@pytest.mark.parametrize("manifest, license_id", [
    ({"license": "CC BY-SA 4.0"}, "cc-by-sa-4.0"),
    ({"license": "Some Custom License", "license_url": "https://example.org/l"}, "other"),
    (None, None),
])
def test_the_license_comes_from_the_manifest(tmp_path, manifest, license_id):
    data = tmp_path / "s.txt"
    data.write_text("A sentence.\n")
    if manifest is not None:
        (tmp_path / "s.txt.manifest.json").write_text(json.dumps({"source": "files", **manifest}))
    meta = card.front_matter({"model": "./local"}, card.data_source(str(data)), None)
    assert meta.get("license") == license_id
    if license_id == "other":
        assert meta["license_name"] == "Some Custom License" and meta["license_link"] == "https://example.org/l"


def test_the_demo_sample_is_cc_by_sa():
    assert card.data_source(str(card.DEMO_DATA))["license"] == "CC BY-SA 4.0"
