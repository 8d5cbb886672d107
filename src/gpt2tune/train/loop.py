"""The fine-tuning loop: prepare data -> load model -> restore -> fit, with evaluations, samples and checkpoints."""

from __future__ import annotations

import contextlib
import json
import math
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import gather_object, set_seed

from gpt2tune.config import SamplingConfig, TrainConfig, to_dict, write_config
from gpt2tune.console import StepProgress, duration, process_age, say
from gpt2tune.data import blocks as data_blocks
from gpt2tune.data import condition, keywords, read
from gpt2tune.data import prepare as data_prepare
from gpt2tune.errors import Interrupted, UserError
from gpt2tune.hardware import autocast_dtype, choose_device, grad_scaler, precision_for
from gpt2tune.model import load as modeling
from gpt2tune.model.sample import sample
from gpt2tune.process import imports_done, release_free_memory
from gpt2tune.run import card, checkpoint, resume
from gpt2tune.run import directory as rundir
from gpt2tune.run.logs import append_jsonl, print_eval, truncate_jsonl
from gpt2tune.threads import one_core_less, use_threads
from gpt2tune.train import adapt as tuning
from gpt2tune.train import budget
from gpt2tune.train import step as scoring
from gpt2tune.train import stop as stopping
from gpt2tune.train.state import LoopState, Run, RunResult
from gpt2tune.train.stop import StopRequest, parse_every
from gpt2tune.train.trackers import Trackers
from gpt2tune.train.trackers import preload as trackers_preload


def train(config: TrainConfig | None = None, **options: Any) -> RunResult:
    """Fine-tune a model on a sentence file into a run directory: pass a TrainConfig, or its fields as keyword
    arguments; with resume=True the run's saved config is used, under the options given now."""
    began = time.perf_counter()
    imports_done()  # the command line's pause of the garbage collector ends here
    cfg = resume.settle(config, options)
    parse_every(cfg.save_every)  # a bad value fails now, not at the first step
    out = Path(cfg.out)
    accelerator = accelerator_for(cfg)
    # the first line says the threads (a resumed run's config.yaml holds the count it ran with)
    threads = use_threads(cfg.threads, announce=accelerator.is_main_process).threads
    preloading = trackers_preload(cfg.report_to) if accelerator.is_main_process else None
    split = data_prepare.prepare_split(cfg, condition.training_file(cfg))  # bad data fails before anything is written
    cfg, keywords_line = choose_keywords(cfg, split)
    lock = rundir.claim(out, cfg.resume, cfg.overwrite, cfg.model, {"--data": cfg.data}) \
        if accelerator.is_main_process else None
    accelerator.wait_for_everyone()
    saved = checkpoint.load_state(out / "last") if cfg.resume else None
    state = LoopState.restore(saved) if saved else LoopState(data_sha256=read.digest(cfg.data))
    if saved:
        resume.check_data_unchanged(cfg.data, state.data_sha256, read.digest(cfg.data))
    if cfg.threads is None and state.threads and state.threads != threads:  # a run recorded before config held it
        threads = use_threads(state.threads, announce=accelerator.is_main_process).threads
    state.threads = threads
    set_seed(cfg.seed)

    model, tokenizer = tuning.load_for_training(cfg, out, resuming=saved is not None)
    if accelerator.is_main_process and not saved:
        lock = rundir.start(out, lock)  # only now: a bad option or model above leaves nothing behind
    # the main process tokenizes into the data cache (and writes val.txt, data.json); the others map its files
    blocks = data_prepare.prepare_blocks(split, tokenizer, cfg, out) if accelerator.is_main_process else None
    accelerator.wait_for_everyone()
    train_blocks, val_blocks = blocks or data_prepare.prepare_blocks(split, tokenizer, cfg)

    run = build_run(cfg, accelerator, model, tokenizer, train_blocks, val_blocks, state, saved, began)
    if saved:
        restore(run, state, saved)
    else:
        begin(run, state)
    accelerator.print(
        f"{data_prepare.split_line(split.info)} -> {len(train_blocks):,} blocks of "
        f"{cfg.block_size} tokens ({train_blocks.useful_fraction():.1%} useful, no padding computed); "
        f"{run.steps_per_epoch:,} steps/epoch, {state.total_steps:,} steps in all, on "
        f"{accelerator.num_processes} process(es), device {accelerator.device.type}, "
        f"precision {scoring.precision_name(run.step.dtype)}{' + GradScaler' if run.step.scaler else ''}, "
        f"{state.threads} thread(s); ready in {time.perf_counter() - began:.1f} s")
    if keywords_line:
        accelerator.print(keywords_line)
    if run.main and cfg.report_to:
        run.trackers = Trackers(out, cfg.report_to, to_dict(recorded(cfg, state.threads)), preloading)
        for note in run.trackers.notes:
            say(note)
    try:
        stopped = fit(run, state, fresh=saved is None)
        result = finish(run, state, stopped)
    except BaseException:
        with contextlib.suppress(Exception):  # the first error is the one to tell
            run.saved()  # a committed checkpoint is completed
        raise
    finally:
        if run.trackers is not None:
            run.trackers.close()
    if lock is not None:
        lock.release()
    return result


