"""What `--report-to tensorboard,mlflow` costs a training run, as a user sees it: whole-process wall time of the same
1,000-step run without and with the trackers, fresh processes, alternating which goes first round by round.

    python benchmarks/tracker_overhead.py --rounds 3
    python benchmarks/tracker_overhead.py --rounds 3 --cpus 1 --threads 1   # pinned, on a shared machine

The run: the tiny random-initialised GPT-2 (config.SHAPES["tiny"], GPT-2's real tokenizer) on the demo sentences,
`--max-steps 1000 --epochs 100 --block-size 64 --batch-size 4 --eval-every 100 --samples 1 --keywords Japan,Tokyo
--patience none`, so 11 evaluations (step 0, every 100 steps) are logged to every tracker. Printed per run: the
wall time, the training steps' share of it (the sum of metrics.jsonl's step times is not kept, so "steps" is the
time from the first to the last metrics row), and at the end the medians and the difference.
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

sys.path.insert(0, str(Path(__file__).resolve().parent))
from whole_process import cpu_name  # noqa: E402

from gpt2tune.hardware import cpu_has_bf16  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "src" / "gpt2tune" / "demo_data" / "japan_wiki_sample.txt"


def one_run(model: Path, out: Path, trackers: bool, args) -> dict:
    cmd = [sys.executable, "-m", "gpt2tune", "train", "--model", str(model), "--data", str(args.data),
           "--out", str(out), "--max-steps", str(args.steps), "--epochs", "100", "--block-size", "64",
           "--batch-size", "4", "--eval-every", "100", "--samples", "1", "--keywords", "Japan,Tokyo",
           "--patience", "none", "--threads", str(args.threads)]
    if trackers:
        cmd += ["--report-to", "tensorboard,mlflow"]
    if args.cpus:
        cmd = ["taskset", "-c", args.cpus] + cmd
    env = {**os.environ, "GPT2TUNE_CACHE_DIR": str(out.parent / f"cache-{out.name}")}
    env.pop("MLFLOW_TRACKING_URI", None)  # MLflow's store under the run
    t = time.perf_counter()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t
    if done.returncode:
        sys.exit(f"run failed ({done.returncode}):\n{done.stderr[-3000:]}")
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines() if x.strip()]
    return {"wall_s": wall, "steps": rows[-1]["step"], "evaluations": len(rows),
            "tokens_per_s": rows[-1].get("tokens_per_s")}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--cpus", default=None, help="taskset CPU list for every run (default: not pinned)")
    p.add_argument("--data", default=str(DATA))
    args = p.parse_args()
    print(f"machine: {cpu_name()}, {os.cpu_count()} CPU(s), native bf16: {'yes' if cpu_has_bf16() else 'no'}; "
          f"{args.threads} thread(s){', cpus ' + args.cpus if args.cpus else ''}", flush=True)
    walls: dict[bool, list[float]] = {False: [], True: []}
    with tempfile.TemporaryDirectory() as tmp:
        model = Path(tmp) / "tiny"
        make = f"from gpt2tune.model.builtin import make_gpt2; make_gpt2({str(model)!r})"
        subprocess.run([sys.executable, "-c", make], check=True)
        for r in range(1, args.rounds + 1):
            order = [False, True] if r % 2 else [True, False]
            for with_trackers in order:
                out = Path(tmp) / f"run-{r}-{'with' if with_trackers else 'without'}"
                res = one_run(model, out, with_trackers, args)
                walls[with_trackers].append(res["wall_s"])
                print(f"round {r} {'with   ' if with_trackers else 'without'}: {res['wall_s']:.1f} s "
                      f"({res['steps']} steps, {res['evaluations']} evaluations, "
                      f"{res['tokens_per_s']:.0f} tokens/s)", flush=True)
    without, with_ = statistics.median(walls[False]), statistics.median(walls[True])
    print(f"median without {without:.1f} s, with --report-to tensorboard,mlflow {with_:.1f} s: "
          f"{with_ - without:+.1f} s ({(with_ / without - 1) * 100:+.1f} %)")
    for r, (a, b) in enumerate(zip(walls[False], walls[True]), 1):
        print(f"| {r} | {a:.1f} s | {b:.1f} s | {(b / a - 1) * 100:+.1f} % |")


if __name__ == "__main__":
    main()
