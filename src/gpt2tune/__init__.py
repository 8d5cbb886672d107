"""gpt2tune: fine-tune GPT-2 (or any causal LM) on a topic corpus so it writes better sentences about it."""

from .config import SamplingConfig, TrainConfig
from .errors import UserError
from .sampling import Sample, generate
from .train import RunResult


def train(config: TrainConfig | None = None, **options) -> RunResult:
    """Fine-tune a model: pass a TrainConfig, or its fields as keyword arguments."""
    from .config import build, to_dict
    from .train import train as _train

    cfg = build(TrainConfig, to_dict(config) if config else {}, options)
    return _train(cfg)


__all__ = ["train", "generate", "TrainConfig", "SamplingConfig", "Sample", "RunResult", "UserError"]
