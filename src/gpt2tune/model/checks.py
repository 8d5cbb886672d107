"""Checks around loading a model: its files are there, undamaged, and fit its config (else one clear line)."""

from __future__ import annotations

import json
import pickle
import re
import struct
from pathlib import Path
from typing import Any

from gpt2tune.errors import UserError

# What transformers, safetensors, torch.load and the GGUF reader raise for a damaged or wrong file: at the
# loading boundary each of these means "this file can't be loaded", never a bug in gpt2tune
LOAD_ERRORS: tuple[type[BaseException], ...] = (OSError, ValueError, RuntimeError, EOFError, KeyError, TypeError,
                                                 IndexError, pickle.UnpicklingError, struct.error)
try:
    from safetensors import SafetensorError

    LOAD_ERRORS += (SafetensorError,)
except ImportError:  # older safetensors: the error lives in the Rust module only
    pass

class ModelFileError(UserError):
    """A model's files are missing, damaged or don't fit each other (a UserError: one line naming the file)."""


TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "tokenizer.model", "spiece.model", "vocab.txt",
                   "sentencepiece.bpe.model", "tekken.json")
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")
OOM_RATIO = 1.5  # a config needing this many times the parameters its weight files hold belongs to another model


def weight_file(directory: str | Path, gguf_file: str | None = None) -> Path | None:
    """The file a local model's weights load from (the .gguf, the safetensors/bin file or its index)."""
    d = Path(directory)
    if gguf_file:
        return d / gguf_file
    return next((d / f for f in WEIGHT_FILES if (d / f).is_file()), None)


def check_tokenizer_files(directory: str | Path) -> None:
    """A local model directory must hold tokenizer files, else transformers loads an empty tokenizer."""
    d = Path(directory)
    if not any((d / f).is_file() for f in TOKENIZER_FILES):
        raise ModelFileError(f"{d} has no tokenizer files ({', '.join(TOKENIZER_FILES[:2])}, ...): copy them from the "
                        "model it was trained from, or save the tokenizer there with save_pretrained")


# small JSON files of a model directory that transformers reads as objects (a list or a number in one of them
# fails deep inside it, as an AttributeError or a TypeError)
OBJECT_FILES = ("config.json", "generation_config.json", "tokenizer_config.json", "special_tokens_map.json",
                "added_tokens.json", "preprocessor_config.json")
# the sizes a config sets that a model is built from: each must be a positive whole number (0 divides by zero)
SIZE_KEYS = ("n_layer", "num_hidden_layers", "n_head", "num_attention_heads", "num_key_value_heads", "n_embd",
             "hidden_size", "n_positions", "max_position_embeddings", "n_inner", "intermediate_size", "vocab_size",
             "head_dim", "n_ctx")


def check_json_objects(directory: str | Path) -> None:
    """Each small JSON file of a local model directory that is there must hold an object (not a list, a number,
    or something else than JSON)."""
    d = Path(directory)
    for name in OBJECT_FILES:
        f = d / name
        if not f.is_file() or f.stat().st_size > 1 << 24:  # a huge one: transformers' own error says it
            continue
        try:
            value = json.loads(f.read_text(encoding="utf-8"))
        except (ValueError, OSError) as e:  # UnicodeDecodeError is a ValueError
            raise ModelFileError(f"cannot load {f}: it is not valid JSON ({' '.join(str(e).split())[:120]})") from None
        if not isinstance(value, dict):
            raise ModelFileError(f"cannot load {f}: it holds a {type(value).__name__}, not a JSON object")


def check_model_json(directory: str | Path) -> None:
    """A local model's small JSON files hold objects, and the sizes in its config.json (layers, heads, widths,
    context, vocabulary) are positive whole numbers: checked before transformers reads or builds anything."""
    check_json_objects(directory)
    f = Path(directory) / "config.json"
    if not f.is_file():
        return
    config = json.loads(f.read_text(encoding="utf-8"))
    for key in SIZE_KEYS:
        value = config.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ModelFileError(f"{f}: {key} must be a positive whole number, got {str(value)[:40]}")


def check_tokenizer(tokenizer: Any, name: str) -> None:
    """A tokenizer with no vocabulary (files present but empty or wrong) is an error, not an empty tokenizer."""
    if (getattr(tokenizer, "vocab_size", 0) or 0) < 2:
        raise ModelFileError(f"the tokenizer of {name} is empty (its vocabulary has {tokenizer.vocab_size} tokens): "
                        "its tokenizer files are damaged or belong to no model")


def _file_parameters(files: list[Path]) -> int:
    """Numbers stored in safetensors files (from their headers: nothing is loaded)."""
    from safetensors import safe_open

    total = 0
    for f in files:
        with safe_open(str(f), framework="pt") as st:
            for key in st.keys():
                n = 1
                for dim in st.get_slice(key).get_shape():
                    n *= dim
                total += n
    return total


def _safetensors_files(weights: Path) -> list[Path]:
    if weights.name.endswith(".index.json"):
        index = json.loads(weights.read_text(encoding="utf-8"))
        if not isinstance(index, dict) or not isinstance(index.get("weight_map"), dict):
            raise ModelFileError(f"{weights} is not a weight index (no weight_map)")
        return [weights.parent / f for f in sorted(set(map(str, index["weight_map"].values())))]
    return [weights]


