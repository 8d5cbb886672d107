"""What training changes in a loaded model: LoRA adapters, frozen layers, compiled layers, activation
checkpointing, the fast CPU dropout; and the model a run trains (the base, or its last checkpoint on resume)."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import PreTrainedModel

from gpt2tune.errors import UserError
from gpt2tune.hardware import choose_device
from gpt2tune.model import checks as model_files
from gpt2tune.model import load as modeling
from gpt2tune.model.cpu_dropout import use_cpu_dropout


def check_saveable(model, name: str) -> None:
    """Refuse, in seconds, a model that transformers would refuse to save at the first checkpoint."""
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is not None and not quantizer.is_serializable():
        method = getattr(quantizer.quantization_config, "quant_method", "quantized")
        raise UserError(f"cannot train {name}: it is quantized ({getattr(method, 'value', method)}) in a form "
                        "transformers cannot save, so no checkpoint could be written; use a dense (fp32/bf16) copy")


def lora_targets(model: PreTrainedModel) -> tuple[list[str] | str, bool]:
    """LoRA target modules and fan_in_fan_out: GPT-2's Conv1D layers, else every linear layer."""
    if getattr(model.config, "model_type", "") == "gpt2":
        return ["c_attn", "c_proj", "c_fc"], True  # Conv1D stores weights as (in, out)
    return "all-linear", False


def check_lora_rank(model: PreTrainedModel, targets: list[str] | str, r: int) -> None:
    """Refuse, before PEFT allocates the adapters, a rank above what the adapted layers have: an update of a
    (m, n) weight has rank min(m, n) at most, so more only takes memory (a rank of 10**9 asks for terabytes)."""
    head = model.get_output_embeddings()
    ranks = [min(m.weight.shape) for name, m in model.named_modules()
             if m is not head and getattr(getattr(m, "weight", None), "ndim", 0) == 2
             and (name.rsplit(".", 1)[-1] in targets if isinstance(targets, list) else isinstance(m, torch.nn.Linear))]
    if ranks and r > min(ranks):
        raise UserError(f"lora-r {r} is above the rank of the layers LoRA adapts in this model ({min(ranks)} at "
                        f"most): use --lora-r {min(ranks)} or less (LoRA's usual ranks are 4 to 64)")


def apply_lora(model: PreTrainedModel, r: int, alpha: float, dropout: float, adapter: Path | None = None):
    """Wrap the model with trainable LoRA adapters (fresh, or loaded from a saved adapter directory)."""
    try:
        from peft import LoraConfig, PeftModel, get_peft_model
    except ImportError:
        raise UserError("--lora needs PEFT: pip install 'gpt2tune[lora]'") from None
    if adapter is not None:
        return PeftModel.from_pretrained(model, str(adapter), is_trainable=True)
    targets, fan_in_fan_out = lora_targets(model)
    check_lora_rank(model, targets, r)
    config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=targets,
                        fan_in_fan_out=fan_in_fan_out, task_type="CAUSAL_LM")
    return get_peft_model(model, config)


def _layers(model: PreTrainedModel, what: str) -> tuple[list, int]:
    """The base model's children and the index of its transformer layer list."""
    children = list(model.base_model.named_children())
    at = next((i for i, (_, m) in enumerate(children) if isinstance(m, torch.nn.ModuleList)), None)
    if at is None:
        raise UserError(f"{what}: cannot find the layer list of {type(model).__name__}")
    return children, at


def freeze_layers(model: PreTrainedModel, top: int) -> None:
    """Train only the top `top` transformer layers and what follows them (the final norm); freeze the rest."""
    children, at = _layers(model, "--freeze-layers")
    layers = children[at][1]
    if top > len(layers):
        raise UserError(f"--freeze-layers {top}: the model has only {len(layers)} layers")
    model.requires_grad_(False)
    for layer in layers[len(layers) - top:]:
        layer.requires_grad_(True)
    for _, module in children[at + 1:]:
        module.requires_grad_(True)
    # a tied output head shares the (frozen) input embeddings; an untied one stays frozen too


def trainable_parameters(model) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    params = list(model.parameters())
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)


def compile_layers(model: PreTrainedModel) -> None:
    """torch.compile each transformer layer in place (regional compilation: one compile serves all layers)."""
    children, at = _layers(model, "--compile")
    for layer in children[at][1]:
        layer.compile()


