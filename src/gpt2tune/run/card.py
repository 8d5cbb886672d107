"""The model card: README.md in a run's best/ and last/, in the Hugging Face format (YAML front matter, then what
the model was trained on, how, how well, and how to load it), built from the run's own files."""

from __future__ import annotations

import hashlib
import json
import re
import shlex
from pathlib import Path
from typing import Any

import yaml

from gpt2tune.config import read_config_file
from gpt2tune.files import atomic_write
from gpt2tune.run import logs as run_files

CARD = "README.md"
HUB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*(/[A-Za-z0-9][A-Za-z0-9_.-]*)?")
MARK = "gpt2tune"  # a tag every card we write carries: a README.md without it is the user's and stays untouched
HUB_LICENSES = {"cc by-sa 4.0": "cc-by-sa-4.0", "cc-by-sa-4.0": "cc-by-sa-4.0", "cc by 4.0": "cc-by-4.0",
                "mit": "mit", "apache-2.0": "apache-2.0", "cc0 1.0": "cc0-1.0"}
DEMO_DATA = Path(__file__).parent.parent / "demo_data" / "japan_wiki_sample.txt"
DEMO_SOURCE = {"source": "English Wikipedia (the articles about Japan), a sample of the 'Fine-tune GPT-2' "
                         "article's corpus", "license": "CC BY-SA 4.0",
               "license_url": "https://creativecommons.org/licenses/by-sa/4.0/",
               "attribution": "Sentences from English Wikipedia articles about Japan, written by Wikipedia's "
                              "contributors (each article's authors are in its history) and licensed under CC BY-SA "
                              "4.0; see gpt2tune's demo_data/SOURCE.md for the source and the changes made."}


def read_json(path: Path) -> Any:
    """A JSON file's content, or None when it is missing or unreadable."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def file_sha256(path: Path) -> str | None:
    """The sha256 of a file (None when it is missing): ties an exported GGUF to the weights it came from."""
    if not path.is_file():
        return None
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def data_source(data: str) -> dict[str, Any]:
    """Where the training sentences came from and under which license: the corpus manifest beside the file
    (`gpt2tune corpus` writes it), gpt2tune's own demo sample, or nothing known."""
    path = Path(data)
    if path.resolve() == DEMO_DATA.resolve():
        return dict(DEMO_SOURCE)
    manifest = read_json(path.with_name(path.name + ".manifest.json"))
    if not isinstance(manifest, dict):
        return {}
    source = manifest.get("source")
    if source == "wikipedia":
        pages = manifest.get("pages") or []
        source = (f"Wikipedia ({manifest.get('api_url', '')}): the page {manifest.get('topic')!r} and the pages "
                  f"around it, {len(pages) if isinstance(pages, list) else pages} pages")
    elif source == "files":
        source = f"{manifest.get('totals', {}).get('files', 'some')} files cleaned by gpt2tune corpus clean"
    return {"source": source, **{k: manifest[k] for k in ("license", "license_url", "attribution") if k in manifest}}


def hub_license(name: str | None) -> str | None:
    """The Hub's identifier for a license name (cc-by-sa-4.0 for 'CC BY-SA 4.0'); 'other' for one it lacks."""
    if not name:
        return None
    return HUB_LICENSES.get(name.strip().lower(), "other")


def is_hub_id(model: str) -> bool:
    """Whether a --model value names a Hub model ("name" or "org/name", nothing here by that path); light on
    purpose (no torch), so that push and the cards stay quick."""
    return bool(HUB_ID.fullmatch(model)) and not model.lower().endswith(".gguf") and \
        not Path(model).expanduser().exists()


def checkpoint_row(rows: list[dict[str, Any]], which: str) -> dict[str, Any] | None:
    """The metrics row of the evaluation a checkpoint holds: best/ the last improvement, last/ the last row."""
    if which == "best":
        best = [r for r in rows if r.get("best")]
        return best[-1] if best else None
    return rows[-1] if rows else None


