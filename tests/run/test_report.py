"""report.html: self-contained, escaped, with the loss plot, keyword tables and base-vs-tuned table."""

from __future__ import annotations

import base64
import json
import re

from gpt2tune import train
from gpt2tune.cli import main
from gpt2tune.config import TrainConfig, write_config
from gpt2tune.run.report import early_stop_row, notebook_html, write_report

PNG = b"\x89PNG\r\n\x1a\n"


def _row(step, epoch, val, best, event, train_loss=3.0):
    return {"epoch": epoch, "step": step, "train_loss": train_loss, "val_loss": val, "val_ppl": round(2.718 ** val, 3),
            "tokens_per_s": 1000.0, "elapsed_s": step * 1.0, "lr": 1e-4, "useful_fraction": 0.97, "best": best,
            "event": event}


EARLY = [_row(0, 0, 5.0, True, "start", 0.0), _row(10, 0.5, 4.0, True, "eval"), _row(20, 1, 3.5, True, "epoch"),
         _row(30, 1.5, 3.6, False, "eval"), _row(40, 2, 3.7, False, "epoch")]


def _write_run(d, metrics, samples, **config):
    d.mkdir(parents=True, exist_ok=True)
    write_config(TrainConfig(data="corpus.txt", out=str(d), model="gpt2", **config), d / "config.yaml")
    (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in metrics), encoding="utf-8")
    (d / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in samples), encoding="utf-8")
    return d


def _samples():
    rows = []
    for step, epoch in ((0, 0), (10, 0.5), (20, 1), (30, 1.5), (40, 2)):
        for kw in ("Osaka", "Tokyo <is> & the"):
            rows.append({"epoch": epoch, "step": step, "keyword": kw, "text": f"{kw} text at step {step} <script>x",
                         "ended": step > 10})
    return rows


def test_early_stop_row():
    cfg = {"patience": 2, "epochs": 4}
    assert early_stop_row(EARLY, cfg) is EARLY[-1]
    assert early_stop_row(EARLY, {"patience": 3, "epochs": 4}) is None  # only 2 bad evaluations
    assert early_stop_row(EARLY, {"patience": None, "epochs": 4}) is None
    assert early_stop_row(EARLY, {"patience": 2, "epochs": 2}) is None  # it simply finished its 2 epochs
    assert early_stop_row(EARLY[:-1] + [{**EARLY[-1], "event": "final"}], cfg) is None  # step/time limit


