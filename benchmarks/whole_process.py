"""Whole-process wall time and steady-state tokens/s of one epoch, as a user sees it, for three tools in one run:
`gpt2tune train`, Hugging Face Trainer, and the "Fine-tune GPT-2" article's loop.

    python benchmarks/whole_process.py --rounds 3                      # the README's table (Markdown at the end)
    python benchmarks/whole_process.py --rounds 3 --cpus 1 --threads 1 # pinned, on a machine shared with others

All three start from the same random-initialised GPT-2 shape (default 6 layers x 384 wide, GPT-2's real tokenizer)
and the same sentences (the first --sentences lines of --data), and run as fresh processes, one after another,
alternating their order round by round, so Python and library start-up, loading, tokenizing, evaluating,
sampling and saving all count, and a busy machine hurts all alike. Reported per tool: the median over the rounds
of the whole process's wall time and of its steady-state training tokens/s (every training step but the first,
which builds kernels and touches fresh memory); the precision it trained in; and the machine (CPU, whether it
computes bf16 natively).

- gpt2tune: `python -m gpt2tune train --model M --data F --out O --epochs 1 --threads T` as installed (it re-runs
  itself under tcmalloc when present), its defaults otherwise: packed blocks, AdamW, bf16 where native, and at step 0
  and after the epoch the val loss and two samples for each of the ten keywords; it also deduplicates, writes
  config/metrics/samples, a report (report.html, loss.png) and best/ and last/. An empty tokenized-data cache of
  its own for each run (GPT2TUNE_CACHE_DIR), as on a user's first run. Steady tokens/s: the `tokens_per_s` of the
  epoch's metrics row (useful tokens of every step but the session's first).
- Hugging Face Trainer: hf_trainer.py's script, transformers' run_clm.py recipe (128-token blocks of concatenated
  sentences, batch 8, fused AdamW, bf16 where native, then save_pretrained); no evaluation, no samples. Tokens/s
  counts every block token (there is no padding).
- the article: ARTICLE below, written the way the article's loop works: GPT-2's tokenizer given <sos>/<eos>/<pad>
  (embeddings resized), every sentence `<sos> s <eos>`, a 90/10 split, every sentence padded to the longest of the
  corpus as the article did (--article-pad corpus, the default: the longest of all of --data, the article's 40k
  sentences, not only of the first --sentences; --article-pad sentences: the longest of those), labels = input ids with the padding included (the article counted padding in the loss), plain Adam at lr
  5e-4, batch 32, fp32, one epoch; then its per-epoch work: mean train loss, val loss over the val split, two
  sampled sentences for each of the ten keywords (one model.generate per keyword: do_sample, top_k 30, top_p 0.9,
  50 new tokens at most, eos = <eos>), the elapsed time printed, and the model saved. Tokens/s counts real
  (non-pad) tokens.

Each run prints a JSON line; at the end a per-round table and a Markdown table for the README (--json: one JSON
summary instead).
"""

from __future__ import annotations

import argparse
import compileall
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from hf_trainer import TRAINER  # noqa: E402

DEFAULT_DATA = "/work/shared/data/japan_wiki.txt"
KEYWORDS = ["Osaka", "Japan", "Kyoto", "Yokohama", "Kanto", "Nikko",
            "Japan has", "Tokyo is the", "Osaka is the", "Kyoto is the"]
TOOLS = {"gpt2tune": "gpt2tune train", "trainer": "Hugging Face Trainer (run_clm recipe)",
         "article": "the article's loop"}