def accelerator_for(cfg: TrainConfig) -> Accelerator:
    """The Accelerator on the chosen device (--device, else Accelerate's own pick); autocast and the GradScaler
    are ours (mixed_precision "no"), so train, evaluate and sample compute alike; a precision the device cannot
    run fails here, before anything is written."""
    device = choose_device(cfg.device)
    precision_for(cfg.precision, device)
    accelerator = Accelerator(cpu=device == "cpu", mixed_precision="no")
    if accelerator.device.type != device:
        raise UserError(f"--device {cfg.device}: Accelerate runs on {accelerator.device.type} here; use --device "
                        f"{accelerator.device.type} (or hide the other accelerator)")
    return accelerator


def choose_keywords(cfg: TrainConfig, split) -> tuple[TrainConfig, str | None]:
    """The config with its keyword prompts settled (auto: chosen from the training sentences; article: the
    article's ten) and a line saying which; config.yaml records the list, so compare, serve and --resume reuse it."""
    if cfg.keywords not in (["auto"], ["article"]):
        return cfg, None
    sentences = split.sentences("train")
    if cfg.condition == "title":  # the sentences, not their "title: " lines
        sentences = (row.text for row in condition.read_titled(cfg.data, cfg.text_column, cfg.title_column))
    chosen = keywords.resolve(cfg.keywords, sentences)
    how = "chosen from the training sentences" if cfg.keywords == ["auto"] else "the article's"
    line = (f"keywords ({how}): {', '.join(chosen)}" if chosen else
            f"keywords: none chosen (no subject starts {keywords.MIN_SHARE:.1%} of the training sentences); "
            "no samples at evaluations (give --keywords)")
    return replace(cfg, keywords=chosen), line


def build_run(cfg: TrainConfig, accelerator: Accelerator, model, tokenizer, train_blocks: data_blocks.Blocks,
              val_blocks: data_blocks.Blocks, state: LoopState, saved: dict[str, Any] | None, began: float) -> Run:
    """Optimizer, schedule and the training step around the model, on every process."""
    optimizer = scoring.make_optimizer(model, cfg.lr, cfg.weight_decay)
    if saved is None:  # a resumed run loads its own state
        scoring.allocate_state(optimizer)
    model, optimizer = accelerator.prepare(model, optimizer)
    dtype = autocast_dtype(cfg.precision, accelerator.device)
    scaler = grad_scaler(dtype, accelerator.device)
    rank = min(accelerator.process_index, len(state.loss_sum) - 1)
    run = Run(cfg, Path(cfg.out), accelerator, scoring.TrainStep(model, optimizer, None, accelerator, cfg.batch_size,
                                                                   cfg.clip, dtype, scaler),
              accelerator.unwrap_model(model), tokenizer, train_blocks, val_blocks,
              torch.tensor(state.loss_sum[rank], dtype=torch.float64, device=accelerator.device),
              began, state.wall_time, saved_step=state.step if saved else None)
    state.total_steps = budget.planned_steps(cfg, run.steps_per_epoch, state.budget_steps)
    run.step.scheduler = scoring.make_scheduler(optimizer, cfg.schedule, cfg.warmup, state.total_steps)
    return run


def restore(run: Run, state: LoopState, saved: dict[str, Any]) -> None:
    """Put optimizer, schedule, random streams and the run's log files back where the checkpoint left them."""
    run.step.optimizer.load_state_dict(saved["optimizer"])
    run.step.scheduler.load_state_dict(saved["scheduler"])
    if run.step.scaler is not None and saved.get("scaler"):
        run.step.scaler.load_state_dict(saved["scaler"])
    checkpoint.set_rng_state(saved["rng"][min(run.accelerator.process_index, len(saved["rng"]) - 1)])
    if run.main:
        write_config(recorded(run.cfg, state.threads), run.out / "config.yaml")  # with what may have changed now
        truncate_jsonl(run.out / "metrics.jsonl", state.metrics_lines)
        truncate_jsonl(run.out / "samples.jsonl", state.samples_lines)
    run.accelerator.print(f"resuming {run.out} at step {state.step} (epoch {state.epoch + 1}, batch {state.batch})")


