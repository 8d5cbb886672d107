"""Whole-process wall time of one epoch: `gpt2tune train` against Hugging Face Trainer on the same sentences.

    python benchmarks/hf_trainer.py --sentences 1024 --shape small-6x384 --threads 2 --rounds 2

The Trainer side follows transformers' own causal-LM example (run_clm.py): every sentence `bos s eos`, all of them
concatenated and cut into blocks of 128 tokens (no padding), AdamW at the same learning rate, batch 8 blocks, bf16
autocast where the CPU has it. Both start from the same random-initialised GPT-2 shape and run as fresh processes,
alternating, so start-up, loading and saving count as a user would see them. gpt2tune runs as installed (tcmalloc
when present) with no keyword samples (--samples 0) so that both do the same work: one epoch, then save.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TRAINER = r'''
import json, sys, time
t0 = time.perf_counter()
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, Trainer, TrainingArguments, default_data_collator
model_dir, data, out, threads, block = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), 128
torch.set_num_threads(threads)
tok = AutoTokenizer.from_pretrained(model_dir)
model = AutoModelForCausalLM.from_pretrained(model_dir)
ids = []
for line in open(data, encoding="utf-8"):
    if line.strip():
        ids += [tok.bos_token_id] + tok(" ".join(line.split()))["input_ids"] + [tok.eos_token_id]
blocks = [ids[i:i + block] for i in range(0, len(ids) - block + 1, block)]
dataset = [{"input_ids": torch.tensor(b), "labels": torch.tensor(b)} for b in blocks]
bf16 = torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()
args = TrainingArguments(out, per_device_train_batch_size=8, learning_rate=2e-4, num_train_epochs=1,
                         warmup_steps=0.05, lr_scheduler_type="cosine", weight_decay=0.01, bf16=bf16, use_cpu=True,
                         save_strategy="no", report_to=[], logging_strategy="no", dataloader_num_workers=0,
                         disable_tqdm=True)
result = Trainer(model=model, args=args, train_dataset=dataset, data_collator=default_data_collator).train()
model.save_pretrained(out + "/model")
print(json.dumps({"train_s": result.metrics["train_runtime"], "tokens": len(blocks) * block,
                  "process_s": time.perf_counter() - t0, "bf16": bf16}))
'''


def timed(cmd: list[str]) -> tuple[float, str]:
    """Wall time of a fresh process and its stdout."""
    t0 = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"failed: {' '.join(cmd)}\n{done.stderr[-2000:]}")
    return time.perf_counter() - t0, done.stdout


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sentences", type=int, default=1024)
    p.add_argument("--shape", default="small-6x384")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--data", default=None, help="sentence file (default: the Japan sample that ships with gpt2tune)")
    a = p.parse_args()
    from gpt2tune.demo import sample_corpus
    from gpt2tune.model.builtin import make_gpt2

    tmp = Path(tempfile.mkdtemp(prefix="bench-trainer-"))
    lines = [x for x in Path(a.data or sample_corpus()).read_text(encoding="utf-8").splitlines() if x.strip()]
    data = tmp / "sentences.txt"
    data.write_text("\n".join(lines[:a.sentences]) + "\n", encoding="utf-8")
    model = make_gpt2(tmp / "model", a.shape)
    script = tmp / "trainer_child.py"
    script.write_text(TRAINER, encoding="utf-8")
    rows = []
    for r in range(a.rounds):  # alternate, so a busy machine hurts both alike
        out = tmp / f"g{r}"
        wall_g, _ = timed([sys.executable, "-m", "gpt2tune", "train", "--model", str(model), "--data", str(data),
                           "--out", str(out), "--epochs", "1", "--samples", "0", "--patience", "none",
                           "--threads", str(a.threads)])
        last = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()][-1]
        wall_t, stdout = timed([sys.executable, str(script), str(model), str(data), str(tmp / f"t{r}"),
                                str(a.threads)])
        t = json.loads(stdout.strip().splitlines()[-1])
        rows.append({"gpt2tune_wall_s": round(wall_g, 1), "gpt2tune_train_s": last["elapsed_s"],
                     "trainer_wall_s": round(wall_t, 1), "trainer_train_s": round(t["train_s"], 1),
                     "trainer_bf16": t["bf16"], "wall_ratio": round(wall_t / wall_g, 2),
                     "train_ratio": round(t["train_s"] / last["elapsed_s"], 2)})
        print(json.dumps(rows[-1]), flush=True)
    print(f"{a.sentences} sentences, {a.shape}, {a.threads} threads: Trainer / gpt2tune whole-process wall time "
          f"{', '.join(str(x['wall_ratio']) for x in rows)}; training loop only "
          f"{', '.join(str(x['train_ratio']) for x in rows)}")


if __name__ == "__main__":
    main()
