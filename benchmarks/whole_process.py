"""Whole-process wall time of one epoch as a user sees it: `gpt2tune train` vs the "Fine-tune GPT-2" article's loop.

    python benchmarks/whole_process.py --sentences 1024 --threads 2 --rounds 1

Both sides start from the same random-initialised GPT-2 shape (default 6 layers x 384 wide, GPT-2's real tokenizer)
and the same sentences (the first --sentences lines of --data), and run as fresh processes, alternating, so Python
and library start-up, loading, tokenizing, evaluating, sampling and saving all count.

The article's side is a standalone script (ARTICLE below) written the way the article's loop works: GPT-2's tokenizer
given <sos>/<eos>/<pad> (embeddings resized), every sentence `<sos> s <eos>`, a 90/10 split, every sentence padded to
the longest, labels = input ids with the padding included (the article counted padding in the loss), plain Adam at
lr 5e-4, batch 32, fp32, one epoch; then its per-epoch work: mean train loss, val loss over the val split, two sampled
sentences for each of the ten keywords (one model.generate per keyword: do_sample, top_k 30, top_p 0.9, 50 new tokens
at most, eos = <eos>), the elapsed time printed, and the model saved with save_pretrained.

gpt2tune's side is `gpt2tune train --model M --data F --out O --epochs 1 --threads T` with its defaults otherwise
(packed blocks, AdamW, bf16 where the CPU has it, two samples per keyword at every evaluation). Note that gpt2tune
does more than the article did: it also evaluates and samples at step 0 (before training), deduplicates the
sentences, writes config/metrics/samples files and a report (report.html, loss.png), and saves best/ and last/.
It runs as installed (`python -m gpt2tune`, which re-runs itself under tcmalloc when present) with an empty
tokenized-data cache of its own for each run (GPT2TUNE_CACHE_DIR), as on a user's first run.

Each run prints a JSON line; at the end a table of whole-process wall seconds per round and the ratio
article / gpt2tune per round and overall (median of the rounds). --json prints a JSON summary instead of the table.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DEFAULT_DATA = "/work/shared/data/japan_wiki.txt"
KEYWORDS = ["Osaka", "Japan", "Kyoto", "Yokohama", "Kanto", "Nikko",
            "Japan has", "Tokyo is the", "Osaka is the", "Kyoto is the"]

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
width = max(len(x) for x in examples)  # every sentence padded to the longest

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
losses = []
for idx in torch.randperm(len(train_ids)).split(batch):
    x, m = train_ids[idx], train_mask[idx]
    loss = model(input_ids=x, attention_mask=m, labels=x).loss  # labels include the padding, as in the article
    loss.backward()
    optimizer.step()
    model.zero_grad()
    losses.append(loss.item())
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
                  "width": width, "process_s": round(time.perf_counter() - t0, 2)}))
'''


def timed(cmd: list[str], env: dict[str, str] | None = None) -> tuple[float, str]:
    """Wall time of a fresh process and its stdout."""
    t0 = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t0
    if done.returncode:
        sys.exit(f"failed: {' '.join(cmd)}\n{done.stdout[-1000:]}\n{done.stderr[-2000:]}")
    return wall, done.stdout


def run_gpt2tune(model: Path, data: Path, out: Path, cache: Path, threads: int) -> dict:
    env = {**os.environ, "GPT2TUNE_CACHE_DIR": str(cache)}
    wall, _ = timed([sys.executable, "-m", "gpt2tune", "train", "--model", str(model), "--data", str(data),
                     "--out", str(out), "--epochs", "1", "--threads", str(threads)], env)
    last = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines() if x.strip()][-1]
    return {"wall_s": round(wall, 1), "train_s": last["elapsed_s"], "train_loss": last["train_loss"],
            "val_loss": last["val_loss"]}


def run_article(script: Path, model: Path, data: Path, out: Path, threads: int) -> dict:
    wall, stdout = timed([sys.executable, str(script), str(model), str(data), str(out), str(threads),
                          json.dumps(KEYWORDS)])
    inner = json.loads(stdout.strip().splitlines()[-1])
    return {"wall_s": round(wall, 1), "train_s": inner["train_s"], "epoch_s": inner["epoch_s"],
            "train_loss": inner["train_loss"], "val_loss": inner["val_loss"], "pad_width": inner["width"]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sentences", type=int, default=1024, help="first N sentences of --data (default 1024)")
    p.add_argument("--data", default=DEFAULT_DATA, help=f"sentence file, one per line (default {DEFAULT_DATA})")
    p.add_argument("--shape", default="small-6x384", help="gpt2tune.model.builtin shape (tiny, mini, small-6x384, gpt2-124m)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--json", action="store_true", help="print a JSON summary instead of the table")
    a = p.parse_args()
    from gpt2tune.model.builtin import SHAPES, make_gpt2

    if a.shape not in SHAPES:
        p.error(f"--shape must be one of {', '.join(SHAPES)}")
    with tempfile.TemporaryDirectory(prefix="bench-whole-") as tmp_name:
        tmp = Path(tmp_name)
        lines = []
        with open(a.data, encoding="utf-8") as f:
            for line in f:
                if line.strip():
                    lines.append(line.rstrip("\n"))
                    if len(lines) == a.sentences:
                        break
        data = tmp / "sentences.txt"
        data.write_text("\n".join(lines) + "\n", encoding="utf-8")
        from gpt2tune.model.load import _quiet_transformers

        _quiet_transformers()  # no "Writing model shards" bar
        model = make_gpt2(tmp / "model", a.shape)
        script = tmp / "article_child.py"
        script.write_text(ARTICLE, encoding="utf-8")
        rows = []
        for r in range(a.rounds):  # alternate (and swap who goes first), so a busy machine hurts both alike
            order = ["gpt2tune", "article"] if r % 2 == 0 else ["article", "gpt2tune"]
            row = {"round": r + 1}
            for side in order:
                if side == "gpt2tune":
                    res = run_gpt2tune(model, data, tmp / f"g{r}", tmp / f"cache{r}", a.threads)
                else:
                    res = run_article(script, model, data, tmp / f"a{r}", a.threads)
                row[side] = res
                print(json.dumps({"round": r + 1, "side": side, "sentences": len(lines), "shape": a.shape,
                                  "threads": a.threads, **res}), flush=True)
            row["ratio"] = round(row["article"]["wall_s"] / row["gpt2tune"]["wall_s"], 2)
            rows.append(row)
    median = round(statistics.median(x["ratio"] for x in rows), 2)
    if a.json:
        print(json.dumps({"sentences": len(lines), "shape": a.shape, "threads": a.threads, "rounds": rows,
                          "median_ratio": median}))
        return
    print(f"\n{len(lines)} sentences, {a.shape}, {a.threads} threads, one epoch; whole-process wall seconds")
    print(f"{'round':>5} {'gpt2tune s':>11} {'article s':>10} {'article/gpt2tune':>17}")
    for x in rows:
        print(f"{x['round']:>5} {x['gpt2tune']['wall_s']:>11.1f} {x['article']['wall_s']:>10.1f} {x['ratio']:>16.2f}x")
    print(f"median ratio article / gpt2tune: {median:.2f}x")


if __name__ == "__main__":
    main()
