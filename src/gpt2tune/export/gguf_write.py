"""A PyTorch causal LM and its tokenizer as llama.cpp expects them in a GGUF file (GPT-2 and the llama family).

The names, layouts and metadata keys follow llama.cpp's own converter (convert_hf_to_gguf.py); the binary format
is written by PyPI's `gguf` package.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from gpt2tune.errors import UserError

SUPPORTED = "gpt2 (GPT-2) and llama (Llama, SmolLM2, TinyLlama-style with a byte-level BPE tokenizer)"


def architecture(config) -> str:
    """The llama.cpp architecture for a transformers config, or a UserError saying what is supported."""
    model_type = getattr(config, "model_type", "?")
    if model_type not in ("gpt2", "llama"):
        raise UserError(f"cannot export model type '{model_type}' to GGUF: supported are {SUPPORTED}")
    return model_type


# ------------------------------------------------------------------------------------------------- weights

def _gpt2_checks(config) -> None:
    act = getattr(config, "activation_function", "gelu_new")
    if act not in ("gelu_new", "gelu_pytorch_tanh"):
        raise UserError(f"GPT-2 export: llama.cpp runs the tanh GELU, but this model uses '{act}'")
    if getattr(config, "scale_attn_by_inverse_layer_idx", False) or not getattr(config, "scale_attn_weights", True):
        raise UserError("GPT-2 export: this model scales attention differently from GPT-2, which llama.cpp assumes")


def _gpt2_tensors(model) -> Iterator[tuple[str, np.ndarray]]:
    """GPT-2's weights under llama.cpp's names; Conv1D weights are stored (in, out), llama.cpp wants (out, in)."""
    sd = {k: v.detach().float().cpu().numpy() for k, v in model.state_dict().items()}
    yield "token_embd.weight", sd["transformer.wte.weight"]
    yield "position_embd.weight", sd["transformer.wpe.weight"]
    parts = {"ln_1": "attn_norm", "attn.c_attn": "attn_qkv", "attn.c_proj": "attn_output", "ln_2": "ffn_norm",
             "mlp.c_fc": "ffn_up", "mlp.c_proj": "ffn_down"}
    for i in range(model.config.n_layer):
        for hf, gg in parts.items():
            w, b = sd[f"transformer.h.{i}.{hf}.weight"], sd[f"transformer.h.{i}.{hf}.bias"]
            yield f"blk.{i}.{gg}.weight", (w if hf.startswith("ln_") else w.T)
            yield f"blk.{i}.{gg}.bias", b
    yield "output_norm.weight", sd["transformer.ln_f.weight"]
    yield "output_norm.bias", sd["transformer.ln_f.bias"]
    # the head is tied to token_embd: llama.cpp reuses it when output.weight is absent
    if not _tied(model):
        yield "output.weight", sd["lm_head.weight"]


def _rope_theta(config) -> float:
    params = getattr(config, "rope_parameters", None) or {}
    scaling = getattr(config, "rope_scaling", None) or {}
    kind = params.get("rope_type") or scaling.get("rope_type") or scaling.get("type") or "default"
    if kind != "default":
        raise UserError(f"llama export: RoPE scaling '{kind}' is not supported yet (plain RoPE only)")
    return float(params.get("rope_theta") or getattr(config, "rope_theta", 10000.0))


def _llama_checks(config) -> None:
    if getattr(config, "hidden_act", "silu") != "silu":
        raise UserError(f"llama export: llama.cpp runs SiLU, but this model uses '{config.hidden_act}'")
    if getattr(config, "attention_bias", False) or getattr(config, "mlp_bias", False):
        raise UserError("llama export: attention or MLP biases are not supported")
    _rope_theta(config)


def _permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's rotary layout: each head's rows go from (two halves) to (interleaved pairs)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _llama_tensors(model) -> Iterator[tuple[str, np.ndarray]]:
    """Llama weights under llama.cpp's names, q and k permuted to llama.cpp's rotary layout."""
    cfg = model.config
    sd = {k: v.detach().float().cpu().numpy() for k, v in model.state_dict().items()}
    yield "token_embd.weight", sd["model.embed_tokens.weight"]
    n_head, n_kv = cfg.num_attention_heads, getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads
    parts = {"input_layernorm": "attn_norm", "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k",
             "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output", "post_attention_layernorm": "ffn_norm",
             "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down"}
    for i in range(cfg.num_hidden_layers):
        for hf, gg in parts.items():
            w = sd[f"model.layers.{i}.{hf}.weight"]
            if gg == "attn_q":
                w = _permute(w, n_head)
            elif gg == "attn_k":
                w = _permute(w, n_kv)
            yield f"blk.{i}.{gg}.weight", w
    yield "output_norm.weight", sd["model.norm.weight"]
    if not _tied(model):
        yield "output.weight", sd["lm_head.weight"]


def _tied(model) -> bool:
    head = model.get_output_embeddings()
    return head is not None and head.weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()


def _add_hparams(writer, model, arch: str, n_vocab: int) -> None:
    cfg = model.config
    if arch == "gpt2":
        writer.add_context_length(cfg.n_positions)
        writer.add_embedding_length(cfg.n_embd)
        writer.add_feed_forward_length(cfg.n_inner or 4 * cfg.n_embd)
        writer.add_block_count(cfg.n_layer)
        writer.add_head_count(cfg.n_head)
        writer.add_layer_norm_eps(cfg.layer_norm_epsilon)
        return
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    writer.add_context_length(cfg.max_position_embeddings)
    writer.add_embedding_length(cfg.hidden_size)
    writer.add_feed_forward_length(cfg.intermediate_size)
    writer.add_block_count(cfg.num_hidden_layers)
    writer.add_head_count(cfg.num_attention_heads)
    writer.add_head_count_kv(getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads)
    writer.add_rope_dimension_count(head_dim)
    writer.add_rope_freq_base(_rope_theta(cfg))
    writer.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    writer.add_vocab_size(n_vocab)


def _qtype(name: str, data: np.ndarray, kind: str):
    """llama.cpp's rule: 1-D tensors, norms, biases and position embeddings stay f32; the rest take `kind`."""
    from gguf import GGMLQuantizationType as Q

    if data.ndim <= 1 or name.endswith(("_norm.weight", ".bias")) or name == "position_embd.weight":
        return Q.F32
    return {"f32": Q.F32, "f16": Q.F16, "bf16": Q.BF16, "q8_0": Q.Q8_0}[kind]


