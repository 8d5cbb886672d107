"""The optimizer's state created before the first step: nothing about training changes; the learning-rate schedules."""

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


@pytest.mark.filterwarnings("ignore:Detected call of `lr_scheduler.step\\(\\)` before")  # the replay, by design
@pytest.mark.parametrize("schedule,name", [("cosine", "cosine"), ("linear", "linear"),
                                           ("constant", "constant_with_warmup")])
@pytest.mark.parametrize("warmup,total", [(0.0, 17), (0.1, 17), (0.05, 1000), (0.5, 3), (0.0, 1)])
def test_schedules_are_transformers_own_number_for_number(schedule, name, warmup, total):
    from transformers import get_scheduler

    ours_opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=5e-4)
    theirs_opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=5e-4)
    ours = scoring.make_scheduler(ours_opt, schedule, warmup, total)
    theirs = get_scheduler(name, theirs_opt, num_warmup_steps=int(warmup * total), num_training_steps=total)
    seen = []
    for _ in range(total + 2):  # past the end too
        assert ours.get_last_lr() == theirs.get_last_lr()
        seen.append(ours.get_last_lr()[0])
        ours_opt.step(), theirs_opt.step()
        ours.step(), theirs.step()
    if schedule != "constant":
        assert seen[total] == 0.0 and max(seen) <= 5e-4
    # a checkpoint's scheduler state moves between them, and `done` replays the same position
    resumed = scoring.make_scheduler(torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=5e-4), schedule,
                                     warmup, total, done=total // 2)
    again = scoring.make_scheduler(torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=5e-4), schedule,
                                   warmup, total)
    again.load_state_dict(theirs.state_dict())
    assert resumed.get_last_lr()[0] == seen[total // 2]
    assert again.get_last_lr() == theirs.get_last_lr()


def test_an_unknown_schedule_is_refused():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    with pytest.raises(ValueError, match="unknown schedule"):
        scoring.make_scheduler(opt, "step", 0.0, 10)


def _clipped_steps(fold: bool, max_norm: float, fused: bool = True) -> tuple[list[torch.Tensor], list[float]]:
    """Three AdamW steps on small_model with gradients clipped to max_norm, by clip_in_step or clip_grad_norm_."""
    model = small_model()
    opt = torch.optim.AdamW(scoring._param_groups(model, 0.1), lr=1e-2, fused=fused or None)
    gen = torch.Generator().manual_seed(3)
    norms = []
    for _ in range(3):
        (model(torch.randn(8, 16, generator=gen)) * 10).pow(2).mean().backward()
        norms.append(float(torch.nn.utils.get_total_norm([p.grad for p in model.parameters()])))
        holder = scoring.clip_in_step(model, opt, max_norm) if fold else None
        if fold and fused:
            assert holder is opt and float(opt.grad_scale) == pytest.approx(max(1.0, norms[-1] / max_norm))
        if holder is None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
        opt.step()
        if holder is not None:
            del holder.grad_scale
        opt.zero_grad(set_to_none=True)
    return [p.detach().clone() for p in model.parameters()], norms


@pytest.mark.parametrize("max_norm", [0.5, 1e6])
def test_clipping_inside_the_fused_step_equals_clip_grad_norm(max_norm):
    folded, norms = _clipped_steps(True, max_norm)
    plain, _ = _clipped_steps(False, max_norm)
    if max_norm < 1:
        assert min(norms) > 10 * max_norm  # the gradients were clipped, by a lot
    for a, b in zip(folded, plain):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
    unclipped, _ = _clipped_steps(False, 1e9)
    if max_norm < 1:  # and clipping changed the result
        assert not all(torch.allclose(a, b) for a, b in zip(folded, unclipped))


def test_clip_in_step_leaves_other_optimizers_to_clip_grad_norm():
    model = small_model()
    model(torch.randn(2, 16)).sum().backward()
    assert scoring.clip_in_step(model, torch.optim.SGD(model.parameters(), lr=0.1), 1.0) is None
    foreach = torch.optim.AdamW(model.parameters(), lr=0.1, foreach=True)
    assert scoring.clip_in_step(model, foreach, 1.0) is None and not hasattr(foreach, "grad_scale")
    folded, _ = _clipped_steps(True, 0.5, fused=False)  # the foreach AdamW path: clip_grad_norm_ after all
    plain, _ = _clipped_steps(False, 0.5, fused=False)
    assert all(torch.equal(a, b) for a, b in zip(folded, plain))


def test_an_evaluation_casts_the_weights_once_however_many_batches():
    """Under bf16 autocast the fp32 weights are cast once per evaluation, not once a batch: the layers' in one
    autocast context (its cache), the head's by the loss (casts_kept). A 6 x 384 GPT-2 takes ~22 ms to cast on a
    2-core CPU, GPT-2 small ~60 ms."""
    from torch.profiler import ProfilerActivity, profile
    from transformers import GPT2Config, GPT2LMHeadModel

    from gpt2tune.data import blocks as data_blocks

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=997, n_embd=32, n_layer=2, n_head=2, n_positions=64))
    examples = [[1] + torch.randint(3, 997, (int(n),)).tolist() + [2] for n in torch.randint(5, 30, (40,))]
    blocks = data_blocks.pack(examples, 32, 0)
    assert len(blocks) > 8  # several batches of 4
    cpu = torch.device("cpu")
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        loss, n = scoring.evaluate_loss(model, blocks, 4, cpu, torch.bfloat16)
    def casts(shape):
        return sum(e.name == "aten::_to_copy" and e.input_shapes[:1] == [shape] for e in prof.events())

    assert casts([32, 96]) == 2  # each layer's attention weight (32 x 96), once
    assert casts([997, 32]) == 1  # the token table, the tied head's weight, once
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        with torch.autocast("cpu", dtype=torch.bfloat16), scoring.casts_kept():
            for _ in range(2):  # with gradients (training: weights change between steps), a fresh cast each time
                scoring.block_loss(model, data_blocks.batch(blocks, [0, 1]))
    assert casts([997, 32]) == 2
    reference, m = scoring.evaluate_loss(model, blocks, len(blocks), cpu, torch.bfloat16)  # one batch of all
    assert n == m and loss == pytest.approx(reference, rel=1e-2)