def recorded(cfg: TrainConfig, threads: int | None) -> TrainConfig:
    """The config a run records: the thread count chosen and the data file as an absolute path, so the run says
    how it ran, and compare, report and --resume find the data from any directory."""
    return replace(cfg, threads=threads, data=read.absolute(cfg.data), resume=False)


def begin(run: Run, state: LoopState) -> None:
    """A new run directory: its config and empty logs."""
    if run.main:
        write_config(recorded(run.cfg, state.threads), run.out / "config.yaml")
        for name in ("metrics.jsonl", "samples.jsonl"):
            (run.out / name).write_text("", encoding="utf-8")


def fit(run: Run, state: LoopState, fresh: bool) -> str:
    """Train until the planned steps, early stopping or Ctrl-C; returns why the run stopped."""
    if state.stopped == "early_stop" or state.step >= state.total_steps:
        run.accelerator.print(f"{run.out} already finished ({state.stopped or 'done'} at step {state.step}); "
                              "nothing to resume (raise --epochs or --max-steps to train further)")
        return state.stopped or "done"
    state.stopped = None
    if run.cfg.max_minutes and run.main:
        ends = time.strftime("%H:%M:%S", time.localtime(time.time() + run.cfg.max_minutes * 60 - run.wall()))
        say(f"time budget {run.cfg.max_minutes:g} min: the run ends by {ends}, the learning-rate schedule with it")
    progress = StepProgress(state.total_steps, state.step, enabled=run.main)
    try:
        with StopRequest() as stop:
            if fresh:  # the base model: the "before" of the run; nothing new to keep yet, so no checkpoint
                evaluate_and_save(run, state, 0, "start", progress, keep=False)
            run.step.model.train()
            while state.epoch < run.cfg.epochs:
                stopped = run_epoch(run, state, stop, progress)
                if stopped:
                    return stopped
    finally:
        progress.close()
    return "done"


def run_epoch(run: Run, state: LoopState, stop: StopRequest, progress: StepProgress) -> str | None:
    """The rest of the current epoch; returns why the run stopped, or None when the epoch ended normally."""
    steps = scoring.step_batches(len(run.train_blocks), run.blocks_per_step, run.cfg.seed, state.epoch)
    while state.batch < len(steps):
        run.eval_seconds += run.saved()  # the weights must not change under a checkpoint still being written
        t0 = time.perf_counter()
        result = run.step(run.train_blocks, steps[state.batch])
        record_step(run, state, result, time.perf_counter() - t0, progress)
        stopped = stop_reason(run, state)
        end_of_epoch = state.batch == len(steps)
        if end_of_epoch:
            state.epoch, state.batch = state.epoch + 1, 0
        if end_of_epoch or stopped or (run.cfg.eval_every and state.step % run.cfg.eval_every == 0):
            label = state.epoch if end_of_epoch else round(state.epoch + state.batch / len(steps), 3)
            state.stopped = stopped
            if evaluate_and_save(run, state, label, "final" if stopped and not end_of_epoch else
                                 ("epoch" if end_of_epoch else "eval"), progress) and not stopped:
                run.accelerator.print(f"early stop: val loss has not improved for {run.cfg.patience} evaluation(s); "
                                      f"best {state.best_val:.4f} is in {run.out / 'best'}")
                return "early_stop"
        elif save_due(run, state):
            save(run, state, improved=False)
        if stopping.stop_requested(stop, run.accelerator) and not stopped:
            if run.saved_step != state.step:
                save(run, state, improved=False)
            raise Interrupted(f"interrupted at step {state.step}; checkpoint saved in {run.out / 'last'}; "
                              f"continue with: gpt2tune train --out {run.out} --resume")
        if stopped or end_of_epoch:
            return stopped
    return None