def _encode(name: str, data: np.ndarray, kind: str):
    """A tensor in its file type (q8_0 needs rows of a multiple of 32: other rows fall back to f16, as llama.cpp)."""
    import gguf

    qtype = _qtype(name, data, kind)
    try:
        return gguf.quants.quantize(np.ascontiguousarray(data, dtype=np.float32), qtype), qtype
    except gguf.QuantError:
        return gguf.quants.quantize(data.astype(np.float32), gguf.GGMLQuantizationType.F16), \
            gguf.GGMLQuantizationType.F16


FILE_TYPES = {"f32": 0, "f16": 1, "q8_0": 7, "bf16": 32}  # gguf.LlamaFileType


# ------------------------------------------------------------------------------------------------ tokenizer

# llama.cpp's test text for telling pre-tokenizers apart (from convert_hf_to_gguf.py's get_vocab_base_pre)
PROBE = ("\n \n\n \n\n\n \t \t\t \t\n  \n   \n    \n     \n🚀 (normal) 😶\u200d🌫️ (multiple emojis concatenated) ✅ 🦙🦙 "
         "3 33 333 3333 33333 333333 3333333 33333333 3.3 3..3 3...3 កាន់តែពិសេសអាច😁 ?我想在apple工作1314151天～ "
         "------======= нещо на Български ''''''```````\"\"\"\"......!!!!!!?????? I've been 'told he's there, "
         "'RE you sure? 'M not sure I'll make it, 'D you like some tea? We'Ve a'lL")

_LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
                 r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")


def _known_pre_tokenizers() -> dict[str, object]:
    """llama.cpp pre-tokenizer names and the `tokenizers` pre-tokenizer that splits text the same way."""
    from tokenizers import Regex
    from tokenizers import pre_tokenizers as pt

    return {
        "gpt-2": pt.ByteLevel(add_prefix_space=False, use_regex=True),
        "smollm": pt.Sequence([pt.Digits(individual_digits=True), pt.ByteLevel(add_prefix_space=False)]),
        "llama-bpe": pt.Sequence([pt.Split(Regex(_LLAMA3_SPLIT), behavior="isolated"),
                                  pt.ByteLevel(add_prefix_space=False, use_regex=False)]),
    }


