"""A time budget is a schedule (the learning rate ends with the time), and training is never silent."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import make_corpus

import gpt2tune
from gpt2tune import console as heartbeat
from gpt2tune.cli import main
from gpt2tune.train import budget


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    p = tmp_path_factory.mktemp("data") / "japan.txt"
    p.write_text("\n".join(make_corpus(200, seed=11)) + "\n", encoding="utf-8")
    return p


def test_evaluations_counts_epoch_ends_eval_every_and_the_final_one():
    assert budget.evaluations(0, 10, 10, None) == 1  # the epoch end is the final evaluation
    assert budget.evaluations(0, 25, 10, None) == 3  # steps 10, 20 and the final 25
    assert budget.evaluations(0, 25, 10, 5) == 5  # 5, 10, 15, 20, 25
    assert budget.evaluations(7, 6, 10, 4) == 4  # 8, 10, 12 and the final 13


def test_steps_that_fit_leave_time_for_the_evaluations():
    # 100 s, 1 s per step, 10 s per evaluation, 30 steps per epoch: 3 evaluations leave room for 70 steps
    assert budget.steps_that_fit(100, 1.0, 10.0, 0, 10_000, 30, None) == 70
    assert budget.steps_that_fit(100, 1.0, 10.0, 0, 50, 30, None) == 50  # the run's own end comes first
    assert budget.steps_that_fit(5, 10.0, 10.0, 0, 100, 30, None) == 1  # always at least one step


def test_max_minutes_ends_the_schedule_with_the_budget(tiny_model, corpus, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(budget, "HARD_STOP_SHARE", 100.0)  # this test checks the plan, not a slow machine's stop
    out = tmp_path / "budget"
    result = gpt2tune.train(model=str(tiny_model), data=str(corpus), out=str(out), epochs=1000, max_minutes=0.3,
                            lr=3e-3, batch_size=4, block_size=64, samples=0, patience=None, threads=1)
    assert result.stopped == "max_minutes"
    last = result.metrics[-1]
    assert last["lr"] <= 0.1 * 3e-3 and last["event"] in ("final", "epoch")  # the end may fall on an epoch's
    saved = torch.load(out / "last" / "trainer_state.pt", weights_only=False)
    state = saved["loop"]
    assert state["budget_steps"] == state["total_steps"] == result.steps  # fixed once, and saved for --resume
    assert saved["scheduler"]["last_epoch"] == result.steps  # the schedule's own end is where the run ended
    err = capsys.readouterr().err
    assert "time budget 0.3 min: the run ends by" in err and f"time budget: {result.steps:,} steps in all" in err


def test_progress_lines_when_stderr_is_not_a_terminal(tiny_model, corpus, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(heartbeat, "EVERY_S", 0.0)  # a line every step instead of every 30 s
    out = tmp_path / "quiet"
    assert main(["train", "--model", str(tiny_model), "--data", str(corpus), "--out", str(out), "--max-steps", "3",
                 "--batch-size", "4", "--block-size", "64", "--samples", "0", "--threads", "1"]) == 0
    err = capsys.readouterr().err
    assert "first step done" in err
    lines = [x for x in err.splitlines() if x.startswith("step ")]
    assert [x.split()[1] for x in lines] == ["1/3", "2/3", "3/3"]
    assert all("tok/s" in x and "ETA" in x and "loss" in x for x in lines)
    assert "\r" not in err  # no bar drawn into a log


def test_a_bar_is_drawn_on_a_terminal(monkeypatch, capsys):
    monkeypatch.setattr(heartbeat, "interactive", lambda: True)
    progress = heartbeat.StepProgress(total=4, done=0)
    for step in range(1, 5):
        progress.update(step, 1, 3.21, 1234.0)
    progress.close()
    err = capsys.readouterr().err
    assert "training" in err and "4/4" in err and "loss 3.210" in err and "1,234 tok/s" in err
    assert not any(x.startswith("step ") for x in err.splitlines())
