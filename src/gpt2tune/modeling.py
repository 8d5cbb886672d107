"""Load a causal LM and its tokenizer, give them the article's special tokens, save them back."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from .errors import UserError

ARTICLE_TOKENS = {"bos_token": "<sos>", "eos_token": "<eos>", "pad_token": "<pad>"}


@dataclass
class ModelSource:
    """Where a model comes from: a hub id or local directory, plus a GGUF file name inside it."""

    path: str
    gguf_file: str | None = None

    @property
    def is_local(self) -> bool:
        return Path(self.path).is_dir()


def resolve(model: str) -> ModelSource:
    """Turn --model (hub id, directory, run directory, or .gguf file) into a ModelSource; a missing local path is an error."""
    p = Path(model).expanduser()
    if model.lower().endswith(".gguf"):
        if not p.is_file():
            raise UserError(f"model file not found: {model}")
        return ModelSource(str(p.parent.resolve()), p.name)
    if p.is_dir():
        if not (p / "config.json").is_file() and (p / "best" / "config.json").is_file():
            return ModelSource(str(p / "best"))  # a run directory: its best model
        if not (p / "config.json").is_file():
            raise UserError(f"{model} is a directory but not a Hugging Face model (no config.json in it)")
        return ModelSource(str(p))
    # a hub id is "name" or "org/name"; anything else path-shaped is a local path that isn't there
    looks_local = model.startswith((".", "/", "~")) or model.count("/") > 1 or "\\" in model
    if looks_local or p.exists():
        raise UserError(f"model not found: {model} (give a hub id such as gpt2, a local HF directory, "
                        "or a .gguf file)")
    return ModelSource(model)


def _offline_message(model: str, err: Exception) -> str:
    return (f"cannot load model '{model}': it is not in the local Hugging Face cache and the hub could not "
            f"be reached ({type(err).__name__}); point --model at a local directory holding config.json "
            "and weights (e.g. one saved by save_pretrained), or at a .gguf file")


def load_tokenizer(source: ModelSource, name: str) -> PreTrainedTokenizerBase:
    """Load the tokenizer of a model source (a clear error when it can't be had)."""
    try:
        return AutoTokenizer.from_pretrained(source.path, gguf_file=source.gguf_file)
    except OSError as e:
        if source.is_local:
            raise UserError(f"cannot load the tokenizer in {name}: {str(e).splitlines()[0]}") from None
        raise UserError(_offline_message(name, e)) from None


def load_model(source: ModelSource, name: str, dropout: float | None = None) -> PreTrainedModel:
    """Load a causal LM in fp32 with SDPA attention where the architecture has it."""
    kwargs = {"gguf_file": source.gguf_file, "dtype": torch.float32}
    if dropout is not None:
        kwargs.update(_dropout_overrides(source, dropout))
    try:
        try:
            return AutoModelForCausalLM.from_pretrained(source.path, attn_implementation="sdpa", **kwargs)
        except ValueError as e:
            if "sdpa" not in str(e).lower():
                raise
            return AutoModelForCausalLM.from_pretrained(source.path, **kwargs)
    except OSError as e:
        if source.is_local:
            raise UserError(f"cannot load the model in {name}: {str(e).splitlines()[0]}") from None
        raise UserError(_offline_message(name, e)) from None


def _dropout_overrides(source: ModelSource, dropout: float) -> dict[str, float]:
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(source.path, gguf_file=source.gguf_file)
    names = ("resid_pdrop", "embd_pdrop", "attn_pdrop", "attention_dropout", "hidden_dropout", "dropout")
    return {k: dropout for k in names if hasattr(config, k)}


def is_gpt2_like(tokenizer: PreTrainedTokenizerBase) -> bool:
    """True when the tokenizer has no distinct start and end tokens (GPT-2's <|endoftext|> is both)."""
    return tokenizer.bos_token is None or tokenizer.eos_token is None or tokenizer.bos_token == tokenizer.eos_token


def add_special_tokens(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, mode: str = "auto") -> None:
    """Give model and tokenizer distinct start/end/pad tokens (the article's <sos>/<eos>/<pad>) and resize."""
    if mode == "article" or (mode == "auto" and is_gpt2_like(tokenizer)):
        tokenizer.add_special_tokens(dict(ARTICLE_TOKENS))
    else:
        if tokenizer.bos_token is None or tokenizer.eos_token is None:
            raise UserError("the model's tokenizer has no start or end token; use --special-tokens article")
        if tokenizer.pad_token is None:
            tokenizer.add_special_tokens({"pad_token": ARTICLE_TOKENS["pad_token"]})
    if len(tokenizer) > model.get_input_embeddings().weight.shape[0]:
        # mean_resizing: new rows start at the mean of the old ones, so <sos>/<eos> begin as "typical" tokens
        model.resize_token_embeddings(len(tokenizer), mean_resizing=True)
    for cfg in (model.config, model.generation_config):
        cfg.bos_token_id = tokenizer.bos_token_id
        cfg.eos_token_id = tokenizer.eos_token_id
        cfg.pad_token_id = tokenizer.pad_token_id


def load(model: str, special_tokens: str = "auto", dropout: float | None = None
         ) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load model and tokenizer from a hub id, directory or .gguf file, ready for <sos> s <eos> training."""
    source = resolve(model)
    _quiet_transformers()
    tokenizer = load_tokenizer(source, model)
    lm = load_model(source, model, dropout)
    _drop_spent_quantizer(lm)
    add_special_tokens(lm, tokenizer, special_tokens)
    tokenizer.padding_side = "left"  # batched generation (pipeline too) pads on the left
    return lm, tokenizer


def _drop_spent_quantizer(model: PreTrainedModel) -> None:
    """Forget the GGUF quantizer once every weight was de-quantized to plain tensors.

    transformers keeps it attached after its legacy GGUF loader de-quantized everything, and then refuses to
    save_pretrained() the (now ordinary fp32) model, so a run started from a .gguf could not save a checkpoint.
    """
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is not None and model.config.to_dict().get("quantization_config", {}).get("quant_method") == "gguf" \
            and not getattr(quantizer, "packed_modules", None):
        quantizer.remove_quantization_config(model)


def save(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, directory: Path) -> None:
    """Save as a Hugging Face directory: config, safetensors weights, tokenizer, generation config."""
    model.save_pretrained(directory, safe_serialization=True)
    tokenizer.save_pretrained(directory)


def _quiet_transformers() -> None:
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    logging.getLogger("accelerate").setLevel(logging.ERROR)
