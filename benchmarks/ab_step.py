"""A/B of the training step in one process, alternated: step time and peak RSS of two settings of one knob.

python benchmarks/ab_step.py loss|dropout [--shapes small-6x384,gpt2-124m] [--rounds 4] [--steps 3]

loss:    loss.BACKEND "own" (loss.py's fused head + cross-entropy) vs "torch" (F.linear_cross_entropy, chunked)
dropout: the fast CPU dropout (cpu_dropout.py) vs PyTorch's own dropout (models loaded without the swap)
Peak RSS per setting: VmHWM is reset before each setting's steps (Linux /proc/self/clear_refs).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch


def vm_hwm() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def reset_hwm() -> None:
    Path("/proc/self/clear_refs").write_text("5")


def build(shape: str, tmp: Path, fast_dropout: bool):
    from accelerate import Accelerator

    from gpt2tune.bench import corpus_examples
    from gpt2tune.config import BenchConfig, TrainConfig
    from gpt2tune.data import blocks as data_blocks
    from gpt2tune.hardware import autocast_dtype
    from gpt2tune.model import load as modeling
    from gpt2tune.model.builtin import make_gpt2
    from gpt2tune.train import adapt as tuning
    from gpt2tune.train import step as scoring

    model_dir = tmp / shape
    if not model_dir.exists():
        make_gpt2(model_dir, shape, seed=0)
    tcfg = TrainConfig(data="x", batch_size=8, block_size=128)
    model, tok = modeling.load(str(model_dir))
    model = tuning.prepare_for_training(model, tcfg) if fast_dropout else model
    blocks = data_blocks.pack(corpus_examples(BenchConfig(sentences=2000), tok), 128, tok.pad_token_id)
    acc = Accelerator(cpu=True, mixed_precision="no")
    opt = scoring.make_optimizer(model, 1e-4, 0.01)
    model, opt = acc.prepare(model, opt)
    step = scoring.TrainStep(model, opt, scoring.make_scheduler(opt, "constant", 0.0, 1000), acc, 8, 1.0,
                             autocast_dtype("auto", torch.device("cpu")))
    model.train()
    return step, blocks, scoring.step_batches(len(blocks), 8, 0, 0)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("knob", choices=["loss", "dropout"])
    ap.add_argument("--shapes", default="small-6x384,gpt2-124m")
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--verbose", action="store_true")
    args = ap.parse_args()
    from gpt2tune.model import loss
    from gpt2tune.model.load import _quiet_transformers
    from gpt2tune.process import allocator
    from gpt2tune.threads import set_threads

    _quiet_transformers()
    print(f"threads {set_threads(args.threads)}, {allocator()}, torch {torch.__version__}")
    names = {"loss": ("own", "torch"), "dropout": ("fast", "torch")}[args.knob]
    with tempfile.TemporaryDirectory() as tmp:
        for shape in args.shapes.split(","):
            setups = {}
            if args.knob == "dropout":
                setups = {n: build(shape, Path(tmp), n == "fast") for n in names}
            else:
                one = build(shape, Path(tmp), True)
                setups = {n: one for n in names}
            times = {n: [] for n in names}
            peaks = {n: [] for n in names}
            i = 0
            for r in range(args.rounds + 1):  # round 0 warms up
                for n in (names if r % 2 == 0 else names[::-1]):
                    loss.BACKEND = n if args.knob == "loss" else "own"
                    step, blocks, batches = setups[n]
                    reset_hwm()
                    for _ in range(args.steps):
                        t = time.perf_counter()
                        step(blocks, batches[i % len(batches)])
                        i += 1
                        if r:
                            times[n].append(time.perf_counter() - t)
                    if r:
                        peaks[n].append(vm_hwm())
                    if args.verbose:
                        print(f"  round {r} {n}: {statistics.mean(times[n][-args.steps:]) if r else 0:.3f} s/step",
                              flush=True)
            a, b = names
            ma, mb = statistics.median(times[a]), statistics.median(times[b])
            print(f"{shape}: step s median {a} {ma:.3f} / {b} {mb:.3f} ({b} {mb / ma - 1:+.1%}); "
                  f"peak RSS {a} {max(peaks[a]) / 2**30:.2f} G / {b} {max(peaks[b]) / 2**30:.2f} G "
                  f"({max(peaks[b]) / max(peaks[a]) - 1:+.1%}); steps {len(times[a])} each", flush=True)


if __name__ == "__main__":
    main()