ARTICLE = r'''
import json, random, sys, time
t0 = time.perf_counter()
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
model_dir, data, out, threads = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
keywords = json.loads(sys.argv[5])
torch.set_num_threads(threads)
torch.manual_seed(42)
random.seed(42)
tokenizer = AutoTokenizer.from_pretrained(model_dir)
model = AutoModelForCausalLM.from_pretrained(model_dir)
if tokenizer.bos_token != "<sos>":  # the article's special tokens
    tokenizer.add_special_tokens({"bos_token": "<sos>", "eos_token": "<eos>", "pad_token": "<pad>"})
    model.resize_token_embeddings(len(tokenizer))
bos, eos, pad = tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id
sentences = [" ".join(line.split()) for line in open(data, encoding="utf-8") if line.strip()]
limit = model.config.n_positions
examples = [([bos] + ids + [eos])[:limit] for ids in tokenizer(sentences, add_special_tokens=False)["input_ids"]]
random.shuffle(examples)
n_val = max(1, len(examples) // 10)
val, train = examples[:n_val], examples[n_val:]
# every sentence padded to the longest of the corpus (the article's 40k sentences), or of these when not given
width = max(int(sys.argv[6]) if len(sys.argv) > 6 else 0, max(len(x) for x in examples))

def tensors(rows):
    ids = torch.tensor([x + [pad] * (width - len(x)) for x in rows])
    mask = torch.tensor([[1] * len(x) + [0] * (width - len(x)) for x in rows])
    return ids, mask

train_ids, train_mask = tensors(train)
val_ids, val_mask = tensors(val)
optimizer = torch.optim.Adam(model.parameters(), lr=5e-4)
batch = 32
t_epoch = time.perf_counter()
model.train()
losses, step_s, step_tokens = [], [], []
for idx in torch.randperm(len(train_ids)).split(batch):
    t_step = time.perf_counter()
    x, m = train_ids[idx], train_mask[idx]
    loss = model(input_ids=x, attention_mask=m, labels=x).loss  # labels include the padding, as in the article
    loss.backward()
    optimizer.step()
    model.zero_grad()
    losses.append(loss.item())
    step_s.append(time.perf_counter() - t_step)
    step_tokens.append(int(m.sum()))
train_loss = sum(losses) / len(losses)
train_s = time.perf_counter() - t_epoch
model.eval()
with torch.no_grad():
    val_losses = [model(input_ids=val_ids[i:i + batch], attention_mask=val_mask[i:i + batch],
                        labels=val_ids[i:i + batch]).loss.item() for i in range(0, len(val_ids), batch)]
val_loss = sum(val_losses) / len(val_losses)
print(f"epoch 1 | train loss {train_loss:.4f} | val loss {val_loss:.4f}", flush=True)
with torch.no_grad():
    for kw in keywords:
        x = torch.tensor([[bos] + tokenizer(kw, add_special_tokens=False)["input_ids"]])
        outs = model.generate(x, attention_mask=torch.ones_like(x), do_sample=True, top_k=30, top_p=0.9,
                              max_new_tokens=50, num_return_sequences=2, eos_token_id=eos, pad_token_id=pad)
        for o in outs:
            print(f"{kw!r}: {tokenizer.decode(o, skip_special_tokens=True)}", flush=True)
epoch_s = time.perf_counter() - t_epoch
print(f"epoch 1 took {epoch_s:.1f} s", flush=True)
model.save_pretrained(out)
tokenizer.save_pretrained(out)
print(json.dumps({"train_s": round(train_s, 2), "epoch_s": round(epoch_s, 2), "train_loss": round(train_loss, 4),
                  "val_loss": round(val_loss, 4), "train_sentences": len(train), "val_sentences": len(val),
                  "width": width, "process_s": round(time.perf_counter() - t0, 2),
                  "step_s": step_s, "step_tokens": step_tokens}))
'''


def timed(cmd: list[str], env: dict[str, str] | None = None) -> tuple[float, str]:
    """Wall time of a fresh process and its stdout."""
    t0 = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t0
    if done.returncode:
        sys.exit(f"failed: {' '.join(cmd)}\n{done.stdout[-1000:]}\n{done.stderr[-2000:]}")
    return wall, done.stdout


def steady(step_s: list[float], step_tokens: list[int]) -> float:
    """Tokens/s over every step but the first (all of them when there is only one)."""
    s, t = (step_s[1:], step_tokens[1:]) if len(step_s) > 1 else (step_s, step_tokens)
    return sum(t) / max(sum(s), 1e-9)


def run_gpt2tune(pin: list[str], model: Path, data: Path, out: Path, cache: Path, threads: int) -> dict:
    env = {**os.environ, "GPT2TUNE_CACHE_DIR": str(cache)}
    wall, _ = timed(pin + [sys.executable, "-m", "gpt2tune", "train", "--model", str(model), "--data", str(data),
                           "--out", str(out), "--epochs", "1", "--threads", str(threads)], env)
    last = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines() if x.strip()][-1]
    return {"wall_s": round(wall, 1), "train_s": last["elapsed_s"], "tokens_per_s": last["tokens_per_s"],
            "steps": last["step"], "val_loss": last["val_loss"], "precision": _native()}  # --precision auto


