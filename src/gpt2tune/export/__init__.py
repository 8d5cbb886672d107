"""export/: a model to a GGUF file for llama.cpp, Ollama and LM Studio, checked for parity before it is named.

The package is also the Python API's call: `gpt2tune.export(model, gguf=...)` runs `gpt2tune.export.run.export`
(a package named like the function would otherwise shadow it once imported)."""

from __future__ import annotations

import sys
import types
from typing import Any


class _Callable(types.ModuleType):
    def __call__(self, model: str, config: Any = None, sampling: Any = None, **options: Any) -> Any:
        """Write `model` as a GGUF file: pass an ExportConfig or its fields as keyword arguments (gguf=... at
        least); `sampling` (a SamplingConfig) goes into an Ollama Modelfile with ollama=True."""
        from gpt2tune.config import build
        from gpt2tune.export.options import ExportConfig
        from gpt2tune.export.run import export

        return export(model, config if config is not None else build(ExportConfig, options), sampling)


sys.modules[__name__].__class__ = _Callable
