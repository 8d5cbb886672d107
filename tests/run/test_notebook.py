"""examples/finetune.ipynb runs top to bottom in a real Jupyter kernel (on a tiny model and a small corpus)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

NOTEBOOK = Path(__file__).resolve().parents[2] / "examples" / "finetune.ipynb"


def _outputs(nb, tag: str) -> list[dict]:
    cells = [c for c in nb.cells if tag in c.get("metadata", {}).get("tags", [])]
    assert len(cells) == 1, f"one cell tagged {tag}"
    return cells[0].outputs


def _html(outputs: list[dict]) -> list[str]:
    return [o["data"]["text/html"] for o in outputs if "text/html" in o.get("data", {})]


def _text(outputs: list[dict], name: str | None = None) -> str:
    """What the cell printed (on `name`, stdout or stderr, when given)."""
    return "".join(o.get("text", "") for o in outputs
                   if o.get("output_type") == "stream" and name in (None, o.get("name")))


def test_the_notebook_runs_in_a_kernel(tmp_path, tiny_model, corpus_file, monkeypatch):
    monkeypatch.setenv("GPT2TUNE_NB_MODEL", str(tiny_model))
    monkeypatch.setenv("GPT2TUNE_NB_DATA", str(corpus_file))
    monkeypatch.setenv("GPT2TUNE_NB_MAX_MINUTES", "0.05")  # a 3-second training budget
    monkeypatch.setenv("GPT2TUNE_NB_OUT", str(tmp_path / "runs" / "nb"))
    monkeypatch.setenv("GPT2TUNE_NB_KEYWORDS", "Osaka,Kyoto is the")  # fewer samples: a shorter test
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    (tmp_path / "runs" / "nb").mkdir(parents=True)
    (tmp_path / "runs" / "nb" / "keep.txt").write_text("an earlier run", encoding="utf-8")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbclient.NotebookClient(nb, timeout=180, kernel_name="python3",
                            resources={"metadata": {"path": str(tmp_path)}}).execute()  # raises on any error

    assert "320 sentences in" in _text(_outputs(nb, "corpus"))  # the test corpus: 300 + 20 repeated lines
    assert f"model: {tiny_model}\n(the model you gave)" in _text(_outputs(nb, "model"))
    run = tmp_path / "runs" / "nb-2"  # the earlier one is left alone
    assert (tmp_path / "runs" / "nb" / "keep.txt").read_text(encoding="utf-8") == "an earlier run"

    train = _outputs(nb, "train")
    shown = _html(train)
    assert len(shown) == 1 and f"gpt2tune run <code>{run}</code>" in shown[0] and "<iframe srcdoc=" in shown[0]
    assert "Held-out perplexity <b>" in shown[0]
    if importlib.util.find_spec("ipywidgets"):  # tqdm.auto draws a notebook (widget) progress bar
        assert any("application/vnd.jupyter.widget-view+json" in o.get("data", {}) for o in train)

    assert len(_text(_outputs(nb, "generate"), "stdout").splitlines()) == 6  # 3 prompts x 2 samples
    compared = _outputs(nb, "compare")
    cmp = json.loads((run / "compare.json").read_text(encoding="utf-8"))
    assert any("text/markdown" in o.get("data", {}) and "| held-out perplexity |" in o["data"]["text/markdown"]
               for o in compared)
    after = _html(compared)
    assert len(after) == 1 and "win-" in after[0] and f"{cmp['base']['perplexity']:.4g}" in after[0]
    assert (run / "report.html").is_file()
