"""gpt2tune: fine-tune GPT-2 (or any causal LM) on a topic corpus so it writes better sentences about it."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from gpt2tune import train
from gpt2tune.config import SamplingConfig, TrainConfig
from gpt2tune.errors import Interrupted, UserError

if TYPE_CHECKING:
    from gpt2tune.model.sample import Sample, generate
    from gpt2tune.train.state import RunResult

# torch, transformers and accelerate load on first use, so `gpt2tune --help` and `gpt2tune corpus` start fast
_LAZY = {"generate": "gpt2tune.model.sample", "Sample": "gpt2tune.model.sample", "RunResult": "gpt2tune.train.state"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["train", "generate", "TrainConfig", "SamplingConfig", "Sample", "RunResult", "UserError", "Interrupted"]