def run_trainer(pin: list[str], script: Path, model: Path, data: Path, out: Path, threads: int) -> dict:
    wall, stdout = timed(pin + [sys.executable, str(script), str(model), str(data), str(out), str(threads)])
    inner = json.loads(stdout.strip().splitlines()[-1])
    return {"wall_s": round(wall, 1), "train_s": round(inner["train_s"], 2),
            "tokens_per_s": round(steady(inner["step_s"], inner["step_tokens"]), 1), "steps": len(inner["step_s"]),
            "precision": "bf16" if inner["bf16"] else "fp32"}


def run_article(pin: list[str], script: Path, model: Path, data: Path, out: Path, threads: int, width: int) -> dict:
    wall, stdout = timed(pin + [sys.executable, str(script), str(model), str(data), str(out), str(threads),
                                json.dumps(KEYWORDS), str(width)])
    inner = json.loads(stdout.strip().splitlines()[-1])
    return {"wall_s": round(wall, 1), "train_s": inner["train_s"], "epoch_s": inner["epoch_s"],
            "tokens_per_s": round(steady(inner["step_s"], inner["step_tokens"]), 1), "steps": len(inner["step_s"]),
            "val_loss": inner["val_loss"], "pad_width": inner["width"], "precision": "fp32"}


def _native() -> str:
    from gpt2tune.hardware import cpu_has_bf16

    return "bf16" if cpu_has_bf16() else "fp32"


