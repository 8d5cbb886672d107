"""Before/after of the training step between two source trees: `bench`'s own gpt2tune loop, fresh processes, alternated.

    git worktree add --detach /tmp/before <commit>
    python benchmarks/ab_trees.py --before /tmp/before/src --after src --shape small-6x384 --steps 10 --rounds 4 \
        --threads 1 --cpus 0

Each round runs one process per tree (the order swapped every round, so a machine that gets busier hurts both),
each timing `--steps` steps of `gpt2tune.bench.run_gpt2tune` (the step `train` runs) after one warm-up step, on the
same random-initialised model; tcmalloc is preloaded for both when installed (as `train` does). It prints useful
tokens/s, the median step and peak RSS per process, then the means and the after/before ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

CHILD = r"""
import json, resource, sys
from gpt2tune.bench import run_gpt2tune
from gpt2tune.config import BenchConfig
cfg = BenchConfig(shapes=[sys.argv[2]], steps=int(sys.argv[3]), threads=int(sys.argv[4]), generation=False,
                  isolate=False)
r = run_gpt2tune(cfg, sys.argv[1])
print(json.dumps({"tok_s": r["useful_tokens_per_s"], "step_s": r["step_s"], "precision": r["precision"],
                  "peak_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}))
"""
TCMALLOC = "/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--before", required=True, help="src/ folder of the tree before")
    p.add_argument("--after", required=True, help="src/ folder of the tree after")
    p.add_argument("--shape", default="small-6x384")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--cpus", default=None, help="taskset CPU list for the measured processes (e.g. 0)")
    a = p.parse_args()
    trees = {"before": os.path.abspath(a.before), "after": os.path.abspath(a.after)}
    preload = TCMALLOC if os.path.exists(TCMALLOC) else ""
    with tempfile.TemporaryDirectory() as tmp:
        model = os.path.join(tmp, a.shape)
        subprocess.run([sys.executable, "-c", f"from gpt2tune.model.builtin import make_gpt2; make_gpt2({model!r}, {a.shape!r})"],
                       check=True, capture_output=True, env={**os.environ, "PYTHONPATH": trees["after"]})
        results: dict[str, list[tuple[float, float, float]]] = {k: [] for k in trees}
        for r in range(a.rounds):
            for name in (["before", "after"] if r % 2 == 0 else ["after", "before"]):
                cmd = ([ "taskset", "-c", a.cpus] if a.cpus else []) + [
                    sys.executable, "-c", CHILD, model, a.shape, str(a.steps), str(a.threads)]
                done = subprocess.run(cmd, capture_output=True, text=True, env={
                    **os.environ, "PYTHONPATH": trees[name], "LD_PRELOAD": preload, "GPT2TUNE_TCMALLOC": "0"})
                if done.returncode:
                    sys.exit(f"{name} failed:\n{done.stderr[-2000:]}")
                j = json.loads(done.stdout.strip().splitlines()[-1])
                med = statistics.median(j["step_s"])
                results[name].append((j["tok_s"], med, j["peak_gib"]))
                print(f"round {r + 1} {name}: {j['tok_s']:.1f} useful tok/s, median step {med:.3f} s, "
                      f"peak RSS {j['peak_gib']:.2f} GiB ({j['precision']})", flush=True)
    for name, rows in results.items():
        print(f"{name}: mean {statistics.mean(x[0] for x in rows):.1f} tok/s (median {statistics.median(x[0] for x in rows):.1f}), "
              f"median step {statistics.median(x[1] for x in rows):.3f} s, peak RSS {max(x[2] for x in rows):.2f} GiB")
    b, n = (statistics.mean(x[0] for x in results[k]) for k in ("before", "after"))
    print(f"after / before, mean tok/s: {n / b - 1:+.1%}")


if __name__ == "__main__":
    main()
