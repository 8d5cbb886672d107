"""train/: the fine-tuning loop and what it runs: the step (optimizer, scheduler), the time budget, stops, and
what training changes in a model (LoRA, frozen layers).

The package is also the Python API's call: `gpt2tune.train(config)` or `gpt2tune.train(data=..., out=...)` runs
`gpt2tune.train.loop.train` (a package named like the function would otherwise shadow it once imported)."""

from __future__ import annotations

import sys
import types
from typing import Any


class _Callable(types.ModuleType):
    def __call__(self, config: Any = None, **options: Any) -> Any:
        """Fine-tune a model: pass a TrainConfig, or its fields as keyword arguments; with resume=True the run's
        saved config is used, under the options given now."""
        from gpt2tune.train.loop import train

        return train(config, **options)


sys.modules[__name__].__class__ = _Callable