def front_matter(cfg: dict[str, Any], source: dict[str, Any], model_type: str | None) -> dict[str, Any]:
    """The card's YAML metadata."""
    meta: dict[str, Any] = {}
    if is_hub_id(str(cfg.get("model", ""))):
        meta["base_model"] = cfg["model"]
    license_id = hub_license(source.get("license"))
    if license_id:
        meta["license"] = license_id
        if license_id == "other":
            meta["license_name"] = str(source["license"])
            if source.get("license_url"):
                meta["license_link"] = source["license_url"]
    tags = [MARK, "text-generation", "fine-tuned"] + ([model_type] if model_type else [])
    tags += ["lora"] if cfg.get("lora") else []
    meta.update({"tags": tags, "library_name": "transformers", "pipeline_tag": "text-generation", "language": "en"})
    return meta


def results_section(rows: list[dict[str, Any]], row: dict[str, Any] | None, data: dict[str, Any] | None,
                    comparison: dict[str, Any] | None) -> list[str]:
    start = next((r for r in rows if r.get("event") == "start"), rows[0] if rows else None)
    held_out = (data or {}).get("split", {}).get("val")
    lines = ["## Results", ""]
    if start and row:
        lines.append(f"Held-out perplexity: **{start['val_ppl']:.2f} before → {row['val_ppl']:.2f} after** "
                     f"(step {row['step']}, epoch {row['epoch']}"
                     + (f"; {held_out:,} sentences the model never trained on" if held_out else "") + ").")
    else:
        lines.append("No evaluation was recorded.")
    if comparison and comparison.get("table"):
        lines += ["", "Base vs tuned (`gpt2tune compare`, same keywords and seeds):", "",
                  "| metric | base | tuned | better | winner |", "|---|---:|---:|---|---|"]
        ref = comparison.get("settings", {}).get("heldout_mean_length")
        for r in comparison["table"]:  # as compare prints it
            better = f"closer to {ref:.1f}" if r["better"] == "closer" and ref is not None else r["better"]
            lines.append(f"| {r['label']} | {r['base']:.4g} | {r['tuned']:.4g} | {better} | {r['winner']} |")
    return lines + [""]


def data_section(cfg: dict[str, Any], data: dict[str, Any] | None, source: dict[str, Any]) -> list[str]:
    lines = ["## Training data", ""]
    if data:
        split, tokens = data.get("split", {}), data.get("tokens", {})
        lines.append(f"- {data.get('sentences', 0):,} sentences read, {data.get('unique', 0):,} unique: "
                     f"{split.get('train', 0):,} to train on, {split.get('val', 0):,} held out")
        if tokens:
            lines.append(f"- {tokens.get('total', 0):,} tokens in all ({tokens.get('mean', 0)} per sentence on "
                         f"average), packed into {tokens.get('train_blocks', 0):,} training blocks of "
                         f"{tokens.get('block_size', cfg.get('block_size'))} tokens")
    lines.append(f"- file: `{Path(str(cfg.get('data', ''))).name}`")
    lines.append(f"- source: {source['source']}" if source.get("source") else
                 "- source: not recorded (the sentence file has no corpus manifest beside it)")
    if source.get("license"):
        lines.append(f"- license: {source['license']}" + (f" ({source['license_url']})"
                                                           if source.get("license_url") else ""))
    if source.get("attribution"):
        lines += ["", f"Attribution: {source['attribution']}"]
    return lines + [""]


def recipe_section(cfg: dict[str, Any]) -> list[str]:
    keys = ("model", "epochs", "max_steps", "max_minutes", "batch_size", "grad_accum", "block_size", "lr",
            "schedule", "warmup", "weight_decay", "clip", "precision", "dropout", "lora", "lora_r", "freeze_layers",
            "special_tokens", "val_fraction", "seed")
    lines = ["## Training recipe", "", "Fine-tuned with gpt2tune (`gpt2tune train`); "
             "the run's options (its whole config is `config.yaml` in the run directory):", "",
             "| option | value |", "|---|---|"]
    for k in keys:
        if k == "lora_r" and not cfg.get("lora"):
            continue
        if k in cfg and cfg[k] is not None and cfg[k] is not False:
            lines.append(f"| {k.replace('_', '-')} | `{cfg[k]}` |")
    return lines + [""]


