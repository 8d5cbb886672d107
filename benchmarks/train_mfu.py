"""MFU of `gpt2tune train` itself on a GPT-2 shape (default 124M), against the matmul peak measured on the machine.

    python benchmarks/train_mfu.py                      # GPT-2 124M, 20 steps of 8 x 128 tokens, 2 threads
    python benchmarks/train_mfu.py --rounds 3 --steps 30

Each round runs `python -m gpt2tune train --max-steps S --samples 0` as installed (tcmalloc when present, a fresh
token cache) on the first --sentences Japan sentences, reads the steady useful tokens/s from the run's last
metrics line (every step after the first, which `train` leaves out as warm-up) and the process's peak RSS, then
measures the bf16 (where native, else fp32) matmul peak in a fresh process, as `gpt2tune bench` does. MFU =
(6N + 12 * layers * width * block) * tokens/s / peak.
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
from whole_process import DEFAULT_DATA, cpu_name, first_lines  # noqa: E402

PEAK = r'''
import json, sys
import torch
from gpt2tune.hardware import matmul_peak, precision_for
from gpt2tune.threads import use_threads
use_threads(int(sys.argv[1]))
native = precision_for("auto", "cpu") == "bf16"
print(json.dumps({"precision": "bf16" if native else "fp32",
                  "peak": matmul_peak(torch.bfloat16 if native else torch.float32, "cpu", seconds=2.0)}))
'''


def run_measured(cmd: list[str], env: dict[str, str], log: Path) -> tuple[int, str, int, int]:
    """(exit code, output, peak RSS in bytes of the command's own process (its VmHWM, read until it exits), and of
    it and its children (os.wait4)): not that of the other processes this script started (the matmul peak's)."""
    own = 0
    with open(log, "w") as f:
        p = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env)
        while not (done := os.wait4(p.pid, os.WNOHANG))[0]:
            try:
                with open(f"/proc/{p.pid}/status") as st:
                    own = max([own] + [int(x.split()[1]) * 1024 for x in st if x.startswith("VmHWM:")])
            except (OSError, ValueError):
                pass
            time.sleep(0.01)
    _, status, usage = done
    return os.waitstatus_to_exitcode(status), log.read_text(errors="replace"), own, usage.ru_maxrss * 1024


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shape", default="gpt2-124m")
    p.add_argument("--data", default=str(DEFAULT_DATA))
    p.add_argument("--sentences", type=int, default=4000, help="enough that --steps stay inside one epoch")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--block-size", type=int, default=128)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=1)
    a = p.parse_args()
    from gpt2tune.bench import flops_per_token
    from gpt2tune.hardware import cpu_has_bf16
    from gpt2tune.model.builtin import make_gpt2
    from gpt2tune.model.load import load, quiet_transformers

    quiet_transformers()
    rows = []
    with tempfile.TemporaryDirectory(prefix="train-mfu-") as tmp:
        tmp = Path(tmp)
        model = make_gpt2(tmp / a.shape, a.shape)
        n, fpt = flops_per_token(load(str(model))[0], a.block_size)
        data = tmp / "sentences.txt"
        data.write_text("\n".join(first_lines(Path(a.data), a.sentences)) + "\n", encoding="utf-8")
        for r in range(1, a.rounds + 1):
            out = tmp / f"run{r}"
            env = {**os.environ, "GPT2TUNE_CACHE_DIR": str(tmp / f"cache{r}")}
            cmd = [sys.executable, "-m", "gpt2tune", "train", "--model", str(model), "--data", str(data), "--out",
                   str(out), "--max-steps", str(a.steps), "--samples", "0", "--batch-size", str(a.batch_size),
                   "--block-size", str(a.block_size), "--threads", str(a.threads)]
            code, log, rss, tree = run_measured(cmd, env, tmp / f"log{r}.txt")
            if code:
                sys.exit(f"train failed:\n{log[-3000:]}")
            last = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
            peak = json.loads(subprocess.run([sys.executable, "-c", PEAK, str(a.threads)], capture_output=True,
                                             text=True, check=True).stdout)
            tps = last["tokens_per_s"]
            row = {"round": r, "tokens_per_s": tps, "flops_per_token": fpt, "peak_flops": round(peak["peak"]),
                   "precision": peak["precision"], "mfu": round(fpt * tps / peak["peak"], 4),
                   "max_rss_gib": round(rss / 2**30, 3),
                   "with_children_gib": round(tree / 2**30, 3)}
            print(json.dumps(row), flush=True)
            rows.append(row)
    mfu = statistics.median(x["mfu"] for x in rows)
    print(f"\n{a.shape} ({n / 1e6:.1f}M parameters doing work, {fpt / 1e6:.0f} MFLOP per token), `gpt2tune train`, "
          f"{a.steps} steps of {a.batch_size} x {a.block_size} tokens, {a.threads} thread(s); {cpu_name()}, bf16 "
          f"{'native' if cpu_has_bf16() else 'not native'}")
    print(f"steady tokens/s {statistics.median(x['tokens_per_s'] for x in rows):,.1f}, matmul peak "
          f"{statistics.median(x['peak_flops'] for x in rows) / 1e9:,.1f} GFLOP/s ({rows[0]['precision']}), "
          f"MFU {mfu:.1%} (median of {len(rows)}); peak RSS of train {max(x['max_rss_gib'] for x in rows):.2f} GiB "
          "(the largest of the rounds)")


if __name__ == "__main__":
    main()
