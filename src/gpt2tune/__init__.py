"""gpt2tune: fine-tune GPT-2 (or any causal LM) on a topic corpus so it writes better sentences about it."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .config import SamplingConfig, TrainConfig
from .errors import Interrupted, UserError

if TYPE_CHECKING:
    from .finetune import RunResult
    from .sampling import Sample, generate

# torch, transformers and accelerate load on first use, so `gpt2tune --help` and `gpt2tune corpus` start fast
_LAZY = {"generate": "sampling", "Sample": "sampling", "RunResult": "finetune"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def train(config: TrainConfig | None = None, **options: Any) -> RunResult:
    """Fine-tune a model: pass a TrainConfig, or its fields as keyword arguments; with resume=True the run's
    saved config is used, under the options given now (see finetune.train)."""
    from .finetune import train as _train

    return _train(config, **options)


__all__ = ["train", "generate", "TrainConfig", "SamplingConfig", "Sample", "RunResult", "UserError", "Interrupted"]
