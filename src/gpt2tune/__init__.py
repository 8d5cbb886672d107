"""gpt2tune: fine-tune GPT-2 (or any causal LM) on a topic corpus so it writes better sentences about it."""

from .config import SamplingConfig, TrainConfig
from .errors import Interrupted, UserError
from .finetune import RunResult, train
from .sampling import Sample, generate

__all__ = ["train", "generate", "TrainConfig", "SamplingConfig", "Sample", "RunResult", "UserError", "Interrupted"]
