"""gpt2tune: fine-tune GPT-2 (or any causal LM) on a topic corpus so it writes better sentences about it."""

from __future__ import annotations

import sys
import types
from typing import TYPE_CHECKING, Any

from .config import SamplingConfig, TrainConfig
from .errors import UserError

if TYPE_CHECKING:
    from .sampling import Sample, generate
    from .train import RunResult

# torch, transformers and accelerate load on first use, so `gpt2tune --help` and `gpt2tune corpus` start fast
_LAZY = {"generate": "sampling", "Sample": "sampling", "RunResult": "train"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def train(config: TrainConfig | None = None, **options) -> RunResult:
    """Fine-tune a model: pass a TrainConfig, or its fields as keyword arguments."""
    from .config import build, to_dict
    from .train import train as _train

    cfg = build(TrainConfig, to_dict(config) if config else {}, options)
    return _train(cfg)


class _Package(types.ModuleType):
    """Keeps `gpt2tune.train` the function above when the submodule gpt2tune/train.py is first imported (the
    import system sets every loaded submodule as an attribute of its package)."""

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "train" and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package

__all__ = ["train", "generate", "TrainConfig", "SamplingConfig", "Sample", "RunResult", "UserError"]
