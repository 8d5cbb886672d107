"""evaluate/: before and after: held-out perplexity (scored as training scores it), sample metrics of generated
text, and base-vs-tuned compare.

The package is also the Python API's call: `gpt2tune.evaluate(model, data=...)` runs `gpt2tune.evaluate.run.evaluate`
(a package named like the function would otherwise shadow it once imported)."""

from __future__ import annotations

import sys
import types
from typing import Any


class _Callable(types.ModuleType):
    def __call__(self, model: str, config: Any = None, **options: Any) -> dict[str, Any]:
        """Held-out perplexity of `model` (run directory, HF directory, hub id or .gguf): pass an EvaluateConfig or
        its fields as keyword arguments (data=... at least)."""
        from gpt2tune.config import build
        from gpt2tune.evaluate.options import EvaluateConfig
        from gpt2tune.evaluate.run import evaluate

        return evaluate(model, config if config is not None else build(EvaluateConfig, options))


sys.modules[__name__].__class__ = _Callable
