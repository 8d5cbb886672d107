"""The fine-tuning loop: packed blocks, masked loss, Accelerate, evaluation + samples, checkpoints, early stop."""

from __future__ import annotations

import contextlib
import json
import math
import signal
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from accelerate.utils import gather_object, set_seed
from tqdm.auto import tqdm
from transformers import get_scheduler

from . import checkpoint, data, model_files, modeling, rundir
from .config import SamplingConfig, TrainConfig, write_config
from .errors import Interrupted, UserError
from .hardware import resolve_precision, use_threads
from .loss import causal_lm_loss, supports_fused
from .sampling import sample

SCHEDULES = {"cosine": "cosine", "linear": "linear", "constant": "constant_with_warmup"}


@dataclass
class RunResult:
    """What a finished run leaves behind."""

    out: Path
    best_val_loss: float
    steps: int
    stopped: str  # done | early_stop | max_steps | max_minutes
    metrics: list[dict[str, Any]] = field(default_factory=list)

    def _repr_html_(self) -> str:
        """How a notebook shows a run: its summary, base vs tuned, loss plot and report."""
        from .report import notebook_html

        return notebook_html(self.out)


def block_loss(model, b: dict[str, torch.Tensor]) -> torch.Tensor:
    """Summed next-token loss over the tokens that count (padding and example starts excluded)."""
    if supports_fused(model):  # same value, without materialising full-vocabulary logits
        return causal_lm_loss(model, b["input_ids"], b["attention_mask"], b["position_ids"], b["targets"])
    logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"],
                   position_ids=b["position_ids"]).logits
    return F.cross_entropy(logits.flatten(0, 1).float(), b["targets"].flatten(),
                           ignore_index=data.IGNORE, reduction="sum")


@torch.no_grad()
def evaluate_loss(model, blocks: data.Blocks, batch_size: int, accelerator: Accelerator) -> tuple[float, int]:
    """Mean loss per target token over all blocks (sharded over processes), and the token count."""
    was_training = model.training
    model.eval()
    total = torch.zeros(2, dtype=torch.float64, device=accelerator.device)
    mine = list(range(accelerator.process_index, len(blocks), accelerator.num_processes))
    for i in range(0, len(mine), batch_size):
        b = {k: v.to(accelerator.device) for k, v in data.batch(blocks, mine[i:i + batch_size]).items()}
        with accelerator.autocast():
            total[0] += block_loss(model, b).double()
        total[1] += (b["targets"] != data.IGNORE).sum()
    total = accelerator.reduce(total, "sum") if accelerator.num_processes > 1 else total
    model.train(was_training)
    return (total[0] / total[1]).item(), int(total[1].item())