def parameter_count(config: Any) -> int:
    """The parameters of the model `config` describes, without building it in full.

    Even on the meta device a model of 100,000 layers takes minutes to build; one of 1 and one of 2 layers take
    milliseconds, and every further layer adds what the second one did.
    """
    import copy

    import torch
    from transformers import AutoModelForCausalLM

    def built(c: Any) -> int:
        with torch.device("meta"):
            return sum(p.numel() for p in AutoModelForCausalLM.from_config(c).parameters())

    layers = getattr(config, "num_hidden_layers", None)
    if not isinstance(layers, int) or isinstance(layers, bool) or layers <= 2 or getattr(config, "layer_types", None):
        return built(config)  # (a config that lists its layers' types is built in full: it has to match)
    one, two = copy.deepcopy(config), copy.deepcopy(config)
    one.num_hidden_layers, two.num_hidden_layers = 1, 2
    first, second = built(one), built(two)
    return first + (second - first) * (layers - 1)


def check_size(directory: str | Path, name: str) -> None:
    """Refuse, before building it, a config.json that describes a far bigger model than the weight files hold,
    or one whose fp32 weights alone exceed this machine's memory.

    A config of another model type (a 7B llama over 124M GPT-2 weights) would otherwise be built and randomly
    initialised in full, which can take all the memory before transformers reports the missing weights.
    """
    from transformers import AutoConfig

    from gpt2tune.hardware import total_memory

    d = Path(directory)
    weights = weight_file(d)
    if weights is None:
        return
    try:
        config = AutoConfig.from_pretrained(str(d))
        if getattr(config, "quantization_config", None):
            return  # packed weights: fewer stored numbers than parameters is normal
        # .bin files: transformers' own key check after loading covers them; the memory check still holds
        have = _file_parameters(_safetensors_files(weights)) if "safetensors" in weights.name else None
        need = parameter_count(config)
    except UserError:
        raise
    except LOAD_ERRORS as e:
        raise load_error(e, name, weights) from None
    layers = getattr(config, "num_hidden_layers", None)
    described = f"{d / 'config.json'} describes a model of " + (f"{layers:,} layers, " if isinstance(layers, int)
                                                               else "") + f"{need:,} parameters"
    if have is not None and need > OOM_RATIO * have:
        raise ModelFileError(f"{described} but {weights} holds {have:,}: the config and the weights belong to "
                             "different models")
    memory = total_memory()
    if memory and need * 4 > memory:
        raise ModelFileError(f"{described} ({need * 4 / 2**30:,.1f} GiB in fp32), more than this machine's "
                             f"{memory / 2**30:,.1f} GiB of memory")


def _extra_layers(keys: list[str], model: Any) -> list[str]:
    """The keys that belong to transformer layers the model doesn't have (a checkpoint deeper than its config)."""
    import torch

    found = next(((n, m) for n, m in model.base_model.named_children() if isinstance(m, torch.nn.ModuleList)), None)
    if found is None:
        return []
    pattern = re.compile(rf"(?:^|\.){re.escape(found[0])}\.(\d+)\.")
    return [k for k in keys if (m := pattern.search(k)) and int(m.group(1)) >= len(found[1])]


def check_loading_info(info: dict[str, Any], model: Any, name: str, weights: Path | str | None) -> None:
    """Weights missing from the file, of the wrong shape, or of layers the config lacks: config and weights don't
    fit. Other left-over weights (old buffers such as attn.masked_bias, another task's head) are ignored, as
    transformers ignores them."""
    where = weights or name

    def keys(kind: str) -> list[str]:
        return sorted(str(k[0] if isinstance(k, tuple) else k) for k in info.get(kind) or [])

    for found, what in ((keys("missing_keys"), "has no"),
                        (keys("mismatched_keys"), "has weights of the wrong shape for"),
                        (_extra_layers(keys("unexpected_keys"), model), "has layers the config has no place for:")):
        if found:
            shown = ", ".join(found[:3]) + (f" and {len(found) - 3} more" if len(found) > 3 else "")
            raise ModelFileError(f"{where} does not fit its config.json: it {what} {shown} (the config and the weights "
                            "belong to different models)")


def load_error(err: BaseException, name: str, weights: Path | str | None) -> ModelFileError:
    """One line for a failed load, naming the file that failed."""
    text = " ".join(str(err).split())
    where = weights or name
    if "ignore_mismatched_sizes" in text:
        return ModelFileError(f"{where} does not fit its config.json: weight shapes differ (the config and the weights "
                         "belong to different models)")
    if str(where).endswith(".bin") or isinstance(err, pickle.UnpicklingError):
        # random bytes make the unpickler fail in many ways (IndexError, KeyError, ...): all mean the same
        return ModelFileError(f"cannot load {where}: it is not a PyTorch checkpoint, or it is damaged "
                              f"({type(err).__name__}: {text[:100]})")
    if type(err).__name__ == "SafetensorError":
        return ModelFileError(f"cannot load {where}: it is damaged or not a safetensors file ({text[:160]})")
    return ModelFileError(f"cannot load {where}: {text[:200] or type(err).__name__}")
