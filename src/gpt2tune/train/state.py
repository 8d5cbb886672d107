"""The run's state: Run (what the loop works with, built once), LoopState (where it is: saved in every checkpoint
and restored as one object) and RunResult (what a finished run leaves behind)."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator

from gpt2tune.config import TrainConfig
from gpt2tune.data import blocks as data_blocks
from gpt2tune.train import step as scoring


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
        from gpt2tune.run.report import notebook_html

        return notebook_html(self.out)


@dataclass
class LoopState:
    """Where the run is; saved in every checkpoint and restored as one object, so a resumed run goes on exactly."""

    step: int = 0
    epoch: int = 0
    batch: int = 0  # steps done in the current epoch
    total_steps: int = 0
    budget_steps: int | None = None  # the steps that fit --max-minutes, fixed once after the first steps
    best_val: float = math.inf
    bad_evals: int = 0
    train_time: float = 0.0  # seconds in optimizer steps
    wall_time: float = 0.0  # seconds since the run began, evaluations and saves included (what --max-minutes counts)
    loss_sum: list[float] = field(default_factory=lambda: [0.0])  # per process: train loss since the last evaluation
    loss_tokens: int = 0
    window_tokens: int = 0
    window_time: float = 0.0
    metrics_lines: int = 0
    samples_lines: int = 0
    stopped: str | None = None  # why the run ended: done | early_stop | max_steps | max_minutes
    threads: int | None = None  # a resumed run keeps its thread count: another one changes float summation order
    data_sha256: str | None = None

    @classmethod
    def restore(cls, saved: dict[str, Any]) -> "LoopState":
        """The state in a checkpoint's training state (keys of other versions ignored)."""
        loop = {"threads": saved.get("threads"), **saved.get("loop", {})}
        return cls(**{f.name: loop[f.name] for f in fields(cls) if f.name in loop})


@dataclass
class Run:
    """What the loop works with, built once by train()."""

    cfg: TrainConfig
    out: Path
    accelerator: Accelerator
    step: scoring.TrainStep
    raw_model: Any
    tokenizer: Any
    train_blocks: data_blocks.Blocks
    val_blocks: data_blocks.Blocks
    loss_sum: torch.Tensor  # this process's part of the train loss since the last evaluation
    began: float  # time.perf_counter() when this session's train() began
    wall_before: float = 0.0  # wall time of the run's earlier sessions (a resumed run)
    pending: list[tuple[int, torch.Tensor]] = field(default_factory=list)  # losses not yet checked for NaN
    step_times: list[float] = field(default_factory=list)  # seconds per step, this session
    # the session's first step (useful tokens, seconds): it builds the training kernels and touches the fresh
    # gradient and optimizer memory, so tokens/s leaves it out unless it is the only step since an evaluation
    warmup: tuple[int, float] | None = None
    eval_seconds: float = 0.0  # how long the last evaluation and its checkpoint took
    saved_step: int | None = 0  # the step of the checkpoint in last/ (None: none saved yet)
    last_save: float = field(default_factory=time.perf_counter)
    trackers: Any = None  # train.trackers.Trackers on the main process when --report-to names any
    saving: Any = None  # run.checkpoint.Background: the checkpoint a thread is writing (main process only)

    @property
    def main(self) -> bool:
        return self.accelerator.is_main_process

    @property
    def blocks_per_step(self) -> int:
        return self.cfg.batch_size * self.cfg.grad_accum * self.accelerator.num_processes

    @property
    def steps_per_epoch(self) -> int:
        return math.ceil(len(self.train_blocks) / self.blocks_per_step)

    def tokens_per_s(self, state: LoopState) -> float:
        """Useful tokens/s of the training steps since the last evaluation (the warm-up step left out)."""
        if state.window_time > 0:
            return state.window_tokens / state.window_time
        return self.warmup[0] / max(self.warmup[1], 1e-9) if self.warmup else 0.0

    def saved(self) -> float:
        """Wait for the checkpoint being written in the background, if any (its failure is raised); the seconds
        waited."""
        if self.saving is None:
            return 0.0
        t0 = time.perf_counter()
        saving, self.saving = self.saving, None
        saving.join()
        return time.perf_counter() - t0

    def wall(self) -> float:
        """Seconds since the run began, earlier sessions included."""
        return self.wall_before + time.perf_counter() - self.began