def _param_groups(model, weight_decay: float) -> list[dict[str, Any]]:
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 and "ln" not in name and "norm" not in name else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def make_optimizer(model, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW over the trainable parameters; the fused kernel (CPU and CUDA) is ~10x faster than the default loop."""
    params = [p for p in model.parameters() if p.requires_grad]
    fused = all(p.device.type in ("cpu", "cuda") and p.is_floating_point() for p in params)
    return torch.optim.AdamW(_param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=(0.9, 0.999),
                             fused=fused or None)


def _append_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    with path.open("a", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def _truncate_jsonl(path: Path, keep: int) -> None:
    """Keep the first `keep` lines (drops what a killed run wrote after its last checkpoint)."""
    if path.exists():
        lines = path.read_text(encoding="utf-8").splitlines(keepends=True)[:keep]
        path.write_text("".join(lines), encoding="utf-8")


class _StopRequest:
    """Ctrl-C asks the loop to stop after the current step, save, and exit resumably; a second Ctrl-C is immediate."""

    def __init__(self) -> None:
        self.requested = False
        self._previous = None

    def __enter__(self) -> "_StopRequest":
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        self.requested = True
        signal.signal(signal.SIGINT, self._previous or signal.default_int_handler)

    def __exit__(self, *exc) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


def parse_every(value: str | None) -> tuple[str, float] | None:
    """'200' -> ('steps', 200); '10m' -> ('minutes', 10); None -> None."""
    v = str(value).strip().lower() if value is not None else "none"
    if v in ("none", "off", ""):
        return None
    try:
        if v.endswith("m"):
            n, unit = float(v[:-1]), "minutes"
        else:
            n, unit = int(v), "steps"
    except ValueError:
        raise UserError(f"save-every must be a number of steps (200) or minutes (10m), got {value!r}") from None
    if n <= 0:
        raise UserError(f"save-every must be positive, got {value!r}")
    return unit, n


def _load_run_model(cfg: TrainConfig, out: Path, resuming: bool):
    if not resuming:
        model, tokenizer = modeling.load(cfg.model, cfg.special_tokens, cfg.dropout)
        return modeling.prepare_for_training(model, cfg, None), tokenizer
    try:
        # a LoRA run resumes from the base model plus its saved adapter (last/ holds merged weights)
        model, tokenizer = modeling.load(cfg.model if cfg.lora else str(out / "last"), cfg.special_tokens,
                                         cfg.dropout)
        return modeling.prepare_for_training(model, cfg, out / "last"), tokenizer
    except model_files.ModelFileError as e:  # found by the loading checks: the message names the bad file
        raise checkpoint.damaged(out / "last", out, e) from None
    except UserError:
        raise
    except Exception as e:  # a truncated safetensors file or config shows up as many exception types
        raise checkpoint.damaged(out / "last", out, e) from None


def train(cfg: TrainConfig) -> RunResult:
    """Fine-tune cfg.model on cfg.data into the run directory cfg.out."""
    cfg.validate()
    save_every = parse_every(cfg.save_every)
    out = Path(cfg.out)
    # read and split first: bad data fails before anything is written
    split = data.prepare_split(cfg)
    cpu = not torch.cuda.is_available()
    # Accelerate keeps one state per process; another train() in the same process (a notebook, the tests)
    # may ask for another precision, so start from a clean state (the process group, if any, stays)
    AcceleratorState._reset_state(reset_partial_state=False)
    accelerator = Accelerator(cpu=cpu, mixed_precision=resolve_precision(cfg.precision, cpu))
    main = accelerator.is_main_process
    run_lock = rundir.claim(out, cfg.resume, cfg.overwrite, cfg.model) if main else None
    accelerator.wait_for_everyone()
    state = checkpoint.load_state(out / "last") if cfg.resume else None
    # a resumed run keeps the thread count it had: a different count changes float summation order
    threads = use_threads(cfg.threads or (state or {}).get("threads"), announce=main).threads
    set_seed(cfg.seed)

    model, tokenizer = _load_run_model(cfg, out, state is not None)
    limit = getattr(model.config, "n_positions", None) or getattr(model.config, "max_position_embeddings", None)
    if limit and cfg.block_size > limit:
        raise UserError(f"block-size {cfg.block_size} is above the model's context of {limit} tokens")
    if main and not state:
        run_lock = rundir.start(out, run_lock)  # only now: a bad option or model above leaves nothing behind
    if main:  # the main process tokenizes into the cache; the others then map the same files
        train_blocks, val_blocks = data.prepare_blocks(split, tokenizer, cfg, out)
    accelerator.wait_for_everyone()
    if not main:
        train_blocks, val_blocks = data.prepare_blocks(split, tokenizer, cfg)
    pad = tokenizer.pad_token_id
    counts = train_blocks.target_counts().tolist()
    useful = train_blocks.useful_counts().tolist()
    world, bs = accelerator.num_processes, cfg.batch_size
    blocks_per_step = bs * cfg.grad_accum * world
    steps_per_epoch = math.ceil(len(train_blocks) / blocks_per_step)
    total_steps = cfg.epochs * steps_per_epoch
    if cfg.max_steps:
        total_steps = min(total_steps, cfg.max_steps)

    optimizer = make_optimizer(model, cfg)
    scheduler = get_scheduler(SCHEDULES[cfg.schedule], optimizer, num_warmup_steps=int(cfg.warmup * total_steps),
                              num_training_steps=total_steps)
    model, optimizer = accelerator.prepare(model, optimizer)
    raw_model = accelerator.unwrap_model(model)

    if state:
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        checkpoint.set_rng_state(state["rng"][min(accelerator.process_index, len(state["rng"]) - 1)])
        if main:
            _truncate_jsonl(out / "metrics.jsonl", state["metrics_lines"])
            _truncate_jsonl(out / "samples.jsonl", state["samples_lines"])
        s = state["loop"]
        accelerator.print(f"resuming {out} at step {s['step']} (epoch {s['epoch'] + 1}, batch {s['batch']})")
    else:
        if main:
            # the thread count chosen and the data file as an absolute path: the run says how it ran, and
            # compare, report and --resume find the data from any directory
            write_config(replace(cfg, threads=threads, data=str(Path(cfg.data).resolve())), out / "config.yaml")
            for name in ("metrics.jsonl", "samples.jsonl"):
                (out / name).write_text("", encoding="utf-8")
        s = {"step": 0, "epoch": 0, "batch": 0, "best_val": math.inf, "bad_evals": 0, "train_time": 0.0,
             "loss_sum": [0.0], "loss_tokens": 0, "window_tokens": 0, "window_time": 0.0,
             "metrics_lines": 0, "samples_lines": 0, "stopped": None}
    accelerator.print(
        f"{data.split_line(split.info)} -> {len(train_blocks):,} blocks of "
        f"{cfg.block_size} tokens ({train_blocks.useful_fraction():.1%} useful, no padding computed); "
        f"{steps_per_epoch:,} steps/epoch, {total_steps:,} steps in all, on {world} process(es), "
        f"precision {accelerator.mixed_precision}")

    sampling = SamplingConfig(n=cfg.samples, seed=cfg.seed, precision=cfg.precision) if cfg.samples else None
    loss_sum = torch.tensor(s["loss_sum"][min(accelerator.process_index, len(s["loss_sum"]) - 1)],
                            dtype=torch.float64, device=accelerator.device)
    # loss finiteness is checked every step on CPU (free) and every few steps on a GPU (a host sync)
    check_every = 1 if accelerator.device.type == "cpu" else 10
    pending: list[tuple[int, torch.Tensor]] = []
    saved_step = s["step"]
    last_save_time = time.perf_counter()

    def check_finite() -> None:
        """Stop with a clear message if a step since the last check produced a NaN/inf loss."""
        if not pending:
            return
        values = torch.stack([v for _, v in pending]).tolist()
        bad = next((step for (step, _), v in zip(pending, values) if not math.isfinite(v)), None)
        pending.clear()
        if bad is not None:
            raise UserError(f"training diverged: the loss became NaN/inf at step {bad}; nothing after it was "
                            f"saved, the last good checkpoint is {out / 'last'} (step {saved_step}); "
                            "try a lower --lr or --precision fp32")

    def save(improved: bool) -> None:
        nonlocal saved_step, last_save_time
        check_finite()
        accelerator.wait_for_everyone()
        rngs, sums = [checkpoint.rng_state()], [loss_sum.item()]
        if world > 1:
            rngs, sums = gather_object(rngs), gather_object(sums)
        if main:
            train_state = {"loop": {**s, "loss_sum": sums}, "optimizer": optimizer.state_dict(),
                           "scheduler": scheduler.state_dict(), "rng": rngs, "threads": threads,
                           "metrics_lines": s["metrics_lines"], "samples_lines": s["samples_lines"]}

            def write_last(d: Path) -> None:
                modeling.save(raw_model, tokenizer, d)
                torch.save(train_state, d / checkpoint.STATE_FILE)

            checkpoint.save_checkpoint(out, write_last, improved, saved_step)
        saved_step, last_save_time = s["step"], time.perf_counter()
        accelerator.wait_for_everyone()

    def evaluate_and_save(epoch_label: float, event: str) -> bool:
        """Val loss, samples, metrics line, checkpoints; True when early stopping fires."""
        check_finite()
        train_loss_total = accelerator.reduce(loss_sum.clone(), "sum") if world > 1 else loss_sum
        train_loss = (train_loss_total / s["loss_tokens"]).item() if s["loss_tokens"] else None
        val_loss, _ = evaluate_loss(model, val_blocks, bs, accelerator)
        improved = val_loss < s["best_val"]
        if improved:
            s["best_val"], s["bad_evals"] = val_loss, 0
        else:
            s["bad_evals"] += 1
        row = {"epoch": epoch_label, "step": s["step"],
               "train_loss": None if train_loss is None else round(train_loss, 5),
               "val_loss": round(val_loss, 5), "val_ppl": round(math.exp(min(val_loss, 50)), 4),
               "tokens_per_s": round(s["window_tokens"] / max(s["window_time"], 1e-9), 1),
               "elapsed_s": round(s["train_time"], 2), "lr": scheduler.get_last_lr()[0],
               "useful_fraction": round(train_blocks.useful_fraction(), 4), "best": improved, "event": event}
        samples = sample(raw_model, tokenizer, cfg.keywords, sampling) if (main and sampling) else []
        if main:
            _append_jsonl(out / "metrics.jsonl", [row])
            _append_jsonl(out / "samples.jsonl", [{"epoch": epoch_label, "step": s["step"], "keyword": x.prompt,
                                                   "text": x.text, "ended": x.ended} for x in samples])
            s["metrics_lines"] += 1
            s["samples_lines"] += len(samples)
            _print_eval(row, samples)
        early = cfg.patience is not None and s["bad_evals"] >= cfg.patience
        if early and not s["stopped"]:
            s["stopped"] = "early_stop"  # recorded in the checkpoint, so --resume knows the run is over
        loss_sum.zero_()
        s.update(loss_tokens=0, window_tokens=0, window_time=0.0)
        save(improved)
        return early

    stopped = "done"
    done = s["step"] >= total_steps
    if s["stopped"] == "early_stop" or done:
        accelerator.print(f"{out} already finished ({s['stopped'] or 'done'} at step {s['step']}); nothing to "
                          "resume (raise --epochs or --max-steps to train further)")
        done = True
    s["stopped"] = None
    with _StopRequest() as stop:
        if not state:
            evaluate_and_save(0, "start")  # the base model's val loss and samples: the "before" of the run
        model.train()
        while not done and s["epoch"] < cfg.epochs:
            order = data.epoch_order(len(train_blocks), cfg.seed, s["epoch"])
            steps = [order[i:i + blocks_per_step] for i in range(0, len(order), blocks_per_step)]
            bar = tqdm(total=len(steps), initial=s["batch"], desc=f"epoch {s['epoch'] + 1}/{cfg.epochs}",
                       disable=True if not main else None, leave=False, dynamic_ncols=True)
            while s["batch"] < len(steps):
                t0 = time.perf_counter()
                step_blocks = steps[s["batch"]]
                n_tokens = sum(counts[i] for i in step_blocks)
                micro = [step_blocks[i:i + bs * world] for i in range(0, len(step_blocks), bs * world)]
                step_loss = torch.zeros((), dtype=torch.float64, device=accelerator.device)
                for m, global_micro in enumerate(micro):
                    mine = global_micro[accelerator.process_index * bs:(accelerator.process_index + 1) * bs]
                    b = data.batch(train_blocks, mine) if mine else _empty_batch(cfg.block_size, pad)
                    b = {k: v.to(accelerator.device) for k, v in b.items()}
                    sync = m == len(micro) - 1
                    ctx = accelerator.no_sync(model) if (not sync and world > 1) else contextlib.nullcontext()
                    with ctx:
                        with accelerator.autocast():
                            loss = block_loss(model, b)
                        # DDP averages gradients over processes; scale so the result is the mean over all tokens
                        accelerator.backward(loss * (world / n_tokens))
                        step_loss += loss.detach().double()
                if cfg.clip:
                    accelerator.clip_grad_norm_(model.parameters(), cfg.clip)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                loss_sum += step_loss
                s["step"] += 1
                s["batch"] += 1
                s["loss_tokens"] += n_tokens
                s["window_tokens"] += sum(useful[i] for i in step_blocks)
                dt = time.perf_counter() - t0
                s["train_time"] += dt
                s["window_time"] += dt
                pending.append((s["step"], step_loss))
                if len(pending) >= check_every:
                    check_finite()
                bar.update(1)
                if main and s["step"] % 10 == 0:
                    bar.set_postfix(loss=f"{loss_sum.item() / max(s['loss_tokens'], 1):.3f}")
                if s["step"] >= total_steps:
                    stopped, done = ("max_steps" if cfg.max_steps and s["step"] >= cfg.max_steps else "done"), True
                elif cfg.max_minutes and s["train_time"] >= cfg.max_minutes * 60:
                    stopped, done = "max_minutes", True
                end_of_epoch = s["batch"] == len(steps)
                if end_of_epoch:
                    s["epoch"] += 1
                    s["batch"] = 0
                if end_of_epoch or done or (cfg.eval_every and s["step"] % cfg.eval_every == 0):
                    label = s["epoch"] if end_of_epoch else round(s["epoch"] + s["batch"] / len(steps), 3)
                    event = "epoch" if end_of_epoch else ("final" if done else "eval")
                    if done:
                        s["stopped"] = stopped
                    bar.clear()
                    if evaluate_and_save(label, event) and not done:
                        stopped, done = "early_stop", True
                        accelerator.print(f"early stop: val loss has not improved for {cfg.patience} "
                                          f"evaluation(s); best {s['best_val']:.4f} is in {out / 'best'}")
                elif save_every and (
                        (save_every[0] == "steps" and s["step"] % save_every[1] == 0)
                        or (save_every[0] == "minutes" and time.perf_counter() - last_save_time >= save_every[1] * 60)):
                    save(False)
                if _stop_requested(stop, accelerator) and not done:
                    bar.close()
                    if saved_step != s["step"]:
                        save(False)
                    raise Interrupted(f"interrupted at step {s['step']}; checkpoint saved in {out / 'last'}; "
                                      f"continue with: gpt2tune train --out {out} --resume")
                if done or end_of_epoch:
                    break
            bar.close()

    if main:
        accelerator.print(f"done ({stopped}) after {s['step']} steps, {s['train_time']:.0f} s of training; best "
                          f"val loss {s['best_val']:.4f} (ppl {math.exp(min(s['best_val'], 50)):.2f}) in {out / 'best'}")
        from .report import write_report

        accelerator.print(f"report: {write_report(out)}")
    metrics = [json.loads(x) for x in (out / "metrics.jsonl").read_text(encoding="utf-8").splitlines()] if main else []
    if run_lock:
        run_lock.release()
    return RunResult(out, s["best_val"], s["step"], stopped, metrics)


def _stop_requested(stop: _StopRequest, accelerator: Accelerator) -> bool:
    """Whether any process got Ctrl-C (all processes must agree, or their collective saves would hang)."""
    if accelerator.num_processes == 1:
        return stop.requested
    flag = torch.tensor([1.0 if stop.requested else 0.0], device=accelerator.device)
    return bool(accelerator.reduce(flag, "sum").item() > 0)


def _empty_batch(block_size: int, pad_id: int) -> dict[str, torch.Tensor]:
    """An all-padding block for a process that has no block in the last micro-batch (adds no loss)."""
    b = data.Blocks(torch.full((1, block_size), pad_id), torch.full((1, block_size), data.IGNORE),
                    torch.zeros((1, block_size), dtype=torch.long), torch.full((1, block_size), -1, dtype=torch.int32), 0)
    return data.batch(b, [0])


def _print_eval(row: dict[str, Any], samples) -> None:
    train_loss = "-" if row["train_loss"] is None else f"{row['train_loss']:.4f}"
    tqdm.write(f"epoch {row['epoch']} | step {row['step']} | train loss {train_loss} | "
               f"val loss {row['val_loss']:.4f} | val ppl {row['val_ppl']:.2f} | "
               f"{row['elapsed_s']:.1f} s | {row['tokens_per_s']:,.0f} tok/s" + ("  *best*" if row["best"] else ""))
    for x in samples:
        tqdm.write(f"  {x.prompt!r:>16}: {' '.join(x.text.split())}")  # one line per sample, even multi-line
