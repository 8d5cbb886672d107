"""CPU and wall seconds of each phase of one `gpt2tune train` (imports, data, model load, evaluations, samples,
checkpoints, steps, report), the CLI run in this process with each phase wrapped; CPU seconds stay meaningful on a
machine shared with other jobs. Run it under tcmalloc and pinned, as `gpt2tune train` would run:

    LD_PRELOAD=libtcmalloc_minimal.so.4 taskset -c 1 python benchmarks/train_phases.py \
        train --model M --data japan1024.txt --out /tmp/run --epochs 1 --threads 1 --keywords Japan
"""
import sys
import time

c00, t00 = time.process_time(), time.perf_counter()
phases = []
def wrap(mod, name, label):
    f = getattr(mod, name)
    def w(*a, **k):
        c, t = time.process_time(), time.perf_counter()
        try:
            return f(*a, **k)
        finally:
            phases.append((label, round(time.process_time() - c, 2), round(time.perf_counter() - t, 2)))
    setattr(mod, name, w)
import gpt2tune.cli  # noqa: F401  (the command line)

c1 = time.process_time(); phases.append(("import the command line", round(c1 - c00, 2), round(time.perf_counter() - t00, 2)))
c, t = time.process_time(), time.perf_counter()
from gpt2tune.data import prepare
from gpt2tune.run import report
from gpt2tune.train import adapt, loop
from gpt2tune.train import step as scoring

phases.append(("import torch, transformers, accelerate, the loop", round(time.process_time() - c, 2), round(time.perf_counter() - t, 2)))
wrap(prepare, "prepare_split", "data: read, dedupe, split")
wrap(prepare, "prepare_blocks", "data: tokenize, pack")
wrap(adapt, "load_for_training", "model load")
wrap(loop, "build_run", "optimizer, schedule")
wrap(scoring, "evaluate_loss", "evaluation: val loss")
wrap(loop, "sample", "evaluation: keyword samples")
wrap(loop, "save", "checkpoint (best/, last/)")
wrap(scoring.TrainStep, "__call__", "training step")
wrap(report, "write_report", "report")
from gpt2tune.cli import main

main(sys.argv[1:])
total_c, total_t = time.process_time() - c00, time.perf_counter() - t00
agg = {}
for label, c, t in phases:
    a = agg.setdefault(label, [0, 0.0, 0.0]); a[0] += 1; a[1] += c; a[2] += t
for label, (n, c, t) in agg.items():
    print(f"{label:<50} x{n:<3} {c:7.2f} CPU s {t:7.2f} wall s")
print(f"{'whole process (this Python start)':<50}      {total_c:7.2f} CPU s {total_t:7.2f} wall s")
