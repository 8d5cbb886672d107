"""gelu: the bf16 table look-up gives PyTorch's tanh-GELU bit for bit, forward and backward, in any layout."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from gpt2tune.model import gelu
from gpt2tune.model.gelu import TanhGELU, gelu_tanh


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.view(torch.int16)


def test_every_bf16_value_maps_to_pytorchs_gelu_of_it():
    assert 65536 >= gelu.MIN_TABLE_ELEMENTS  # the table path runs below
    every = torch.arange(65536, dtype=torch.int32).to(torch.int16).view(torch.bfloat16)
    shuffled = every[torch.randperm(65536, generator=torch.Generator().manual_seed(0))]
    assert torch.equal(_bits(gelu_tanh(shuffled)), _bits(F.gelu(shuffled, approximate="tanh")))


def test_forward_and_backward_are_pytorchs_in_any_layout(monkeypatch):
    monkeypatch.setattr(gelu, "MIN_TABLE_ELEMENTS", 1)  # these small tensors too
    calls = []
    monkeypatch.setattr(gelu, "table", lambda real=gelu.table: calls.append(1) or real())
    g = torch.Generator().manual_seed(1)
    base = (torch.randn(6, 40, 24, generator=g) * 3).bfloat16()
    for x0 in (base, base.transpose(0, 2), base[:, ::3]):  # contiguous, transposed, strided
        grad = torch.randn(x0.shape, generator=g).bfloat16()
        ours_x, ref_x = x0.clone().requires_grad_(), x0.clone().requires_grad_()
        ours, ref = gelu_tanh(ours_x), F.gelu(ref_x, approximate="tanh")
        assert ours.shape == ref.shape and ours.dtype == torch.bfloat16
        assert torch.equal(_bits(ours), _bits(ref))
        ours.backward(grad)
        ref.backward(grad)
        assert torch.equal(_bits(ours_x.grad), _bits(ref_x.grad))
    assert len(calls) == 3  # each went through the table


def test_other_dtypes_are_pytorchs_own_kernel():
    x = torch.linspace(-5, 5, 101, dtype=torch.float32)
    assert torch.equal(TanhGELU()(x), F.gelu(x, approximate="tanh"))
    # and the formula is GPT-2's gelu_new
    from transformers.activations import NewGELUActivation

    torch.testing.assert_close(TanhGELU()(x), NewGELUActivation()(x), atol=1e-6, rtol=0)
