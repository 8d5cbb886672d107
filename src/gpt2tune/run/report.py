"""A run's report: one self-contained report.html (config, loss plot, samples by evaluation, base vs tuned)."""

from __future__ import annotations

import base64
import html
import io
import json
import math
import os
import re
from pathlib import Path
from typing import Any, Callable

from gpt2tune.config import read_config_file
from gpt2tune.errors import UserError
from gpt2tune.files import atomic_write
from gpt2tune.run.logs import metric_problem, read_comparison, read_rows, sample_problem


def best_row(metrics: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The evaluation whose model is in best/ (the last one marked best)."""
    marked = [r for r in metrics if r.get("best")]
    return marked[-1] if marked else None


def early_stop_row(metrics: list[dict[str, Any]], config: dict[str, Any]) -> dict[str, Any] | None:
    """The evaluation where early stopping fired, or None when the run ended another way (or is still going).

    Training stops right after the evaluation that makes `patience` evaluations in a row without a better val
    loss, so that is the last row; a run that reached its step, time or epoch limit ends with a "final" row or
    with the last epoch's row instead.
    """
    patience = config.get("patience")
    if not metrics or not isinstance(patience, int) or isinstance(patience, bool) or patience < 1:
        return None  # off, or a hand-edited value that means nothing
    last = metrics[-1]
    if last.get("event") in ("final", "start"):
        return None
    epochs = config.get("epochs")
    epochs = epochs if isinstance(epochs, (int, float)) else math.inf
    if last.get("event") == "epoch" and last.get("epoch", 0) >= epochs:
        return None
    bad = 0
    for r in reversed(metrics):
        if r.get("best"):
            break
        bad += 1
    return last if bad >= patience else None


def loss_plot(metrics: list[dict[str, Any]], config: dict[str, Any]) -> bytes | None:
    """The loss curves as PNG bytes (None without matplotlib or without evaluations)."""
    try:
        import matplotlib
        from matplotlib.figure import Figure
    except ImportError:
        return None
    if not metrics:
        return None
    # our figure, drawn the same everywhere: a matplotlibrc in the working directory or the user's (text.usetex
    # needs LaTeX, a style may break the layout) must neither change it nor make it fail. A bare Figure draws
    # with Agg: no pyplot, so a notebook's or GUI's backend is left as the user set it.
    with matplotlib.rc_context():
        matplotlib.rcdefaults()
        return _draw_losses(Figure(figsize=(8, 4.2), dpi=110), metrics, config)


def _draw_losses(fig, metrics: list[dict[str, Any]], config: dict[str, Any]) -> bytes:
    ax = fig.subplots()
    trained = [r for r in metrics if r.get("event") != "start"]  # the start row has no training loss yet
    if trained:
        ax.plot([r["step"] for r in trained], [r["train_loss"] for r in trained], "o-", color="#1f77b4",
                ms=3, label="train loss (since the previous evaluation)")
    ax.plot([r["step"] for r in metrics], [r["val_loss"] for r in metrics], "s-", color="#d62728", ms=3,
            label="val loss")
    if metrics[0].get("event") == "start":
        ax.annotate("base model", (metrics[0]["step"], metrics[0]["val_loss"]), textcoords="offset points",
                    xytext=(6, 4), fontsize=8, color="#d62728")
    for r in metrics:
        if r.get("event") == "epoch":
            ax.axvline(r["step"], color="#bbbbbb", lw=0.8, ls=":", zorder=0)
    best = best_row(metrics)
    if best:
        ax.plot([best["step"]], [best["val_loss"]], "*", color="#2ca02c", ms=16, zorder=5,
                label=f"best val loss {best['val_loss']:.4f} (step {best['step']}, saved in best/)")
    stop = early_stop_row(metrics, config)
    if stop:
        ax.axvline(stop["step"], color="#ff7f0e", lw=1.5, ls="--",
                   label=f"early stop fired (step {stop['step']}, patience {config.get('patience')})")
    ax.set_xlabel("optimizer step (dotted lines: epoch ends)")
    ax.set_ylabel("loss per token (nats)")
    ax.set_title("Training and validation loss")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def _shown(value: Any) -> Any:
    """An absolute path as its name only: the report is served and shared, the user's directories are not."""
    if isinstance(value, str) and os.path.isabs(value):
        return Path(value).name
    return value


ABSOLUTE = re.compile(r"(?<![\w.~])/[^\s,;()]+")  # an absolute path in free text (up to a space)


def _run_name(path: str, run: Path) -> str:
    """A path as the report shows it: relative to the run when inside it, else its name."""
    p = Path(path)
    try:
        inside = p.resolve().relative_to(run.resolve())
    except (ValueError, OSError, RuntimeError):
        return p.name or path
    return str(inside) if inside != Path(".") else run.name


def _hide_paths(value: Any, run: Path, paths: list[str]) -> Any:
    """`value` with every one of `paths` (absolute) inside its strings replaced by its run-relative name."""
    if isinstance(value, str):
        for path in paths:
            value = value.replace(path, _run_name(path, run))
        return value
    if isinstance(value, dict):
        return {k: _hide_paths(v, run, paths) for k, v in value.items()}
    if isinstance(value, list):
        return [_hide_paths(v, run, paths) for v in value]
    return value


def _absolute_paths(*sources: Any) -> list[str]:
    """The absolute paths among the strings of `sources` (dicts: their values; one level of nesting), longest
    first, so that a directory never replaces part of a longer path inside it."""
    found: set[str] = set()
    for source in sources:
        values = list(source.values()) if isinstance(source, dict) else []
        values += [v for x in values if isinstance(x, dict) for v in x.values()]
        found.update(v for v in values if isinstance(v, str) and os.path.isabs(v) and len(Path(v).parts) > 1)
    return sorted(found, key=len, reverse=True)


def _e(x: Any) -> str:
    return html.escape(str(x), quote=True)


def _fmt(x: Any) -> str:
    if isinstance(x, float):
        return f"{x:.4g}"
    if isinstance(x, list):
        return ", ".join(map(str, x))
    return "" if x is None else str(x)


def _table(header: list[str], rows: list[list[str]], cls: str = "") -> str:
    """An HTML table from already-escaped cells."""
    head = "".join(f"<th>{h}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _sample_cell(text: str, ended: bool) -> str:
    if ended:
        return _e(text)
    return f'{_e(text)}<span class="cut" title="no end token before the length cap"> …</span>'


def _summary(metrics: list[dict[str, Any]], config: dict[str, Any]) -> str:
    if not metrics:
        return "<p>No evaluations recorded yet.</p>"
    last, best, start = metrics[-1], best_row(metrics), metrics[0]
    stop = early_stop_row(metrics, config)
    how = ("stopped early: " + f"val loss did not improve for {config.get('patience')} evaluation(s)" if stop
           else {"final": "stopped at its step or time limit", "epoch": "finished its epochs"}.get(
               last.get("event"), "still running, or killed before it finished"))
    items = [f"{last.get('step', 0):,} optimizer steps, epoch {last.get('epoch')}; {how}."]
    if start.get("event") == "start" and best:
        items.append(f"Held-out perplexity <b>{start['val_ppl']:.2f}</b> before training (step 0, the base model) "
                     f"&rarr; <b>{best['val_ppl']:.2f}</b> at the best evaluation (step {best['step']}, "
                     f"val loss {start['val_loss']:.4f} &rarr; {best['val_loss']:.4f}).")
    if last.get("tokens_per_s"):
        items.append(f"Training speed at the last evaluation: {last['tokens_per_s']:,.0f} tokens/s; "
                     f"{last.get('elapsed_s', 0):,.0f} s of training in all.")
    return "<ul>" + "".join(f"<li>{x}</li>" for x in items) + "</ul>"


def _metrics_table(metrics: list[dict[str, Any]]) -> str:
    rows = []
    for r in metrics:
        rows.append([_e(r.get("event", "")), _e(r.get("epoch")), _e(r.get("step")),
                     "" if r.get("event") == "start" else _e(f"{r.get('train_loss', 0):.4f}"),
                     _e(f"{r.get('val_loss', 0):.4f}"), _e(f"{r.get('val_ppl', 0):.2f}"),
                     _e(f"{r.get('tokens_per_s', 0):,.0f}"), _e(f"{r.get('lr', 0):.2e}"),
                     "&#9733;" if r.get("best") else ""])
    return _table(["event", "epoch", "step", "train loss", "val loss", "val ppl", "tokens/s", "lr", "best"],
                  rows, "num")


def _keyword_tables(samples: list[dict[str, Any]], metrics: list[dict[str, Any]]) -> str:
    """One table per keyword: a row per evaluation, a column per sample."""
    if not samples:
        return "<p>No samples recorded (the run was started with --samples 0).</p>"
    val = {r.get("step"): r for r in metrics}
    keywords: dict[str, dict[tuple, list[dict[str, Any]]]] = {}
    for s in samples:
        keywords.setdefault(s["keyword"], {}).setdefault((s.get("step"), s.get("epoch")), []).append(s)
    out = []
    width = max(len(v) for evals in keywords.values() for v in evals.values())
    for kw, evals in keywords.items():
        rows = []
        for (step, epoch), group in sorted(evals.items(), key=lambda x: (x[0][0] or 0)):
            r = val.get(step, {})
            label = "base (before training)" if step == 0 else f"epoch {epoch}"
            loss = f"{r['val_loss']:.3f}" if "val_loss" in r else ""
            cells = [_sample_cell(g.get("text", ""), bool(g.get("ended"))) for g in group]
            rows.append([_e(label), _e(step), _e(loss)] + cells + [""] * (width - len(cells)))
        out.append(f"<h3>&ldquo;{_e(kw)}&rdquo;</h3>")
        out.append(_table(["evaluation", "step", "val loss"] + [f"sample {i + 1}" for i in range(width)], rows,
                          "samples"))
    return "\n".join(out)


def _comparison(cmp: dict[str, Any], samples: bool = True) -> str:
    s = cmp.get("settings", {})
    ref = s.get("heldout_mean_length")
    rows = []
    for r in cmp.get("table", []):
        better = f"closer to {ref:.1f} (held-out mean)" if r["better"] == "closer" and ref is not None else r["better"]
        win = f'<span class="win-{_e(r["winner"])}">{_e(r["winner"])}</span>'
        rows.append([_e(r["label"]), _e(f"{r['base']:.4g}"), _e(f"{r['tuned']:.4g}"), _e(better), win])
    sp = s.get("sampling", {})
    head = (f"<p>Base <code>{_e(s.get('base'))}</code> vs tuned <code>{_e(s.get('tuned'))}</code>. Held-out: "
            f"{_e(s.get('heldout'))} ({_e(s.get('heldout_sentences'))} sentences). Same keywords, seed "
            f"{_e(sp.get('seed'))} and sampling (top-k {_e(sp.get('top_k'))}, top-p {_e(sp.get('top_p'))}, "
            f"{_e(sp.get('max_new_tokens'))} new tokens, {_e(sp.get('n'))} per keyword) for both.</p>")
    side = [[_e(x["keyword"]), _sample_cell(x["base"]["text"], x["base"]["ended"]),
             _sample_cell(x["tuned"]["text"], x["tuned"]["ended"])] for x in cmp.get("samples", [])]
    table = head + _table(["metric", "base", "tuned", "better", "winner"], rows, "num")
    return table + ("<h3>Samples side by side</h3>" + _table(["keyword", "base", "tuned"], side, "samples")
                    if samples else "")


def _base_from_metrics(metrics: list[dict[str, Any]]) -> str:
    start, best = (metrics[0] if metrics else None), best_row(metrics)
    if not start or start.get("event") != "start" or not best:
        return "<p>No base-model measurement in this run.</p>"
    rows = [["held-out loss", _e(f"{start['val_loss']:.4f}"), _e(f"{best['val_loss']:.4f}")],
            ["held-out perplexity", _e(f"{start['val_ppl']:.2f}"), _e(f"{best['val_ppl']:.2f}")]]
    return ("<p>From the run's own evaluations (step 0 = the base model; tuned = best/). Run <code>gpt2tune "
            "compare --base MODEL --tuned RUN_DIR --out RUN_DIR</code> for the sample metrics too.</p>"
            + _table(["metric", "base", "tuned"], rows, "num"))


CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem auto;max-width:1200px;padding:0 1rem;
color:#222;line-height:1.4}
h1{margin-bottom:.2rem}h2{border-bottom:1px solid #ddd;padding-bottom:.2rem;margin-top:2rem}
table{border-collapse:collapse;margin:.5rem 0 1rem;font-size:.9rem}
th,td{border:1px solid #ddd;padding:.3rem .5rem;vertical-align:top;text-align:left}
th{background:#f4f4f4}table.num td{font-variant-numeric:tabular-nums}
table.samples td{max-width:420px;white-space:pre-wrap}.cut{color:#c33}
.win-tuned{color:#2a7d2a;font-weight:600}.win-base{color:#b03030;font-weight:600}
img{max-width:100%;border:1px solid #eee}code{background:#f4f4f4;padding:0 .2rem}
details{margin:.5rem 0}.muted{color:#777}.note{color:#a60}
"""


def render(run: Path, config: dict[str, Any], metrics: list[dict[str, Any]], samples: list[dict[str, Any]],
           png: bytes | None, comparison: dict[str, Any] | None, notes: list[str] = (),
           data_summary: dict[str, Any] | None = None) -> str:
    """The report as one HTML string; every piece of text from the run is escaped."""
    parts = [f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>gpt2tune report: {_e(run.name)}"
             f"</title><style>{CSS}</style></head><body>",
             f"<h1>gpt2tune run <code>{_e(run.name)}</code></h1>",
             f"<p class='muted'>{_e(_shown(config.get('model')))} fine-tuned on {_e(_shown(config.get('data')))}</p>",
             *(f"<p class='note'>Note: {_e(n)}.</p>" for n in notes),
             "<h2>Summary</h2>", _summary(metrics, config),
             "<h2>Base vs tuned</h2>", _comparison(comparison) if comparison else _base_from_metrics(metrics),
             "<h2>Loss</h2>"]
    if png:
        parts.append(f'<img alt="training and validation loss" src="data:image/png;base64,'
                     f'{base64.b64encode(png).decode("ascii")}">')
    else:
        parts.append("<p>No loss plot (no evaluations yet, or matplotlib is missing: pip install "
                     "'gpt2tune[report]').</p>")
    parts += ["<details><summary>Every evaluation</summary>", _metrics_table(metrics), "</details>",
              "<h2>Samples by evaluation</h2>",
              "<p>The same keyword prompts and seed at every evaluation; <span class='cut'>…</span> marks a sample "
              "that hit the length cap without an end token.</p>",
              _keyword_tables(samples, metrics),
              *(["<h2>Data</h2>", _data_section(data_summary)] if data_summary else []),
              "<h2>Config</h2>",
              _table(["option", "value"], [[_e(k), _e(_fmt(_shown(v)))] for k, v in config.items()]),
              "</body></html>"]
    return "\n".join(parts)


def write_report(run_dir: str | Path, warn: Callable[[str], None] | None = None) -> Path:
    """Write run_dir/report.html (self-contained: the plot inline) and run_dir/loss.png; return the html path.

    Lines of metrics.jsonl / samples.jsonl of the wrong shape and a compare.json that is not a comparison are
    left out; the report says so, and so does `warn` (one line per file).
    """
    run = Path(run_dir)
    if not (run / "config.yaml").is_file():
        raise UserError(f"{run} is not a gpt2tune run directory (no config.yaml in it)")
    config = read_config_file(run / "config.yaml")
    metrics, metrics_note = read_rows(run / "metrics.jsonl", metric_problem)
    samples, samples_note = read_rows(run / "samples.jsonl", sample_problem)
    comparison, compare_note = read_comparison(run / "compare.json")
    notes = [n for n in (metrics_note, samples_note, compare_note) if n]
    for note in notes:
        if warn:
            warn(f"{run}: {note}")
    data_summary = _read_json(run / "data.json")
    png = loss_plot(metrics, config)
    if png:
        atomic_write(run / "loss.png", png)
    # the page is served and shared: files by run-relative names, never the user's directories
    paths = _absolute_paths(config, comparison, data_summary)
    config, comparison, data_summary = (_hide_paths(x, run, paths) for x in (config, comparison, data_summary))
    settings = (comparison or {}).get("settings")
    if isinstance(settings, dict):  # free text naming files compare was given (the held-out one too)
        settings.update({k: ABSOLUTE.sub(lambda m: _run_name(m[0], run), v) for k, v in settings.items()
                         if isinstance(v, str)})
    page = render(run, config, metrics, samples, png, comparison, notes, data_summary)
    return atomic_write(run / "report.html", page)


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def _data_section(summary: dict[str, Any]) -> str:
    from gpt2tune.data.inspect import render_html

    try:
        return render_html(summary)
    except (KeyError, TypeError, ValueError, AttributeError):  # a hand-edited data.json: the report still renders
        return "<p>The run's data.json could not be read.</p>"


def notebook_html(run_dir: str | Path) -> str:
    """A run as an HTML fragment for a notebook: summary, base vs tuned, loss plot, and the full report folded."""
    run = Path(run_dir)
    if not (run / "config.yaml").is_file():
        return f"<p>gpt2tune: <code>{_e(run)}</code> holds no run (no config.yaml).</p>"
    config = read_config_file(run / "config.yaml")
    metrics, _ = read_rows(run / "metrics.jsonl", metric_problem)  # what the report renders, notes aside
    comparison, _ = read_comparison(run / "compare.json")
    parts = [f"<div class='gpt2tune-run'><h3>gpt2tune run <code>{_e(run)}</code></h3>",
             f"<p>{_e(config.get('model'))} fine-tuned on {_e(config.get('data'))}</p>",
             _summary(metrics, config),
             _comparison(comparison, samples=False) if comparison else _base_from_metrics(metrics)]
    if (run / "loss.png").is_file():
        png = base64.b64encode((run / "loss.png").read_bytes()).decode("ascii")
        parts.append(f'<img alt="training and validation loss" style="max-width:640px" '
                     f'src="data:image/png;base64,{png}">')
    page = run / "report.html"
    if page.is_file():
        # the whole report in a frame of its own, so its page styles stay out of the notebook's
        parts.append(f"<details><summary>The full report: <code>{_e(page)}</code></summary>"
                     f"<iframe srcdoc=\"{_e(page.read_text(encoding='utf-8'))}\" "
                     "style='width:100%;height:720px;border:1px solid #ddd'></iframe></details>")
    return "\n".join(parts) + "</div>"
