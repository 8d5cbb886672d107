"""`gpt2tune bench`: gpt2tune's training and sampling paths vs the article's, measured side by side in one run."""

from __future__ import annotations

import concurrent.futures
import multiprocessing
import random
import resource
import statistics
import tempfile
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import torch

from gpt2tune.config import ARTICLE_KEYWORDS, CORPUS_MAX_TOKENS, CORPUS_MEAN_TOKENS, BenchConfig, TrainConfig
from gpt2tune.hardware import autocast_dtype, choose_device, cpu_has_bf16, grad_scaler, matmul_peak, precision_for
from gpt2tune.hardware import sync as _sync
from gpt2tune.process import allocator, imports_done
from gpt2tune.threads import set_threads, use_threads


def synthetic_lengths(n: int, seed: int) -> list[int]:
    """Sentence lengths (tokens, without <sos>/<eos>) shaped like the Japan corpus: mean ~18.6, max 87."""
    rng = random.Random(seed)
    lengths = [min(CORPUS_MAX_TOKENS, max(3, round(rng.gammavariate(4.0, CORPUS_MEAN_TOKENS / 4.0))))
               for _ in range(n)]
    lengths[rng.randrange(n)] = CORPUS_MAX_TOKENS  # the corpus's longest sentence sets the article's padding
    return lengths


def corpus_examples(cfg: BenchConfig, tokenizer) -> list[list[int]]:
    """`<sos> s <eos>` token ids: from --data, or random word ids with the corpus's length distribution."""
    from gpt2tune.data import blocks as data_blocks
    from gpt2tune.data import read
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    if cfg.data:
        sentences = read.read_sentences(cfg.data)[: cfg.sentences]
        return data_blocks.encode(tokenizer, sentences, bos, eos, cfg.block_size)
    rng = random.Random(cfg.seed + 1)
    words = 50257  # GPT-2's own vocabulary, no special tokens
    return [[bos] + [rng.randrange(words) for _ in range(n)] + [eos] for n in synthetic_lengths(cfg.sentences, cfg.seed)]


def flops_per_token(model, context: int) -> tuple[int, float]:
    """(N, FLOPs per token): N = parameters that do work per token (all but the position/token lookups, with the
    LM head's matmul counted once), FLOPs = 6N + 12·layers·width·context (attention scores and mixing)."""
    from gpt2tune.model.loss import unwrap

    inner = unwrap(model)
    total = sum(p.numel() for p in inner.parameters())
    head = inner.get_output_embeddings().weight
    inp = inner.get_input_embeddings().weight
    lookups = 0 if head is inp else inp.numel()  # a tied table does work as the head; an untied input one doesn't
    for name, p in inner.named_parameters():
        if name.endswith(("wpe.weight", "position_embeddings.weight")):
            lookups += p.numel()
    n = total - lookups
    cfg = inner.config
    layers = getattr(cfg, "num_hidden_layers", None) or cfg.n_layer
    width = getattr(cfg, "hidden_size", None) or cfg.n_embd
    return n, 6.0 * n + 12.0 * layers * width * context


def _device() -> str:
    return choose_device("auto")


def _peak_memory(device: str) -> int:
    if device == "cuda":
        return torch.cuda.max_memory_allocated()
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def _setup(cfg: BenchConfig) -> None:
    set_threads(cfg.threads)
    from gpt2tune.model.load import quiet_transformers

    quiet_transformers()


def _time_steps(step, n_steps: int, device: str) -> tuple[list[float], list[int]]:
    """One warm-up step, then n_steps timed ones: (seconds per step, useful tokens per step)."""
    step(0)
    times, tokens = [], []
    for i in range(1, n_steps + 1):
        _sync(device)
        t = time.perf_counter()
        n = step(i)
        _sync(device)
        times.append(time.perf_counter() - t)
        tokens.append(n)
    return times, tokens