def record_step(run: Run, state: LoopState, result: scoring.StepResult, seconds: float,
                progress: StepProgress) -> None:
    """Count a finished step: losses, tokens, time, the NaN check, progress, and the time budget."""
    run.loss_sum += result.loss
    state.step += 1
    state.batch += 1
    state.loss_tokens += result.target_tokens
    state.train_time += seconds
    if run.step_times:
        state.window_tokens += result.useful_tokens
        state.window_time += seconds
    else:
        run.warmup = (result.useful_tokens, seconds)
    run.pending.append((state.step, result.loss))
    # finiteness is checked every step on a CPU (free) and every few steps on a GPU (a host sync)
    if len(run.pending) >= (1 if run.accelerator.device.type == "cpu" else 10):
        check_finite(run, state)
    if not run.step_times and run.main:
        age = process_age()
        say(f"first step done {time.perf_counter() - run.began:.1f} s after train() began"
            + (f", {age:.1f} s after the process started" if age is not None else "") + f" ({seconds:.2f} s for it)")
    run.step_times.append(seconds)
    if run.cfg.max_minutes and state.budget_steps is None:
        budget.fix_steps(run, state, progress)
    loss = run.loss_sum.item() / max(state.loss_tokens, 1) if run.main else None
    progress.update(state.step, state.epoch + 1, loss, run.tokens_per_s(state))


def stop_reason(run: Run, state: LoopState) -> str | None:
    """Why the run must stop after this step, or None."""
    if state.step >= state.total_steps:
        if run.cfg.max_steps and state.step >= run.cfg.max_steps:
            return "max_steps"
        return "max_minutes" if state.budget_steps and state.step >= state.budget_steps else "done"
    if budget.over_budget(run):
        return "max_minutes"  # slower than measured: stop rather than overrun the budget
    return None


def save_due(run: Run, state: LoopState) -> bool:
    """Whether --save-every asks for a checkpoint now."""
    every = parse_every(run.cfg.save_every)
    if every is None:
        return False
    unit, n = every
    if unit == "steps":
        return state.step % n == 0
    return time.perf_counter() - run.last_save >= n * 60


def check_finite(run: Run, state: LoopState) -> None:
    """Stop with a clear message if a step since the last check produced a NaN/inf loss."""
    if not run.pending:
        return
    values = torch.stack([v for _, v in run.pending]).tolist()
    bad = next((step for (step, _), v in zip(run.pending, values) if not math.isfinite(v)), None)
    run.pending.clear()
    if bad is not None:
        kept = (f"the last good checkpoint is {run.out / 'last'} (step {run.saved_step})" if run.saved_step is not None
                else "no checkpoint was saved before it")
        raise UserError(f"training diverged: the loss became NaN/inf at step {bad}; nothing after it was saved, {kept}; "
                        "try a lower --lr or --precision fp32")


def save(run: Run, state: LoopState, improved: bool, background: bool = False) -> None:
    """Checkpoint last/ (and best/ when the val loss improved), all processes together. With `background`, a
    thread writes it: the caller then commits (or aborts) run.saving on the main process."""
    run.saved()
    check_finite(run, state)
    acc = run.accelerator
    acc.wait_for_everyone()
    rngs, sums = [checkpoint.rng_state()], [run.loss_sum.item()]
    if acc.num_processes > 1:
        rngs, sums = gather_object(rngs), gather_object(sums)
    if run.main:
        state.wall_time = run.wall()
        train_state = {"loop": {**asdict(state), "loss_sum": sums}, "optimizer": run.step.optimizer.state_dict(),
                       "scheduler": run.step.scheduler.state_dict(), "rng": rngs,
                       "scaler": run.step.scaler.state_dict() if run.step.scaler is not None else None}

        def write_last(d: Path) -> None:
            release_free_memory()  # recently used memory for the files' page cache: much faster on a VM
            modeling.save(run.raw_model, run.tokenizer, d)
            checkpoint.save_state(train_state, d)

        def write(ready=None, kept=run.saved_step) -> None:
            checkpoint.save_checkpoint(run.out, write_last, improved, kept, ready)
            card.write_cards(run.out)

        if not improved and not (run.out / "best" / "config.json").is_file():
            keep_base_as_best(run)
        if background:
            run.saving = checkpoint.Background(write)
        else:
            write()
    run.saved_step, run.last_save = state.step, time.perf_counter()
    acc.wait_for_everyone()


def keep_base_as_best(run: Run) -> None:
    """best/ holds the base model while no evaluation has beaten step 0's; the first checkpoint without a better
    model writes it: the base loaded again as training loaded it (same seed), the run's random streams untouched."""
    streams = checkpoint.rng_state()
    try:
        set_seed(run.cfg.seed)
        base, tokenizer = modeling.load(run.cfg.model, run.cfg.special_tokens, run.cfg.dropout,
                                        role="base model for best/ (no evaluation has beaten it)")
        checkpoint.save_atomic(run.out / "best", lambda d: modeling.save(base, tokenizer, d))
    finally:
        checkpoint.set_rng_state(streams)