def test_report_is_self_contained_escaped_and_has_keyword_tables(tmp_path):
    run = _write_run(tmp_path / "run", EARLY, _samples(), patience=2, epochs=4)
    (run / "metrics.jsonl").open("a").write('{"epoch": 2.5, "ste')  # a torn line from a killed run is skipped
    page_path = write_report(run)
    assert page_path == run / "report.html"
    page = page_path.read_text(encoding="utf-8")
    png = (run / "loss.png").read_bytes()
    assert png.startswith(PNG)
    inline = re.search(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert inline and base64.b64decode(inline.group(1)) == png
    assert not re.search(r'(src|href)\s*=\s*["\']?(https?:)?//', page, re.I)  # nothing fetched from anywhere
    assert "<script" not in page and "&lt;script&gt;x" in page  # sample text is escaped
    assert "&ldquo;Osaka&rdquo;" in page and "&ldquo;Tokyo &lt;is&gt; &amp; the&rdquo;" in page
    osaka = page[page.index("&ldquo;Osaka&rdquo;"):page.index("&ldquo;Tokyo")]
    assert osaka.count("<tr>") == 1 + 5  # header + one row per evaluation
    assert "base (before training)" in osaka and "Osaka text at step 40" in osaka
    assert "stopped early" in page
    assert f"<b>{EARLY[0]['val_ppl']:.2f}</b> before training" in page  # the base model's val ppl (start row)
    assert f"<b>{EARLY[2]['val_ppl']:.2f}</b> at the best evaluation (step 20" in page
    assert "<td>weight_decay</td><td>0.01</td>" in page  # the config table


def test_report_shows_compare_json(tmp_path):
    run = _write_run(tmp_path / "run", EARLY, _samples())
    table = [{"metric": "perplexity", "label": "held-out perplexity", "better": "lower", "base": 40.0,
              "tuned": 20.0, "winner": "tuned"},
             {"metric": "mean_length", "label": "mean length (words)", "better": "closer", "base": 40.0,
              "tuned": 30.0, "winner": "tuned"}]
    cmp = {"settings": {"base": "base-model", "tuned": str(run), "heldout": "val split", "heldout_sentences": 9,
                        "heldout_mean_length": 21.5, "sampling": {"seed": 42, "top_k": 30, "top_p": 0.9,
                                                                  "max_new_tokens": 50, "n": 1}},
           "table": table,
           "samples": [{"keyword": "Osaka", "index": 0, "base": {"text": "Osaka base & co", "ended": False},
                        "tuned": {"text": "Osaka tuned", "ended": True}}]}
    (run / "compare.json").write_text(json.dumps(cmp), encoding="utf-8")
    page = write_report(run).read_text(encoding="utf-8")
    assert "held-out perplexity" in page and "closer to 21.5" in page
    assert "Osaka base &amp; co" in page and "base-model" in page
    assert '<span class="win-tuned">tuned</span>' in page

    # in a notebook: summary, the metrics table and the plot inline; the samples only in the folded full report
    frag = notebook_html(run)
    inline, folded = frag.split("<iframe", 1)
    assert f"<b>{EARLY[0]['val_ppl']:.2f}</b> before training" in inline
    assert '<span class="win-tuned">tuned</span>' in inline and "data:image/png;base64," in inline
    assert "Osaka base" not in inline and "Samples side by side" not in inline
    assert 'srcdoc="' in folded and "<" not in folded.split('srcdoc="', 1)[1].split('"', 1)[0]  # escaped page
    assert "Osaka base &amp;amp; co" in folded  # the report's own escaping, escaped once more for the attribute
    assert "holds no run" in notebook_html(tmp_path)


def test_cli_report_rebuilds_and_rejects_non_runs(tmp_path, capsys):
    run = _write_run(tmp_path / "run", EARLY[:2], [])
    assert main(["report", str(run)]) == 0
    assert (run / "report.html").is_file()
    assert main(["report", str(tmp_path)]) == 1
    assert "not a gpt2tune run directory" in capsys.readouterr().err


def test_train_writes_the_report(tiny_model, corpus_file, tmp_path):
    out = tmp_path / "run"
    result = train(model=str(tiny_model), data=str(corpus_file), out=str(out), max_steps=2,
                   batch_size=4, block_size=64, keywords=["Kyoto"], samples=1, precision="fp32")
    assert result.steps == 2
    page = (out / "report.html").read_text(encoding="utf-8")
    assert (out / "loss.png").read_bytes().startswith(PNG)
    assert "&ldquo;Kyoto&rdquo;" in page and "data:image/png;base64," in page
    assert "stopped at its step or time limit" in page
    shown = result._repr_html_()  # what a notebook shows for the result of train(...)
    assert "gpt2tune run" in shown and "stopped at its step or time limit" in shown and "<iframe" in shown


def test_the_loss_plot_leaves_the_users_matplotlib_backend_alone():
    """A notebook user's backend (here: pdf) is the same after a report's plot, which is still a PNG."""
    import matplotlib

    from gpt2tune.run.report import loss_plot

    before = matplotlib.get_backend()
    matplotlib.use("pdf")
    try:
        rows = [{"event": "start", "step": 0, "val_loss": 10.0},
                {"event": "epoch", "epoch": 1, "step": 5, "train_loss": 8.0, "val_loss": 7.5, "best": True}]
        png = loss_plot(rows, {"epochs": 1})
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
        assert matplotlib.get_backend() == "pdf"
    finally:
        matplotlib.use(before)