def pre_tokenizer_name(tokenizer) -> str:
    """Which llama.cpp pre-tokenizer splits text as this tokenizer does (found by splitting llama.cpp's probe)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None or backend.pre_tokenizer is None or backend.normalizer is not None:
        raise UserError("GGUF export needs a byte-level BPE tokenizer (GPT-2, SmolLM2, Llama 3 style); this "
                        "tokenizer is not one (sentencepiece-style tokenizers are not supported yet)")
    pieces = [p for p, _ in backend.pre_tokenizer.pre_tokenize_str(PROBE)]
    for name, pre in _known_pre_tokenizers().items():
        if [p for p, _ in pre.pre_tokenize_str(PROBE)] == pieces:
            return name
    raise UserError("GGUF export: the tokenizer splits text unlike any pre-tokenizer this exporter knows "
                    f"({', '.join(_known_pre_tokenizers())})")


@dataclass
class Vocab:
    """A tokenizer as GGUF metadata."""

    tokens: list[str]
    types: list[int]
    merges: list[str]
    pre: str


def vocab(tokenizer, n_vocab: int) -> Vocab:
    """Tokens (padded to the model's embedding rows), token types, merges and pre-tokenizer of a BPE tokenizer."""
    from gguf import TokenType

    model = json.loads(tokenizer.backend_tokenizer.to_str())["model"]
    if model.get("type") != "BPE" or model.get("byte_fallback"):
        raise UserError("GGUF export needs a byte-level BPE tokenizer; this one is "
                        f"{model.get('type')}{' with byte fallback' if model.get('byte_fallback') else ''}")
    pre = pre_tokenizer_name(tokenizer)
    by_id = {i: t for t, i in tokenizer.get_vocab().items()}
    used = {getattr(tokenizer, f"{k}_token_id", None) for k in ("bos", "eos", "pad")}
    beyond = sorted(i for i in by_id if i >= n_vocab)
    if any(i in used for i in beyond):
        raise UserError(f"the tokenizer's start/end/pad tokens have ids beyond the model's {n_vocab} embeddings")
    # other tokens beyond the embeddings can never be fed to the model (transformers' GGUF reader adds GPT-2's
    # <|endoftext|> as unknown token to any byte-level vocabulary): left out of the file
    added = tokenizer.added_tokens_decoder
    tokens, types = [], []
    for i in range(n_vocab):
        if i not in by_id:
            tokens.append(f"[PAD{i}]")
            types.append(TokenType.UNUSED)
        else:
            tokens.append(by_id[i])
            types.append(TokenType.NORMAL if i not in added else
                         TokenType.CONTROL if added[i].special else TokenType.USER_DEFINED)
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    return Vocab(tokens, [int(t) for t in types], merges, pre)


def _add_tokenizer(writer, tokenizer, v: Vocab) -> None:
    writer.add_tokenizer_model("gpt2")  # llama.cpp's name for byte-level BPE, whatever the architecture
    writer.add_tokenizer_pre(v.pre)
    writer.add_token_list(v.tokens)
    writer.add_token_types(v.types)
    writer.add_token_merges(v.merges)
    for kind, add in (("bos", writer.add_bos_token_id), ("eos", writer.add_eos_token_id),
                      ("pad", writer.add_pad_token_id), ("unk", writer.add_unk_token_id)):
        token_id = getattr(tokenizer, f"{kind}_token_id", None)
        if token_id is not None and token_id < len(v.tokens):
            add(int(token_id))
    # gpt2tune trains and samples `<bos> sentence <eos>`: llama.cpp should put the start token before a prompt too
    writer.add_add_bos_token(tokenizer.bos_token_id is not None)
    writer.add_add_eos_token(False)


# ---------------------------------------------------------------------------------------------------- file

def write(model, tokenizer, path: Path, kind: str, name: str) -> dict[str, int]:
    """Write `model` and `tokenizer` to the GGUF file `path` with weights of type `kind`; returns counts by type."""
    import gguf

    arch = architecture(model.config)
    (_gpt2_checks if arch == "gpt2" else _llama_checks)(model.config)
    n_vocab = model.get_input_embeddings().weight.shape[0]
    v = vocab(tokenizer, n_vocab)
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_type(gguf.GGUFType.MODEL)
    writer.add_name(name)
    _add_hparams(writer, model, arch, n_vocab)
    writer.add_file_type(FILE_TYPES[kind])
    if kind == "q8_0":
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    _add_tokenizer(writer, tokenizer, v)
    counts: dict[str, int] = {}
    for tensor_name, data in (_gpt2_tensors if arch == "gpt2" else _llama_tensors)(model):
        encoded, qtype = _encode(tensor_name, data, kind)
        writer.add_tensor(tensor_name, encoded, raw_dtype=qtype)
        counts[qtype.name] = counts.get(qtype.name, 0) + 1
    try:
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
    finally:
        writer.close()
    return counts