def run_gpt2tune(cfg: BenchConfig, model_dir: str, compiled: bool = False,
                 checkpointing: bool = False) -> dict[str, Any]:
    """gpt2tune's loop: the very step `train` runs (scoring.TrainStep) on packed blocks, in train's step order."""
    _setup(cfg)
    from accelerate import Accelerator

    from gpt2tune.data import blocks as data_blocks
    from gpt2tune.model import load as modeling
    from gpt2tune.train import adapt as tuning
    from gpt2tune.train import step as scoring

    device = _device()
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    tcfg = TrainConfig(data="bench", model=model_dir, compile=compiled, gradient_checkpointing=checkpointing,
                       batch_size=cfg.batch_size, block_size=cfg.block_size, precision=cfg.precision,
                       max_steps=cfg.steps + 1, seed=cfg.seed)
    accelerator = Accelerator(cpu=device == "cpu", mixed_precision="no")
    model, tokenizer = modeling.load(model_dir, tcfg.special_tokens, tcfg.dropout)
    model = tuning.prepare_for_training(model, tcfg)
    blocks = data_blocks.pack(corpus_examples(cfg, tokenizer), tcfg.block_size, tokenizer.pad_token_id)
    optimizer = scoring.make_optimizer(model, tcfg.lr, tcfg.weight_decay)
    scoring.allocate_state(optimizer)  # as train does
    model, optimizer = accelerator.prepare(model, optimizer)
    dtype = autocast_dtype(tcfg.precision, accelerator.device)
    train_step = scoring.TrainStep(model, optimizer, scoring.make_scheduler(optimizer, tcfg.schedule, tcfg.warmup,
                                                                           tcfg.max_steps),
                                   accelerator, tcfg.batch_size, tcfg.clip, dtype,
                                   grad_scaler(dtype, device))
    model.train()
    epochs = -(-(cfg.steps + 1) // -(-len(blocks) // tcfg.batch_size))  # enough epochs for the warm-up + timed steps
    schedule = [b for e in range(epochs) for b in scoring.step_batches(len(blocks), tcfg.batch_size, tcfg.seed, e)]

    def step(i: int) -> int:
        return train_step(blocks, schedule[i]).useful_tokens

    times, tokens = _time_steps(step, cfg.steps, device)
    n_params, fpt = flops_per_token(model, tcfg.block_size)
    loop = "gpt2tune" + ("+compile" if compiled else "") + ("+ckpt" if checkpointing else "")
    return {"loop": loop, "precision": scoring.precision_name(dtype),
            "tokens_per_step": statistics.mean(tokens), "positions_per_step": tcfg.batch_size * tcfg.block_size,
            "pad_fraction": round(1 - blocks.useful_fraction(), 4), "step_s": times,
            "useful_tokens_per_s": sum(tokens) / sum(times), "n_params": n_params, "flops_per_token": fpt,
            "peak_memory_bytes": _peak_memory(device)}


def run_article(cfg: BenchConfig, model_dir: str) -> dict[str, Any]:
    """The article's loop: `<sos> s <eos>` padded to the corpus's longest, labels = input ids (pads included),
    plain Adam lr 5e-4, fp32, batch 32, loss from the model's own labels path."""
    _setup(cfg)
    from gpt2tune.model import load as modeling

    device = _device()
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    model, tokenizer = modeling.load(model_dir)
    model.to(device).train()
    examples = corpus_examples(cfg, tokenizer)
    width = max(len(x) for x in examples)
    pad = tokenizer.pad_token_id
    ids = torch.tensor([x + [pad] * (width - len(x)) for x in examples])
    mask = (torch.arange(width)[None, :] < torch.tensor([len(x) for x in examples])[:, None]).long()
    optimizer = torch.optim.Adam(model.parameters(), lr=5e-4)
    rng = torch.Generator().manual_seed(cfg.seed)
    order = torch.randperm(len(examples), generator=rng)
    bs = cfg.article_batch

    def step(i: int) -> int:
        idx = order[(i * bs) % (len(order) - bs + 1):][:bs]
        x, m = ids[idx].to(device), mask[idx].to(device)
        loss = model(input_ids=x, attention_mask=m, labels=x).loss
        loss.backward()
        optimizer.step()
        model.zero_grad()
        return int(m.sum())

    times, tokens = _time_steps(step, cfg.steps, device)
    n_params, fpt = flops_per_token(model, width)
    return {"loop": "article", "precision": "fp32", "tokens_per_step": statistics.mean(tokens),
            "positions_per_step": bs * width, "pad_fraction": round(1 - float(mask.float().mean()), 4),
            "step_s": times, "useful_tokens_per_s": sum(tokens) / sum(times), "n_params": n_params,
            "flops_per_token": fpt, "peak_memory_bytes": _peak_memory(device)}


def run_generation(cfg: BenchConfig, model_dir: str) -> dict[str, Any]:
    """Keyword samples: gpt2tune's one batched, left-padded, KV-cached call vs one generate() per keyword."""
    _setup(cfg)
    from gpt2tune.config import SamplingConfig
    from gpt2tune.model import load as modeling
    from gpt2tune.model.sample import prompt_ids, sample

    device = _device()
    model, tokenizer = modeling.load(model_dir)
    model.to(device).eval()
    keywords = list(ARTICLE_KEYWORDS)
    scfg = SamplingConfig(n=cfg.samples, max_new_tokens=cfg.max_new_tokens, seed=cfg.seed)

    def ours() -> int:
        return len(sample(model, tokenizer, keywords, scfg))

    @torch.no_grad()
    def article() -> int:
        torch.manual_seed(cfg.seed)
        made = 0
        for kw in keywords:
            x = torch.tensor([prompt_ids(tokenizer, kw)], device=device)
            out = model.generate(x, attention_mask=torch.ones_like(x), do_sample=True, top_k=30, top_p=0.9,
                                 max_new_tokens=cfg.max_new_tokens, num_return_sequences=cfg.samples,
                                 pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
            made += out.shape[0]
        return made

    result = {}
    for name, fn in (("article", article), ("gpt2tune", ours)):
        fn()  # warm-up
        _sync(device)
        t = time.perf_counter()
        n = fn()
        _sync(device)
        result[name] = n / (time.perf_counter() - t)
    return {"samples": len(keywords) * cfg.samples, "article_samples_per_s": result["article"],
            "gpt2tune_samples_per_s": result["gpt2tune"], "ratio": result["gpt2tune"] / result["article"]}


def run_peaks(cfg: BenchConfig) -> dict[str, float | None]:
    """Measured matmul peaks (FLOP/s) in fp32 and, where the hardware computes it natively, bf16 (None elsewhere:
    emulated bf16 runs at ~1/50 of fp32, and a 2048-wide matmul would take a minute)."""
    _setup(cfg)
    device = _device()
    native = precision_for("auto", device) == "bf16"
    return {"bf16": matmul_peak(torch.bfloat16, device) if native else None,
            "fp32": matmul_peak(torch.float32, device)}


def _call(cfg: BenchConfig, fn, *args):
    """Run fn(cfg, *args) in a fresh process (own peak memory, clean allocator) unless cfg.isolate is off."""
    if not cfg.isolate:
        return fn(cfg, *args)
    ctx = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(max_workers=1, mp_context=ctx) as pool:
        return pool.submit(fn, cfg, *args).result()


def run(cfg: BenchConfig, progress=print) -> dict[str, Any]:
    """Measure every shape; returns a JSON-ready dict."""
    from gpt2tune.config import SHAPES
    from gpt2tune.data import read
    from gpt2tune.model.builtin import make_gpt2
    from gpt2tune.model.load import quiet_transformers

    imports_done()
    cfg.validate()
    if cfg.data:
        read.read_sentences(cfg.data)  # a bad --data (missing, a FIFO, not text) fails before any measurement
    quiet_transformers()  # no "Writing model shards" bars from make_gpt2
    device = _device()
    cfg = replace(cfg, threads=use_threads(cfg.threads).threads)  # decided once: every loop gets the same threads
    result: dict[str, Any] = {"config": asdict(cfg), "device": _describe_device(device), "threads": cfg.threads,
                              "allocator": allocator(), "torch": torch.__version__, "shapes": []}
    progress("measuring matmul peaks ...")
    peaks = _call(cfg, run_peaks)
    result["peak_flops"] = peaks
    with tempfile.TemporaryDirectory(prefix="gpt2tune-bench-") as tmp:
        for shape in cfg.shapes:
            model_dir = str(make_gpt2(Path(tmp) / shape, shape, seed=cfg.seed))
            row: dict[str, Any] = {"shape": shape, "layers_heads_width": SHAPES[shape], "train": []}
            for name, fn, args in [("article", run_article, ()), ("gpt2tune", run_gpt2tune, ())] + (
                    [("gpt2tune+compile", run_gpt2tune, (True,))] if cfg.compile else []) + (
                    [("gpt2tune+ckpt", run_gpt2tune, (False, True))] if cfg.gradient_checkpointing else []):
                progress(f"{shape}: training, {name} loop ...")
                r = _call(cfg, fn, model_dir, *args)
                peak = peaks["bf16" if r["precision"] == "bf16" else "fp32"] or peaks["fp32"]
                achieved = r["flops_per_token"] * r["useful_tokens_per_s"]
                r.update(achieved_flops=achieved, mfu=achieved / peak,
                         mfu_of_bf16_peak=achieved / peaks["bf16"] if peaks["bf16"] else None)
                row["train"].append(r)
            base = row["train"][0]["useful_tokens_per_s"]
            for r in row["train"]:
                r["ratio"] = r["useful_tokens_per_s"] / base
            if cfg.generation:
                progress(f"{shape}: keyword samples ...")
                row["generation"] = _call(cfg, run_generation, model_dir)
            result["shapes"].append(row)
            _rmtree(Path(model_dir))
    return result


def _rmtree(p: Path) -> None:
    import shutil

    shutil.rmtree(p, ignore_errors=True)


def _describe_device(device: str) -> str:
    if device == "cuda":
        return torch.cuda.get_device_name()
    import platform

    name = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    flags = ""
    if torch.backends.mkldnn.is_available():
        flags = " (bf16 matmul)" if cpu_has_bf16() else ""
    import os

    return f"{name}, {os.cpu_count()} logical CPUs{flags}"


def format_table(result: dict[str, Any]) -> str:
    """The result as a readable text table."""
    peaks = result["peak_flops"]
    lines = [f"device: {result['device']} | torch {result['torch']} | {result['threads']} threads | "
             f"{result.get('allocator', 'glibc malloc')}",
             "measured matmul peak: bf16 " + (f"{peaks['bf16'] / 1e9:,.1f} GFLOP/s" if peaks["bf16"] else
                                              "not native here (not measured)") +
             f", fp32 {peaks['fp32'] / 1e9:,.1f} GFLOP/s",
             "",
             f"{'shape':<12} {'loop':<17} {'prec':<5} {'pad':>5} {'useful tok/s':>13} {'x article':>10} "
             f"{'MFU':>6} {'MFU/bf16pk':>10} {'s/step':>7} {'peak mem':>9}"]
    for row in result["shapes"]:
        for r in row["train"]:
            lines.append(
                f"{row['shape']:<12} {r['loop']:<17} {r['precision']:<5} {r['pad_fraction']:>5.0%} "
                f"{r['useful_tokens_per_s']:>13,.1f} {r['ratio']:>9.2f}x {r['mfu']:>6.1%} "
                f"{format(r['mfu_of_bf16_peak'], '>10.1%') if r['mfu_of_bf16_peak'] is not None else '-':>10} "
                f"{statistics.mean(r['step_s']):>7.2f} "
                f"{r['peak_memory_bytes'] / 2**30:>7.2f} G")
    gens = [row for row in result["shapes"] if "generation" in row]
    if gens:
        lines += ["", f"{'shape':<12} {'keyword samples/s: article':>27} {'gpt2tune':>9} {'x article':>10}"]
        for row in gens:
            g = row["generation"]
            lines.append(f"{row['shape']:<12} {g['article_samples_per_s']:>27.2f} "
                         f"{g['gpt2tune_samples_per_s']:>9.2f} {g['ratio']:>9.2f}x")
    lines += ["", "useful tok/s counts real (non-pad) tokens; MFU = (6N + 12·L·d·T) x tok/s / measured peak of the "
              "loop's precision; peak mem (GiB) = max RSS (CPU) or max allocated (GPU) of the loop's own process"]
    return "\n".join(lines)
