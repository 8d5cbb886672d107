"""Scoring, one path for train, evaluate, compare and bench: the loss of a batch, the loss over blocks, the step."""

from __future__ import annotations

import contextlib
import functools
import math
from dataclasses import dataclass, field
from typing import Any, Callable, ContextManager

import torch
import torch.nn.functional as F

from gpt2tune.data import blocks as data_blocks
from gpt2tune.model.loss import casts_kept, causal_lm_loss, supports_fused

SCHEDULES = ("cosine", "linear", "constant")  # transformers' cosine, linear and constant_with_warmup


def autocast(device: torch.device, dtype: torch.dtype | None) -> ContextManager:
    """torch.autocast to dtype on device; a no-op context for fp32 (dtype None)."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def precision_name(dtype: torch.dtype | None) -> str:
    """bf16, fp16 or fp32 for an autocast dtype (None = fp32)."""
    return {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(dtype, "fp32")


def block_loss(model, b: dict[str, torch.Tensor]) -> torch.Tensor:
    """Summed next-token loss over the tokens that count (padding and example starts excluded)."""
    if supports_fused(model):  # same value, without materialising full-vocabulary logits
        return causal_lm_loss(model, b["input_ids"], b["attention_mask"], b["position_ids"], b["targets"])
    logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"],
                   position_ids=b["position_ids"]).logits
    return F.cross_entropy(logits.flatten(0, 1).float(), b["targets"].flatten(),
                           ignore_index=data_blocks.IGNORE, reduction="sum")


def to_device(b: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    """A batch moved to device."""
    return {k: v.to(device) for k, v in b.items()}


@torch.no_grad()
def evaluate_loss(model, blocks: data_blocks.Blocks, batch_size: int, device: torch.device, dtype: torch.dtype | None,
                  rank: int = 0, world: int = 1,
                  reduce: Callable[[torch.Tensor], torch.Tensor] | None = None) -> tuple[float, int]:
    """Mean loss per target token over all blocks (process `rank` of `world` scores every world-th block and
    `reduce` sums over processes), and the token count."""
    was_training = model.training
    model.eval()
    total = torch.zeros(2, dtype=torch.float64, device=device)
    mine = list(range(rank, len(blocks), world))
    with autocast(device, dtype), casts_kept():  # the weights are cast to dtype once, not once a batch
        for i in range(0, len(mine), batch_size):
            b = to_device(data_blocks.batch(blocks, mine[i:i + batch_size]), device)
            total[0] += block_loss(model, b).double()
            total[1] += (b["targets"] != data_blocks.IGNORE).sum()
    if reduce is not None:
        total = reduce(total)
    model.train(was_training)
    return (total[0] / total[1]).item(), int(total[1].item())


def _param_groups(model, weight_decay: float) -> list[dict[str, Any]]:
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 and "ln" not in name and "norm" not in name else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def make_optimizer(model, lr: float, weight_decay: float) -> torch.optim.AdamW:
    """AdamW over the trainable parameters; the fused kernel (CPU and CUDA) is ~10x faster than the default loop."""
    params = [p for p in model.parameters() if p.requires_grad]
    fused = all(p.device.type in ("cpu", "cuda") and p.is_floating_point() for p in params)
    return torch.optim.AdamW(_param_groups(model, weight_decay), lr=lr, betas=(0.9, 0.999), fused=fused or None)


def allocate_state(optimizer: torch.optim.Optimizer) -> None:
    """Create the optimizer's state (AdamW's two moments, its step count) now, before the first training step, by
    a step that changes nothing: zero gradients at learning rate 0, the step count put back to 0 afterwards. The
    state is torch's own (same tensors, same dtypes, fused or not) and the parameters stay bit for bit.

    Why: created inside the first step, the moments (2 x the trainable parameters, in fp32) took the memory that
    step's gradients, logits gradient and casts had just freed, so the second step faulted all of those in afresh.
    Measured on GPT-2 124M (AMD EPYC, 2 threads, tcmalloc): the first three steps 4.4-5.3 / 3.5-3.7 / 2.9-3.2 s ->
    (this 1.2-1.4 s) + 3.3-3.5 / 2.8-2.9 / 2.7 s; bench's peak RSS 2.98 -> 2.89 GiB. Does nothing when the state
    exists or a gradient is already set (a resumed run skips it: it loads its own state)."""
    params = [p for group in optimizer.param_groups for p in group["params"]]
    if any(optimizer.state.get(p) for p in params) or any(p.grad is not None for p in params):
        return
    rates = [group["lr"] for group in optimizer.param_groups]
    try:
        for group in optimizer.param_groups:
            group["lr"] = 0.0  # update = lr * (...) and decay = 1 - lr * wd: exactly none
        for p in params:
            p.grad = torch.zeros_like(p)
        optimizer.step()
    finally:
        for group, lr in zip(optimizer.param_groups, rates):
            group["lr"] = lr
        optimizer.zero_grad(set_to_none=True)
    for p in params:
        step = optimizer.state[p].get("step")
        if isinstance(step, torch.Tensor):
            step.zero_()
        elif step is not None:
            optimizer.state[p]["step"] = 0


def lr_factor(step: int, *, schedule: str, warmup: int, total: int) -> float:
    """The learning rate at `step` as a fraction of the optimizer's: a linear warm-up from 0 over `warmup` steps,
    then cosine (half a cycle to 0 at `total`), linear (to 0 at `total`) or constant. These are transformers'
    get_scheduler schedules ("cosine", "linear", "constant_with_warmup"), number for number; importing them from
    transformers would import its Trainer's utilities, and PEFT with them: 0.2-0.35 s of every run's start."""
    if step < warmup:
        return float(step) / float(max(1, warmup))
    if schedule == "constant":
        return 1.0
    if schedule == "linear":
        return max(0.0, float(total - step) / float(max(1, total - warmup)))
    progress = float(step - warmup) / float(max(1, total - warmup))
    return max(0.0, 0.5 * (1.0 + math.cos(math.pi * progress)))  # transformers' pi * 0.5 cycles * 2: exactly pi


def make_scheduler(optimizer: torch.optim.Optimizer, schedule: str, warmup: float, total_steps: int, done: int = 0):
    """The learning-rate schedule over total_steps, advanced to step `done` (as if it had run from the start)."""
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule {schedule!r}: one of {', '.join(SCHEDULES)}")
    # a partial, as transformers builds it: a checkpoint's scheduler state loads into either
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, functools.partial(
        lr_factor, schedule=schedule, warmup=int(warmup * total_steps), total=total_steps))
    for _ in range(done):
        scheduler.step()
    return scheduler


def step_batches(n_blocks: int, blocks_per_step: int, seed: int, epoch: int) -> list[list[int]]:
    """The blocks of each optimizer step of one epoch (a pure function of seed and epoch, so resume replays it)."""
    order = data_blocks.epoch_order(n_blocks, seed, epoch)
    return [order[i:i + blocks_per_step] for i in range(0, len(order), blocks_per_step)]


def clip_in_step(model, optimizer, max_norm: float) -> torch.optim.Optimizer | None:
    """Clip the gradients' total norm to max_norm inside the fused AdamW step: the clipping factor is handed to
    the optimizer as its `grad_scale` (the hook torch's GradScaler uses), which the fused kernel divides each
    gradient by as it reads it. That saves clip_grad_norm_'s multiply, a pass over all the gradients (GPT-2 124M,
    2 cores: 66 -> 59 ms for clipping and the step). The same as clip_grad_norm_ to rounding: g / (norm / max_norm)
    instead of g * (max_norm / norm), with torch's 1e-6 in the norm. Returns the optimizer that holds the scale
    (the caller deletes it after the step), or None when the optimizer is not the fused AdamW: clip as usual."""
    inner = getattr(optimizer, "optimizer", optimizer)  # under Accelerate's AcceleratedOptimizer; AdamW is an Adam
    if not isinstance(inner, torch.optim.Adam) or not all(g.get("fused") for g in inner.param_groups):
        return None
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    if not grads:
        return None
    norm = torch.nn.utils.get_total_norm(grads)
    inner.grad_scale = torch.clamp((norm + 1e-6) / max_norm, min=1.0)
    return inner


@dataclass
class StepResult:
    """What one optimizer step did: this process's summed loss, and the step's target and real tokens."""

    loss: torch.Tensor  # float64, summed over this process's target tokens
    target_tokens: int
    useful_tokens: int


@dataclass
class TrainStep:
    """One optimizer step, the same in `train` and `bench`: micro-batches of batch_size blocks per process with
    accumulated gradients, the loss scaled to the mean over all the step's target tokens, clipping, the optimizer,
    the learning-rate schedule."""

    model: Any  # the prepared model (DDP-wrapped on several processes)
    optimizer: torch.optim.Optimizer
    scheduler: Any
    accelerator: Any  # accelerate.Accelerator: device, process index and count, no_sync
    batch_size: int
    clip: float
    dtype: torch.dtype | None  # autocast dtype; None = fp32
    scaler: torch.amp.GradScaler | None = None  # fp16 (hardware.grad_scaler)
    _counts: tuple[Any, torch.Tensor, torch.Tensor] | None = field(default=None, init=False, repr=False)

    def counts(self, blocks) -> tuple[torch.Tensor, torch.Tensor]:
        """Target and real tokens per block (counted once per set of blocks, which may live on disk)."""
        if self._counts is None or self._counts[0] is not blocks:
            self._counts = (blocks, blocks.target_counts(), blocks.useful_counts())
        return self._counts[1], self._counts[2]

    def __call__(self, blocks: data_blocks.Blocks, step_blocks: list[int]) -> StepResult:
        acc, bs = self.accelerator, self.batch_size
        world, rank, device = acc.num_processes, acc.process_index, acc.device
        idx = torch.as_tensor(step_blocks)
        targets, useful = self.counts(blocks)
        n_tokens = int(targets[idx].sum())
        micro = [step_blocks[i:i + bs * world] for i in range(0, len(step_blocks), bs * world)]
        step_loss = torch.zeros((), dtype=torch.float64, device=device)
        for m, global_micro in enumerate(micro):
            mine = global_micro[rank * bs:(rank + 1) * bs]
            b = to_device(data_blocks.batch(blocks, mine) if mine else empty_batch(blocks.block_size), device)
            last = m == len(micro) - 1
            with acc.no_sync(self.model) if (not last and world > 1) else contextlib.nullcontext():
                with autocast(device, self.dtype):
                    loss = block_loss(self.model, b)
                # DDP averages gradients over processes; scale so the result is the mean over all tokens
                scaled = loss * (world / n_tokens)
                (self.scaler.scale(scaled) if self.scaler else scaled).backward()
                step_loss += loss.detach().double()
        if self.scaler:
            self.scaler.unscale_(self.optimizer)
        folded = self.clip and self.scaler is None and clip_in_step(self.model, self.optimizer, self.clip)
        if self.clip and not folded:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.clip)
        if self.scaler:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            try:
                self.optimizer.step()
            finally:
                if folded:
                    del folded.grad_scale
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return StepResult(step_loss, n_tokens, int(useful[idx].sum()))


def empty_batch(block_size: int) -> dict[str, torch.Tensor]:
    """An all-padding block for a process that has no block in the last micro-batch (adds no loss)."""
    b = data_blocks.Blocks(torch.zeros((1, block_size), dtype=torch.long), torch.full((1, block_size), data_blocks.IGNORE),
                    torch.zeros((1, block_size), dtype=torch.long), torch.full((1, block_size), -1, dtype=torch.int32),
                    0)
    return data_blocks.batch(b, [0])
