"""Hugging Face Trainer's side of the whole-process benchmark: one epoch, transformers' own causal-LM recipe.

    python benchmarks/hf_trainer.py --rounds 3          # = whole_process.py --tools gpt2tune,trainer

The Trainer side (TRAINER below, run as a script of its own) follows transformers' causal-LM example (run_clm.py):
every sentence `bos s eos`, all of them concatenated and cut into blocks of 128 tokens (no padding, but sentences
see each other), Trainer with batch 8 blocks, AdamW (its default, fused where available) at lr 2e-4 with a cosine
schedule, bf16 autocast where the CPU computes bf16 natively, one epoch, then save_pretrained. It records the time
of every optimizer step (a TrainerCallback), so its steady-state tokens/s leaves out the first step, as gpt2tune's
and the article's do. `whole_process.py` runs it against `gpt2tune train` and the article's loop, alternated, in
one run: use that; this file's own main is a shortcut for the Trainer-vs-gpt2tune pair.
"""

from __future__ import annotations

TRAINER = r'''
import json, sys, time
t0 = time.perf_counter()
import torch
from transformers import (AutoModelForCausalLM, AutoTokenizer, Trainer, TrainerCallback, TrainingArguments,
                          default_data_collator)
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
batch = 8


class StepTimes(TrainerCallback):
    def __init__(self):
        self.ends = []

    def on_step_begin(self, args, state, control, **kwargs):
        if not self.ends:
            self.begin = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        self.ends.append(time.perf_counter())


times = StepTimes()
args = TrainingArguments(out, per_device_train_batch_size=batch, learning_rate=2e-4, num_train_epochs=1,
                         warmup_steps=0.05, lr_scheduler_type="cosine", weight_decay=0.01, bf16=bf16, use_cpu=True,
                         save_strategy="no", report_to=[], logging_strategy="no", dataloader_num_workers=0,
                         disable_tqdm=True)
result = Trainer(model=model, args=args, train_dataset=dataset, data_collator=default_data_collator,
                 callbacks=[times]).train()
model.save_pretrained(out + "/model")
sizes = [min(batch, len(blocks) - i) * block for i in range(0, len(blocks), batch)]  # the last batch may be short
step_s = [times.ends[0] - times.begin] + [b - a for a, b in zip(times.ends, times.ends[1:])]
print(json.dumps({"train_s": result.metrics["train_runtime"], "tokens": len(blocks) * block,
                  "process_s": time.perf_counter() - t0, "bf16": bf16, "step_s": step_s, "step_tokens": sizes}))
'''


if __name__ == "__main__":
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import whole_process

    whole_process.main(["--tools", "gpt2tune,trainer", *sys.argv[1:]])