def usage_section(name: str, gguf: list[dict[str, Any]], prompt: str) -> list[str]:
    lines = ["## How to use", "", "With transformers:", "", "```python", "from transformers import pipeline", "",
             f'generator = pipeline("text-generation", model="{name}")',
             f"print(generator({json.dumps(prompt, ensure_ascii=False)}, max_new_tokens=40, do_sample=True, "
             'top_k=30, top_p=0.9)[0]["generated_text"])', "```", "", "With gpt2tune:", "", "```bash",
             f"gpt2tune generate {name} {shlex.quote(prompt)} -n 3", "```", ""]
    for g in gguf:
        file = Path(g["path"]).name
        lines += [f"As GGUF (`{file}`, {g.get('type', '')}; llama.cpp, Ollama, LM Studio):", "", "```bash",
                  f"llama-cli -m {file} -p {shlex.quote(prompt)} -n 40", "```", ""]
    return lines


def card_text(run: str | Path, which: str = "best", name: str | None = None) -> str:
    """The model card of a run's best/ (or last/) checkpoint; `name` is how readers load it (a repo id or path)."""
    run = Path(run)
    cfg = read_config_file(run / "config.yaml")  # with the checks of every config file (size, nesting, aliases)
    rows = run_files.read_metrics(run)
    data = read_json(run / "data.json")
    comparison, _ = run_files.read_comparison(run / "compare.json")
    model_config = read_json(run / which / "config.json") or {}
    source = data_source(str(cfg.get("data", "")))
    exports = read_json(run / "exports.json") or {}
    gguf = [g for g in exports.get("gguf", []) if isinstance(g, dict) and "path" in g]
    name = name or str(run / which)
    meta = front_matter(cfg, source, model_config.get("model_type"))
    base = cfg.get("model", "?")
    row = checkpoint_row(rows, which)
    what = "the best checkpoint (lowest validation loss)" if which == "best" else "the last checkpoint"
    lines = [f"# {run.name}", "",
             f"`{base}` fine-tuned with gpt2tune on {(data or {}).get('split', {}).get('train', 0):,} sentences "
             f"from `{Path(str(cfg.get('data', ''))).name}`, to write sentences about its topic. This is {what} "
             f"of the run.", ""]
    lines += data_section(cfg, data, source) + recipe_section(cfg) + results_section(rows, row, data, comparison)
    keywords = cfg.get("keywords") or ["The"]
    lines += usage_section(name, gguf, next((k for k in keywords if " " in k), keywords[0]))
    return "---\n" + yaml.safe_dump(meta, sort_keys=False, allow_unicode=True) + "---\n\n" + "\n".join(lines)


def ours(path: Path) -> bool:
    """Whether a README.md is missing or one gpt2tune wrote (so it may be replaced)."""
    if not path.exists():
        return True
    try:
        head = path.read_text(encoding="utf-8", errors="replace").split("\n---", 1)[0]
        meta = yaml.safe_load(head.removeprefix("---")) if head.startswith("---") else None
    except yaml.YAMLError:
        return False
    return isinstance(meta, dict) and MARK in (meta.get("tags") or [])


def write_cards(run: str | Path, warn=None) -> list[Path]:
    """(Re)write README.md in the run's best/ and last/ from the run's files; a README.md a user wrote is kept."""
    run = Path(run)
    written = []
    for which in ("best", "last"):
        target = run / which / CARD
        if not (run / which / "config.json").is_file() or not (run / "config.yaml").is_file():
            continue
        if not ours(target):
            if warn:
                warn(f"{target} was not written by gpt2tune: left as it is")
            continue
        written.append(atomic_write(target, card_text(run, which)))
    return written

