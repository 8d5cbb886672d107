"""A time budget is a schedule: after the first steps, fix the step count that fits --max-minutes, so the
learning rate reaches the end of its schedule when the time does."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from gpt2tune.console import duration, say
from gpt2tune.train import step as scoring

if TYPE_CHECKING:
    from gpt2tune.config import TrainConfig
    from gpt2tune.console import StepProgress
    from gpt2tune.train.state import LoopState, Run

MEASURE_STEPS = 5  # steps timed before the count is fixed (the first one, a warm-up, is not counted)
PLAN_SHARE = 0.95  # plan to end a little early: the report and the final save come after the last evaluation
HARD_STOP_SHARE = 1.05  # a run slower than planned stops here, whatever the schedule


def planned_steps(cfg: "TrainConfig", steps_per_epoch: int, budget_steps: int | None) -> int:
    """The run's optimizer steps: its epochs, capped by --max-steps and by what fits the time budget."""
    caps = [cfg.epochs * steps_per_epoch, cfg.max_steps, budget_steps]
    return min(c for c in caps if c)


def evaluations(done: int, n: int, steps_per_epoch: int, eval_every: int | None) -> int:
    """Evaluations in steps done+1 .. done+n: epoch ends, every eval_every steps, and the final one."""
    end = done + n
    count = end // steps_per_epoch - done // steps_per_epoch
    if eval_every:
        both = steps_per_epoch * eval_every // math.gcd(steps_per_epoch, eval_every)
        count += end // eval_every - done // eval_every - (end // both - done // both)
    at_end = end % steps_per_epoch == 0 or bool(eval_every and end % eval_every == 0)
    return count + (0 if at_end else 1)


def steps_that_fit(seconds: float, step_s: float, eval_s: float, done: int, cap: int, steps_per_epoch: int,
                   eval_every: int | None) -> int:
    """The most further steps (1 .. cap) whose time, with the evaluations they bring, fits in `seconds`."""
    best, n = 1, 1
    while n <= cap and n * step_s <= seconds:
        if n * step_s + evaluations(done, n, steps_per_epoch, eval_every) * eval_s <= seconds:
            best = n
        n += 1
    return best


def fix_steps(run: "Run", state: "LoopState", progress: "StepProgress") -> None:
    """Once MEASURE_STEPS steps are timed, fix the run's step count to the budget and stretch the schedule to it."""
    if len(run.step_times) < MEASURE_STEPS and state.step < state.total_steps:
        return
    timed = run.step_times[1:] or run.step_times
    step_s = sum(timed) / len(timed)
    left = run.cfg.max_minutes * 60 * PLAN_SHARE - run.wall()
    n = steps_that_fit(left, step_s, run.eval_seconds, state.step, state.total_steps - state.step,
                       run.steps_per_epoch, run.cfg.eval_every)
    if run.accelerator.num_processes > 1:  # every process must stop at the same step: rank 0 decides
        from accelerate.utils import broadcast_object_list

        n = broadcast_object_list([n], from_process=0)[0]
    state.budget_steps = state.step + n
    if state.budget_steps < state.total_steps:
        state.total_steps = state.budget_steps
        run.step.scheduler = scoring.make_scheduler(run.step.optimizer, run.cfg.schedule, run.cfg.warmup,
                                                    state.total_steps, done=state.step)
        progress.set_total(state.total_steps)
    if run.accelerator.is_main_process:
        say(f"time budget: {state.total_steps:,} steps in all ({step_s:.2f} s/step, evaluations "
            f"{run.eval_seconds:.1f} s each), about {duration(n * step_s)} more of training")


def over_budget(run: "Run") -> bool:
    """Whether the run is past its hard stop (slower than measured)."""
    return bool(run.cfg.max_minutes) and run.wall() >= run.cfg.max_minutes * 60 * HARD_STOP_SHARE