def cpu_name() -> str:
    """The CPU's model name (Linux /proc/cpuinfo), else the platform's."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def first_lines(path: str, n: int) -> list[str]:
    lines = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                lines.append(line.rstrip("\n"))
                if len(lines) == n:
                    break
    return lines


def corpus_width(model: Path, path: str) -> int:
    """The article's padding width: its longest `<sos> s <eos>` in tokens over the whole corpus (capped at the
    model's context, as the article's script caps it)."""
    from transformers import AutoConfig, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model)
    limit = AutoConfig.from_pretrained(model).n_positions
    sentences = [" ".join(line.split()) for line in open(path, encoding="utf-8") if line.strip()]
    return min(limit, 2 + max(len(x) for x in tokenizer(sentences, add_special_tokens=False)["input_ids"]))


def median(rows: list[dict], tool: str, key: str) -> float:
    return statistics.median(r[tool][key] for r in rows)


def markdown(summary: dict) -> str:
    """The README's performance table: one row per tool, medians over the rounds."""
    tools, rows = summary["tools"], summary["rounds"]
    head = (f"One epoch of {summary['sentences']:,} Japan sentences, random GPT-2 {summary['shape']}, "
            f"{summary['threads']} thread(s){', pinned to CPUs ' + summary['cpus'] if summary['cpus'] else ''}; "
            f"{summary['cpu']} ({summary['logical_cpus']} logical CPUs), bf16 "
            f"{'native' if summary['bf16_native'] else 'not native (fp32)'}; medians of {len(rows)} alternated "
            "round(s)")
    lines = [head, "", "| tool | precision | whole process (s) | steady training tokens/s | gpt2tune is faster by "
             "(whole process) |", "|---|---|---:|---:|---:|"]
    for tool in tools:
        name = TOOLS[tool] + (f", padded to {rows[0]['article']['pad_width']} tokens"
                              if tool == "article" else "")
        ratio = "—" if tool == "gpt2tune" or "gpt2tune" not in tools else \
            f"{statistics.median(r[tool]['wall_s'] / r['gpt2tune']['wall_s'] for r in rows):.2f}x"
        lines.append(f"| {name} | {rows[0][tool]['precision']} | {median(rows, tool, 'wall_s'):.1f} | "
                     f"{median(rows, tool, 'tokens_per_s'):,.0f} | {ratio} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sentences", type=int, default=1024, help="first N sentences of --data (default 1024)")
    p.add_argument("--data", default=None,
                   help=f"sentence file, one per line (default {DEFAULT_DATA} if present, else the Japan sample "
                        "that ships with gpt2tune)")
    p.add_argument("--shape", default="small-6x384", help="gpt2tune's built-in shape (tiny, mini, small-6x384, "
                                                         "gpt2-124m)")
    p.add_argument("--threads", type=int, default=2, help="threads for every tool (default 2)")
    p.add_argument("--cpus", default="", help="pin every process to these CPUs with taskset (e.g. 1 or 0,1)")
    p.add_argument("--rounds", type=int, default=3, help="rounds; the order of the tools rotates each round")
    p.add_argument("--tools", default="gpt2tune,trainer,article", help="comma-separated: gpt2tune,trainer,article")
    p.add_argument("--article-pad", choices=["corpus", "sentences"], default="corpus",
                   help="the article's loop pads to the longest sentence of the whole --data file, as the article "
                        "padded its 40k (default), or of the first --sentences only")
    p.add_argument("--json", action="store_true", help="print a JSON summary instead of the tables")
    a = p.parse_args(argv)
    import gpt2tune
    from gpt2tune.model.builtin import SHAPES, make_gpt2
    from gpt2tune.model.load import quiet_transformers

    tools = [t.strip() for t in a.tools.split(",") if t.strip()]
    if not tools or any(t not in TOOLS for t in tools):
        p.error(f"--tools takes a comma-separated list of {', '.join(TOOLS)}")
    if a.shape not in SHAPES:
        p.error(f"--shape must be one of {', '.join(SHAPES)}")
    if a.data is None:
        from gpt2tune.demo import sample_corpus

        a.data = DEFAULT_DATA if Path(DEFAULT_DATA).is_file() else str(sample_corpus())
    pin = ["taskset", "-c", a.cpus] if a.cpus else []
    # gpt2tune's own modules byte-compiled, as an installed package's are (an editable install under
    # PYTHONDONTWRITEBYTECODE would otherwise compile them again in every run: 0.06 s)
    compileall.compile_dir(str(Path(gpt2tune.__file__).parent), quiet=1)
    with tempfile.TemporaryDirectory(prefix="bench-whole-") as tmp_name:
        tmp = Path(tmp_name)
        lines = first_lines(a.data, a.sentences)
        data = tmp / "sentences.txt"
        data.write_text("\n".join(lines) + "\n", encoding="utf-8")
        quiet_transformers()  # no "Writing model shards" bar
        model = make_gpt2(tmp / "model", a.shape)
        article_script, trainer_script = tmp / "article_child.py", tmp / "trainer_child.py"
        article_script.write_text(ARTICLE, encoding="utf-8")
        trainer_script.write_text(TRAINER, encoding="utf-8")
        width = corpus_width(model, a.data) if a.article_pad == "corpus" and "article" in tools else 0
        rows = []
        for r in range(a.rounds):  # rotate who goes first, so a busy machine hurts all alike
            order = tools[r % len(tools):] + tools[:r % len(tools)]
            row: dict = {"round": r + 1}
            for tool in order:
                if tool == "gpt2tune":
                    res = run_gpt2tune(pin, model, data, tmp / f"g{r}", tmp / f"cache{r}", a.threads)
                elif tool == "trainer":
                    res = run_trainer(pin, trainer_script, model, data, tmp / f"t{r}", a.threads)
                else:
                    res = run_article(pin, article_script, model, data, tmp / f"a{r}", a.threads, width)
                row[tool] = res
                print(json.dumps({"round": r + 1, "tool": tool, **res}), flush=True)
            rows.append(row)
    from gpt2tune.hardware import cpu_has_bf16

    summary = {"sentences": len(lines), "shape": a.shape, "threads": a.threads, "cpus": a.cpus, "cpu": cpu_name(),
               "logical_cpus": os.cpu_count(), "bf16_native": cpu_has_bf16(), "tools": tools, "rounds": rows,
               "load_average_after": os.getloadavg()[0] if hasattr(os, "getloadavg") else None}
    if a.json:
        print(json.dumps(summary))
        return
    print(f"\n{'round':>5} " + " ".join(f"{t + ' s':>12} {t + ' tok/s':>16}" for t in tools))
    for x in rows:
        print(f"{x['round']:>5} " + " ".join(f"{x[t]['wall_s']:>12.1f} {x[t]['tokens_per_s']:>16,.0f}"
                                             for t in tools))
    print("\n" + markdown(summary))


if __name__ == "__main__":
    main()
