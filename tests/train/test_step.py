"""The optimizer's state created before the first step: nothing about training changes."""

from __future__ import annotations

import pytest
import torch

from gpt2tune.train import step as scoring


def small_model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.LayerNorm(32), torch.nn.Linear(32, 4))


def train_two_steps(model: torch.nn.Module, allocate: bool) -> list[torch.Tensor]:
    opt = scoring.make_optimizer(model, lr=1e-2, weight_decay=0.1)
    if allocate:
        scoring.allocate_state(opt)
    gen = torch.Generator().manual_seed(1)
    for _ in range(2):
        x = torch.randn(8, 16, generator=gen)
        model(x).pow(2).mean().backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return [p.detach().clone() for p in model.parameters()]


def test_allocate_state_changes_no_parameter_and_starts_at_step_zero():
    model = small_model()
    before = [p.detach().clone() for p in model.parameters()]
    opt = scoring.make_optimizer(model, lr=0.5, weight_decay=0.5)  # a large decay would show if it applied
    scoring.allocate_state(opt)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert all(p.grad is None for p in model.parameters())
    assert [g["lr"] for g in opt.param_groups] == [0.5, 0.5]
    for p in model.parameters():
        st = opt.state[p]
        assert float(st["step"]) == 0.0
        assert st["exp_avg"].shape == p.shape and not st["exp_avg"].any() and not st["exp_avg_sq"].any()


@pytest.mark.parametrize("fused", [True, False])
def test_training_after_allocate_state_is_bit_identical(fused, monkeypatch):
    if not fused:  # the foreach path (what a device without the fused kernel runs)
        real = torch.optim.AdamW
        monkeypatch.setattr(torch.optim, "AdamW", lambda *a, **k: real(*a, **{**k, "fused": None}))
    with_state = train_two_steps(small_model(), allocate=True)
    without = train_two_steps(small_model(), allocate=False)
    assert all(torch.equal(a, b) for a, b in zip(with_state, without))
    assert not all(torch.equal(a, b) for a, b in zip(with_state, small_model().parameters()))  # it did train


def test_allocate_state_leaves_an_existing_state_alone():
    model = small_model()
    opt = scoring.make_optimizer(model, lr=1e-2, weight_decay=0.0)
    model(torch.randn(2, 16)).sum().backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    moments = {id(p): opt.state[p]["exp_avg"].clone() for p in model.parameters()}
    scoring.allocate_state(opt)
    assert all(float(opt.state[p]["step"]) == 1.0 for p in model.parameters())
    assert all(torch.equal(opt.state[p]["exp_avg"], moments[id(p)]) for p in model.parameters())
