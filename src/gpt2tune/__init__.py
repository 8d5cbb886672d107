"""gpt2tune: fine-tune GPT-2 (or any causal LM) on a topic corpus so it writes better sentences about it.

The Python API mirrors the command line, one call per command, each taking its config dataclass or the same
options as keyword arguments (the config classes import no torch):

    gpt2tune.train(data=..., out=...)                      TrainConfig
    gpt2tune.generate(model, prompts, n=2, seed=1)         SamplingConfig
    gpt2tune.evaluate(model, data=...)                     EvaluateConfig
    gpt2tune.compare(base=..., tuned=RUN, out=RUN)         CompareConfig (+ sampling=SamplingConfig)
    gpt2tune.export(model, gguf=...)                       ExportConfig
    gpt2tune.push(RUN, repo="user/name")                   PushConfig
    gpt2tune.inspect_data(path, model=...)                 InspectConfig
    gpt2tune.write_report(RUN)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from gpt2tune import evaluate, export, train
from gpt2tune.errors import Interrupted, UserError

if TYPE_CHECKING:
    from pathlib import Path

    from gpt2tune.config import InspectConfig, SamplingConfig, TrainConfig
    from gpt2tune.evaluate.generate import generate
    from gpt2tune.evaluate.options import CompareConfig, EvaluateConfig
    from gpt2tune.evaluate.run import Comparison
    from gpt2tune.export.options import ExportConfig, PushConfig
    from gpt2tune.export.push import PushResult
    from gpt2tune.model.sample import Sample
    from gpt2tune.train.state import RunResult

# torch, transformers and accelerate load on first use, so `gpt2tune --help` and `gpt2tune corpus` start fast; the
# options too, so that `gpt2tune train` re-runs itself under tcmalloc (__main__.py) before importing anything more
_LAZY = {"generate": "gpt2tune.evaluate.generate", "Sample": "gpt2tune.model.sample",
         "RunResult": "gpt2tune.train.state", "TrainConfig": "gpt2tune.config", "SamplingConfig": "gpt2tune.config",
         "InspectConfig": "gpt2tune.config", "CompareConfig": "gpt2tune.evaluate.options",
         "EvaluateConfig": "gpt2tune.evaluate.options", "ExportConfig": "gpt2tune.export.options",
         "PushConfig": "gpt2tune.export.options"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def compare(config: CompareConfig | None = None, sampling: SamplingConfig | None = None, **options: Any) -> Comparison:
    """Base vs tuned (`gpt2tune compare`): held-out perplexity and sample metrics; writes compare.json and
    compare.md into out= (and rebuilds the report of a run). Pass a CompareConfig or its fields."""
    from gpt2tune.config import build
    from gpt2tune.evaluate.options import CompareConfig
    from gpt2tune.evaluate.run import compare_into

    return compare_into(config if config is not None else build(CompareConfig, options), sampling)


def inspect_data(path: str, config: InspectConfig | None = None, **options: Any) -> dict[str, Any]:
    """The data report of a sentence file (`gpt2tune data inspect`), as a dict; also JSON to json= when given."""
    from gpt2tune.config import InspectConfig, build
    from gpt2tune.data.inspect import inspect_file

    return inspect_file(path, config if config is not None else build(InspectConfig, options))


def push(run: str | Path, config: PushConfig | None = None, **options: Any) -> PushResult:
    """Upload RUN's best/ model with its model card (and, with gguf=True, its exported GGUF) to the Hugging Face
    Hub as one commit (`gpt2tune push`). Pass a PushConfig or its fields (repo= at least)."""
    from gpt2tune.config import build
    from gpt2tune.export.options import PushConfig
    from gpt2tune.export.push import push as run_push

    return run_push(run, config if config is not None else build(PushConfig, options))


def write_report(run: str | Path) -> Path:
    """(Re)build RUN/report.html (`gpt2tune report`); returns its path."""
    from gpt2tune.run.report import write_report as write

    return write(run)


__all__ = ["train", "generate", "evaluate", "compare", "export", "push", "inspect_data", "write_report",
           "TrainConfig", "SamplingConfig", "EvaluateConfig", "CompareConfig", "ExportConfig", "PushConfig",
           "InspectConfig", "Sample",
           "RunResult", "UserError", "Interrupted"]