def evaluate_and_save(run: Run, state: LoopState, label: float, event: str, progress: StepProgress,
                      keep: bool = True) -> bool:
    """Val loss, samples, a metrics line and (with `keep`) the checkpoints; True when early stopping fires."""
    check_finite(run, state)
    t0 = time.perf_counter()
    acc, cfg = run.accelerator, run.cfg
    world = acc.num_processes
    reduce = (lambda t: acc.reduce(t, "sum")) if world > 1 else None
    train_total = reduce(run.loss_sum.clone()) if reduce else run.loss_sum
    train_loss = (train_total / state.loss_tokens).item() if state.loss_tokens else None
    val_loss, _ = scoring.evaluate_loss(run.step.model, run.val_blocks, cfg.batch_size, acc.device, run.step.dtype,
                                        acc.process_index, world, reduce)
    improved = val_loss < state.best_val
    state.best_val, state.bad_evals = (val_loss, 0) if improved else (state.best_val, state.bad_evals + 1)
    row = {"epoch": label, "step": state.step, "train_loss": None if train_loss is None else round(train_loss, 5),
           "val_loss": round(val_loss, 5), "val_ppl": round(math.exp(min(val_loss, 50)), 4),
           "tokens_per_s": round(run.tokens_per_s(state), 1),
           "elapsed_s": round(state.train_time, 2), "lr": run.step.scheduler.get_last_lr()[0],
           "useful_fraction": round(run.train_blocks.useful_fraction(), 4), "best": improved, "event": event}
    early = cfg.patience is not None and state.bad_evals >= cfg.patience
    if early and not state.stopped:
        state.stopped = "early_stop"  # recorded in the checkpoint, so --resume knows the run is over
    run.loss_sum.zero_()
    state.loss_tokens, state.window_tokens, state.window_time = 0, 0, 0.0
    run.warmup = None
    drawn = len(cfg.keywords) * cfg.samples if run.main and cfg.samples else 0
    if run.main:  # the lines this evaluation adds: what the checkpoint records, so it can be written meanwhile
        state.metrics_lines += 1
        state.samples_lines += drawn
    # a thread writes the checkpoint while the samples are drawn on one thread fewer, and swaps it in once their lines
    # are written; after the run's last evaluation only the report follows, which computes on one core: the samples
    # get every thread, and the checkpoint is written after them, alongside the report
    last = bool(state.stopped) or early
    try:
        if keep and not last:
            save(run, state, improved, background=True)
        samples = []
        if drawn:
            with one_core_less(acc.device.type, when=run.saving is not None):
                samples = sample(run.raw_model, run.tokenizer, cfg.keywords,
                                 SamplingConfig(n=cfg.samples, seed=cfg.seed, precision=cfg.precision))
            if len(samples) != drawn:
                raise RuntimeError(f"{len(samples)} samples drawn, {drawn} expected")
        if run.main:
            rows = [{"epoch": label, "step": state.step, "keyword": x.prompt, "text": x.text, "ended": x.ended}
                    for x in samples]
            append_jsonl(run.out / "metrics.jsonl", [row])
            append_jsonl(run.out / "samples.jsonl", rows)
            if run.trackers is not None:
                run.trackers.log(row, rows)
            progress.clear()
            print_eval(row, samples)
        if keep and last:
            save(run, state, improved, background=True)
    except BaseException:
        if run.saving is not None:
            saving, run.saving = run.saving, None
            saving.abort()  # the previous checkpoint stays
        raise
    if run.saving is not None:
        run.saving.commit()  # joined before the next step changes the weights, or at the end of the run
    run.eval_seconds = time.perf_counter() - t0
    return early


def finish(run: Run, state: LoopState, stopped: str) -> RunResult:
    """The closing line, the report, and what the run left behind."""
    if run.main:
        from gpt2tune.run.report import write_report

        report = write_report(run.out)  # while the last checkpoint may still be being written
        run.saved()
        run.accelerator.print(
            f"done ({stopped}) after {state.step} steps, {state.train_time:.0f} s of training, "
            f"{duration(run.wall())} in all; best val loss {state.best_val:.4f} "
            f"(ppl {math.exp(min(state.best_val, 50)):.2f}) in {run.out / 'best'}")
        run.accelerator.print(f"report: {report}")
    lines = (run.out / "metrics.jsonl").read_text(encoding="utf-8").splitlines() if run.main else []
    return RunResult(run.out, state.best_val, state.step, stopped, [json.loads(x) for x in lines])