def enable_checkpointing(model: PreTrainedModel) -> None:
    """Recompute each layer's activations in the backward pass (transformers' own activation checkpointing)."""
    if not model.supports_gradient_checkpointing:
        raise UserError(f"--gradient-checkpointing: {type(model).__name__} does not support it")
    # non-reentrant: works with frozen inputs and keyword arguments (4D mask, position_ids); the dropout RNG
    # state is replayed in the recompute, so the gradients are those of the plain model
    enable = getattr(model, "activation_checkpointing_enable", None)
    if enable is not None:
        enable({"use_reentrant": False})
    else:
        model.gradient_checkpointing_enable({"use_reentrant": False})


def own_memory(model: PreTrainedModel) -> int:
    """Copy the weights that still live in the checkpoint's memory-mapped file into the process's own memory;
    returns the bytes copied. For a full fine-tune: its optimizer writes every weight at the first step, which
    turns each mapped page into a private copy anyway, and once no weight views the file the mapping closes, with
    the pages that the embedding resize read and no longer uses (GPT-2's 50,257 x 768 table: 0.15 GB resident for
    the whole run otherwise). GPT-2 124M, 2 cores: peak RSS of training 2.92-3.08 -> 2.77-2.82 GiB, same speed."""
    copied = 0
    with torch.no_grad():
        for t in (*model.parameters(), *model.buffers()):
            if not t.untyped_storage().resizable():  # storage torch did not allocate: a file mapping, a buffer
                t.data = t.data.clone()
                copied += t.numel() * t.element_size()
    return copied


def prepare_for_training(model: PreTrainedModel, cfg, resume_dir: Path | None = None):
    """Apply cfg's --freeze-layers / --gradient-checkpointing / --lora / --compile; on resume a LoRA run reloads
    its saved adapter. Dropout takes the fast CPU path (cpu_dropout.py) unless --compile fuses it instead. A full
    fine-tune on the CPU writes every weight where it is, so its weights leave the checkpoint's file mapping first
    (a LoRA run's base weights are only read, and stay mapped: pages the kernel may drop and read again; on an
    accelerator the weights move off it anyway)."""
    if not cfg.lora and choose_device(cfg.device) == "cpu":
        own_memory(model)
    if not cfg.compile:
        use_cpu_dropout(model)
    if cfg.freeze_layers:
        freeze_layers(model, cfg.freeze_layers)
    if getattr(cfg, "gradient_checkpointing", False):
        enable_checkpointing(model)
    if cfg.compile:
        compile_layers(model)
    if cfg.lora:
        adapter = resume_dir / modeling.ADAPTER_DIR if resume_dir is not None else None
        if adapter is not None and not adapter.is_dir():
            raise UserError(f"cannot resume a --lora run: {adapter} is missing")
        model = apply_lora(model, cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout, adapter)
    return model


def load_for_training(cfg, out: Path, resuming: bool):
    """The model to train (the base, or the run's last/ on resume) and its tokenizer; checked to fit and save."""
    model, tokenizer = _load_run_model(cfg, out, resuming)
    modeling.check_block_size(model, cfg.block_size, cfg.batch_size)
    check_saveable(model, cfg.model)  # fail in seconds, not at the first checkpoint after an evaluation
    return model, tokenizer


def _load_run_model(cfg, out: Path, resuming: bool):
    if not resuming:
        model, tokenizer = modeling.load(cfg.model, cfg.special_tokens, cfg.dropout)
        return prepare_for_training(model, cfg, None), tokenizer
    try:
        # a LoRA run resumes from the base model plus its saved adapter (last/ holds merged weights)
        model, tokenizer = modeling.load(cfg.model if cfg.lora else str(out / "last"), cfg.special_tokens,
                                         cfg.dropout)
        return prepare_for_training(model, cfg, out / "last"), tokenizer
    except model_files.ModelFileError as e:  # found by the loading checks: the message names the bad file
        from gpt2tune.run.checkpoint import damaged

        raise damaged(out / "last", out, e) from None
    except UserError:
        raise
    except Exception as e:  # a truncated safetensors file or config shows up as many exception types
        from gpt2tune.run.checkpoint import damaged

        raise damaged(out / "last", out, e) from None
