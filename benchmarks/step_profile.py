"""torch.profiler's per-op table of training steps 3-6 (after the warm-up), inside `train()` or inside bench's loop.

    python benchmarks/step_profile.py train MODEL_DIR SENTENCES.txt [THREADS]
    python benchmarks/step_profile.py bench MODEL_DIR SENTENCES.txt [THREADS]

Both run the same `TrainStep`; the table shows where a step's time goes, op by op (self time). Pin it
(`taskset -c 1`) and run it under tcmalloc (LD_PRELOAD) to see what `gpt2tune train` sees.
"""

import os
import shutil
import sys
import tempfile

from torch.profiler import ProfilerActivity, profile

from gpt2tune import bench
from gpt2tune.config import BenchConfig
from gpt2tune.train import loop
from gpt2tune.train import step as scoring

mode, model, data = sys.argv[1], sys.argv[2], sys.argv[3]
threads = int(sys.argv[4]) if len(sys.argv) > 4 else 1
orig = scoring.TrainStep.__call__
calls = [0]
prof = profile(activities=[ProfilerActivity.CPU])


def wrapped(self, blocks, idx):
    calls[0] += 1
    if calls[0] == 3:
        prof.__enter__()
    r = orig(self, blocks, idx)
    if calls[0] == 6:
        prof.__exit__(None, None, None)
    return r


scoring.TrainStep.__call__ = wrapped
if mode == "train":
    out = tempfile.mkdtemp(prefix="step-profile-")
    os.environ.setdefault("GPT2TUNE_CACHE_DIR", out + "-cache")
    loop.train(model=model, data=data, out=out + "/run", max_steps=7, threads=threads, keywords=["Japan"])
    shutil.rmtree(out, ignore_errors=True)
    shutil.rmtree(out + "-cache", ignore_errors=True)
else:
    bench.run_gpt2tune(BenchConfig(shapes=["small-6x384"], steps=6, batch_size=8, threads=threads, data=data,
                                   sentences=1024), model)
print(f"== {mode}: steps 3-6, {threads} thread(s), self CPU time per op")
print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=int(os.environ.get("ROWS", 18)),
                                 max_name_column_width=40))
