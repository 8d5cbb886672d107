"""Steady-state training tokens/s of `gpt2tune train` against `gpt2tune bench`'s gpt2tune loop on the same settings.

    python benchmarks/train_vs_bench.py --rounds 3                      # 2 threads
    python benchmarks/train_vs_bench.py --rounds 3 --cpus 1 --threads 1 # pinned, on a shared machine

Same random GPT-2 shape, sentences (the first --sentences of --data), batch size, block size, threads and precision
(auto). `train` runs as installed (`python -m gpt2tune train --epochs 1 --samples 0`, tcmalloc when present) and
its rate is the epoch row's `tokens_per_s` in metrics.jsonl (every step but the first); bench's is
`gpt2tune.bench.run_gpt2tune` in a fresh process on tcmalloc (what `gpt2tune bench` runs for its gpt2tune row:
one warm-up step, then --steps timed ones). Alternated, the order swapped each round; prints each round and the
median ratio train / bench.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from whole_process import DEFAULT_DATA, first_lines  # noqa: E402

BENCH = r'''
import json, sys
from gpt2tune.bench import run_gpt2tune
from gpt2tune.config import BenchConfig
model, data, n, steps, batch, threads = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6])
r = run_gpt2tune(BenchConfig(shapes=["small-6x384"], steps=steps, batch_size=batch, threads=threads, data=data,
                             sentences=n, isolate=False), model)
print(json.dumps({"tokens_per_s": r["useful_tokens_per_s"], "precision": r["precision"]}))
'''


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sentences", type=int, default=1024)
    p.add_argument("--data", default=None, help=f"sentence file (default {DEFAULT_DATA} if present, else the demo's)")
    p.add_argument("--shape", default="small-6x384")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--steps", type=int, default=10, help="bench's timed steps (default 10)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--cpus", default="", help="pin both to these CPUs with taskset")
    p.add_argument("--rounds", type=int, default=3)
    a = p.parse_args()
    from gpt2tune.model.builtin import make_gpt2
    from gpt2tune.model.load import quiet_transformers
    from gpt2tune.process import tcmalloc_library

    if a.data is None:
        from gpt2tune.demo import sample_corpus

        a.data = DEFAULT_DATA if Path(DEFAULT_DATA).is_file() else str(sample_corpus())
    pin = ["taskset", "-c", a.cpus] if a.cpus else []
    lib = tcmalloc_library()
    bench_env = {**os.environ, **({"LD_PRELOAD": lib} if lib else {})}
    with tempfile.TemporaryDirectory(prefix="bench-tvb-") as tmp_name:
        tmp = Path(tmp_name)
        data = tmp / "sentences.txt"
        data.write_text("\n".join(first_lines(a.data, a.sentences)) + "\n", encoding="utf-8")
        quiet_transformers()
        model = make_gpt2(tmp / "model", a.shape)
        rows = []
        for r in range(a.rounds):
            row = {"round": r + 1}
            for side in (["train", "bench"] if r % 2 == 0 else ["bench", "train"]):
                if side == "train":
                    out = tmp / f"run{r}"
                    subprocess.run(pin + [sys.executable, "-m", "gpt2tune", "train", "--model", str(model), "--data",
                                          str(data), "--out", str(out), "--epochs", "1", "--samples", "0",
                                          "--batch-size", str(a.batch_size), "--threads", str(a.threads)],
                                   check=True, capture_output=True,
                                   env={**os.environ, "GPT2TUNE_CACHE_DIR": str(tmp / f"cache{r}")})
                    last = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()][-1]
                    row["train"] = last["tokens_per_s"]
                else:
                    done = subprocess.run(pin + [sys.executable, "-c", BENCH, str(model), str(data),
                                                 str(a.sentences), str(a.steps), str(a.batch_size), str(a.threads)],
                                          check=True, capture_output=True, text=True, env=bench_env)
                    row["bench"] = round(json.loads(done.stdout.strip().splitlines()[-1])["tokens_per_s"], 1)
            row["ratio"] = round(row["train"] / row["bench"], 3)
            rows.append(row)
            print(json.dumps(row), flush=True)
    print(f"{a.shape}, batch {a.batch_size}, {a.threads} thread(s){', CPUs ' + a.cpus if a.cpus else ''}: "
          f"train / bench steady-state tokens/s, median of {len(rows)}: "
          f"{statistics.median(x['ratio'] for x in rows):.1%}")


if __name__ == "__main__":
    main()
