"""GPT-2's tanh-GELU, one kernel, and on a CPU in bf16 a table look-up.

A bf16 number has 16 bits, so a bf16 GELU has only 65,536 possible inputs: the table holds PyTorch's own
`F.gelu(approximate="tanh")` of each, and the forward pass reads each input's entry by its bits. The outputs are
bit for bit PyTorch's. PyTorch computes the tanh in fp32 with an accurate (1-ulp) vectorised tanh, which is slow;
the look-up is not: one GPT-2 124M layer's 8 x 128 x 3,072 activations take 2.0 ms against 3.1 ms (AMD EPYC
Zen 4, 2 threads). The backward pass is PyTorch's own `gelu_backward`, as for F.gelu. Everything else (fp32,
GPUs, torch.compile's tracing, small inputs) runs F.gelu.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers.activations import GELUTanh

MIN_TABLE_ELEMENTS = 65536  # below this (a sampling step's few rows) the look-up's extra small ops cost more
_table: list[torch.Tensor] = []  # built on first use: the bf16 GELU of every bf16 bit pattern, by its uint16 value


def table() -> torch.Tensor:
    if not _table:
        every = torch.arange(65536, dtype=torch.int32).to(torch.int16).view(torch.bfloat16)
        _table.append(F.gelu(every, approximate="tanh"))
    return _table[0]


class _TableGELU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x)
        bits = x.reshape(-1).view(torch.uint16).to(torch.int32)
        return table().index_select(0, bits).view(x.shape)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        (x,) = ctx.saved_tensors
        return torch.ops.aten.gelu_backward(grad, x, approximate="tanh")


def gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    """F.gelu(x, approximate="tanh"), by table on a CPU for bf16."""
    if (x.dtype == torch.bfloat16 and x.device.type == "cpu" and x.numel() >= MIN_TABLE_ELEMENTS
            and not torch.compiler.is_compiling()):
        return _TableGELU.apply(x)
    return F.gelu(x, approximate="tanh")


class TanhGELU(GELUTanh):
    """transformers' GELUTanh (one kernel, the formula of GPT-2's gelu_new) through gelu_tanh."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return gelu_tanh(input)
