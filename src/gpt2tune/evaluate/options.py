"""The options of `gpt2tune evaluate` and `gpt2tune compare` (torch-free, so `--help` stays fast)."""

from __future__ import annotations

from dataclasses import dataclass

from gpt2tune.config import (
    DATA_FORMATS,
    TEXT_COLUMN_HELP,
    check,
    check_device,
    check_fields,
    check_keywords,
    check_threads,
    device_opt,
    opt,
    threads_opt,
)


@dataclass
class EvaluateConfig:
    """What `gpt2tune evaluate` takes (also the perplexity part of `compare`)."""

    data: str = opt("", "held-out sentences: " + DATA_FORMATS, required=True)
    text_column: str = opt("text", TEXT_COLUMN_HELP)
    batch_size: int = opt(8, "blocks per forward pass")
    block_size: int | None = opt(None, "tokens per packed block (default: the run's, else 128)")
    precision: str = opt("auto", "auto|fp32|bf16 autocast while scoring (auto = as training ran: bf16 where native)")
    cache_dir: str | None = opt(None, "where tokenized, packed blocks are cached (default: $GPT2TUNE_CACHE_DIR, "
                                      "else ~/.cache/gpt2tune)")
    threads: int | None = threads_opt()
    device: str = device_opt()

    def validate(self) -> None:
        check_fields(self)
        check_device(self.device)
        check(self.batch_size >= 1, "batch-size must be at least 1")
        check_threads(self.threads)
        check(self.block_size is None or self.block_size >= 8, "block-size must be at least 8")
        check(self.precision in ("auto", "fp32", "bf16"), "precision must be auto, fp32 or bf16")


@dataclass
class CompareConfig:
    """What `gpt2tune compare` takes besides the sampling options."""

    base: str = opt("", "the model before fine-tuning: hub id, HF directory or .gguf file",
                    required=True)
    tuned: str = opt("", "the fine-tuned model: a run directory (its best/), HF directory or .gguf file",
                     required=True)
    data: str = opt("", "the sentences, as train's --data takes them (default for a run: the run's own data)")
    out: str = opt("", "directory for compare.json and compare.md (a run directory also gets its report "
                          "rebuilt)", required=True)
    heldout: str = opt("auto", "auto|all: auto = the tuned run's val split when --tuned is a run, else all of --data")
    train_data: str | None = opt(None, "sentences the copy rate checks against (default: the run's train split, "
                                       "else --data)")
    keywords: list[str] = opt(["auto"], "keyword prompts, the same for both models: auto (the tuned run's, else "
                                        "chosen from the copy-rate sentences), article (the article's ten) or a "
                                        "comma-separated list")
    samples: int = opt(5, "samples per keyword for each model")
    text_column: str = opt("text", TEXT_COLUMN_HELP)
    batch_size: int = opt(8, "blocks per forward pass when scoring perplexity")
    block_size: int | None = opt(None, "tokens per packed block (default: the run's, else 128)")
    precision: str = opt("auto", "auto|fp32|bf16 autocast while scoring and sampling (auto = as training ran)")
    threads: int | None = threads_opt()
    device: str = device_opt()
    overwrite: bool = opt(False, "replace compare.json / compare.md already in --out")

    def validate(self) -> None:
        check_fields(self)
        check(bool(self.base), "no base model: give --base MODEL")
        check(bool(self.tuned), "no tuned model: give --tuned MODEL")
        check(bool(self.out), "no output directory: give --out DIR")
        check(self.heldout in ("auto", "all"), "heldout must be auto or all")
        check_device(self.device)
        check(bool(self.keywords), "give at least one keyword")
        check_keywords(self.keywords)
        check(self.samples >= 1, "samples must be at least 1")
        check_threads(self.threads)
        check(self.batch_size >= 1, "batch-size must be at least 1")
        check(self.block_size is None or self.block_size >= 8, "block-size must be at least 8")
        check(self.precision in ("auto", "fp32", "bf16"), "precision must be auto, fp32 or bf16")
