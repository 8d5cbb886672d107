"""Modeling additions for speed and small hardware: fused GELU, --lora, --freeze-layers (and LoRA resume)."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file
from transformers import GPT2LMHeadModel

import gpt2tune
from gpt2tune.config import TrainConfig
from gpt2tune.errors import UserError
from gpt2tune.model import load as modeling
from gpt2tune.train import adapt as tuning


def _weights(d) -> dict[str, torch.Tensor]:
    return load_file(str(d / "model.safetensors"))


def _run(tiny_model, corpus_file, out, **kw):
    opts = dict(data=str(corpus_file), out=str(out), model=str(tiny_model), block_size=64, batch_size=4, epochs=1,
                samples=0, lr=5e-3, warmup=0.0, patience=None, threads=1)
    opts.update(kw)
    return gpt2tune.train(**opts)


def test_freeze_layers_trains_only_the_top_layers(tiny_model):
    model, _ = modeling.load(str(tiny_model))
    tuning.freeze_layers(model, 1)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith(("transformer.h.1.", "transformer.ln_f.")) for n in trainable)
    assert any(n.startswith("transformer.ln_f.") for n in trainable)
    with pytest.raises(UserError, match="only 2 layers"):
        tuning.freeze_layers(model, 3)


def test_freeze_layers_leaves_frozen_weights_unchanged(tiny_model, corpus_file, tmp_path):
    _run(tiny_model, corpus_file, tmp_path / "run", freeze_layers=1, max_steps=3)
    base, after = _weights(tiny_model), _weights(tmp_path / "run" / "last")
    resized = {"transformer.wte.weight"}  # <sos>/<eos>/<pad> rows were added; the old rows must be untouched
    for name, w in base.items():
        got = after[name][: w.shape[0]] if name in resized else after[name]
        if name.startswith(("transformer.h.1.", "transformer.ln_f.")):
            continue
        assert torch.equal(got, w), name
    assert not torch.equal(after["transformer.h.1.mlp.c_fc.weight"], base["transformer.h.1.mlp.c_fc.weight"])


def test_lora_trains_only_adapters(tiny_model):
    model, _ = modeling.load(str(tiny_model))
    cfg = TrainConfig(data="x", lora=True, lora_r=4)
    model = tuning.prepare_for_training(model, cfg)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    assert {n.split(".")[-4] for n in trainable} == {"c_attn", "c_proj", "c_fc"}
    total = sum(p.numel() for p in model.parameters())
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) < 0.1 * total


def test_lora_best_loads_without_peft_and_differs_from_base(tiny_model, corpus_file, tmp_path):
    _run(tiny_model, corpus_file, tmp_path / "run", lora=True, max_steps=4, lora_dropout=0.0)
    best = tmp_path / "run" / "best"
    assert not (best / "adapter_config.json").exists()  # a plain HF model directory, not an adapter
    assert (best / modeling.ADAPTER_DIR / "adapter_config.json").is_file()
    merged = GPT2LMHeadModel.from_pretrained(best)  # plain transformers, no PEFT
    base = _weights(tiny_model)
    changed = [n for n, p in merged.state_dict().items()
               if n in base and p.shape == base[n].shape and not torch.equal(p, base[n])]
    assert any(".c_attn.weight" in n for n in changed) and any(".mlp.c_fc.weight" in n for n in changed)
    assert not any("wte" in n or "ln_" in n for n in changed)  # only LoRA targets change


def test_lora_resume_continues_the_same_adapter(tiny_model, corpus_file, tmp_path):
    _run(tiny_model, corpus_file, tmp_path / "whole", lora=True, max_steps=4, eval_every=2, schedule="constant")
    _run(tiny_model, corpus_file, tmp_path / "split", lora=True, max_steps=2, eval_every=2, schedule="constant")
    # make the step-2 checkpoint look like a run killed after it (not one that reached its max_steps)
    state_file = tmp_path / "split" / "last" / "trainer_state.pt"
    state = torch.load(state_file, weights_only=False)
    state["loop"]["stopped"] = None
    torch.save(state, state_file)
    _run(tiny_model, corpus_file, tmp_path / "split", lora=True, max_steps=4, eval_every=2, schedule="constant",
         resume=True)
    a, b = _weights(tmp_path / "whole" / "last"), _weights(tmp_path / "split" / "last")
    for name in a:
        assert torch.allclose(a[name], b[name], atol=1e-6), name
    rows = [json.loads(x) for x in (tmp_path / "split" / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["step"] == 4


def test_fused_gelu_replaces_gelu_new_with_the_same_function(tiny_model):
    from transformers.activations import GELUTanh, NewGELUActivation

    model, _ = modeling.load(str(tiny_model))
    acts = [m for m in model.modules() if isinstance(m, (GELUTanh, NewGELUActivation))]
    assert len(acts) == 2 and all(type(a) is GELUTanh for a in acts)
    assert model.config.activation_function == "gelu_new"  # saved models are unchanged
    x = torch.linspace(-6, 6, 1001)
    assert torch.allclose(acts[0](x), NewGELUActivation()(x), atol=1e-6)


def _packed_loss_and_grads(model_dir, checkpointing: bool, seed: int = 0):
    from gpt2tune.data import blocks as data_blocks
    from gpt2tune.train.step import block_loss

    model, tok = modeling.load(str(model_dir), dropout=0.2)  # dropout on: the recompute must replay its masks
    model = tuning.prepare_for_training(model, TrainConfig(data="x", gradient_checkpointing=checkpointing))
    model.train()
    sentences = ["Tokyo is the capital of Japan.", "Mount Fuji is tall.", "Kyoto has many old temples and shrines.",
                 "Sushi is popular."]
    examples = data_blocks.encode(tok, sentences, tok.bos_token_id, tok.eos_token_id, 32)
    blocks = data_blocks.pack(examples, 32, tok.pad_token_id)
    b = data_blocks.batch(blocks, list(range(len(blocks))))
    torch.manual_seed(seed)
    loss = block_loss(model, b)
    loss.backward()
    return loss.detach(), {n: p.grad for n, p in model.named_parameters()}


def test_gradient_checkpointing_gives_the_same_loss_and_grads(tiny_model):
    loss, grads = _packed_loss_and_grads(tiny_model, False)
    loss_ckpt, grads_ckpt = _packed_loss_and_grads(tiny_model, True)
    other_loss, other_grads = _packed_loss_and_grads(tiny_model, False, seed=1)  # other dropout masks
    torch.testing.assert_close(loss_ckpt, loss, rtol=1e-6, atol=0)
    assert abs(float(other_loss - loss)) > 1e-4 * float(loss)
    assert grads.keys() == grads_ckpt.keys()
    for name, g in grads.items():
        scale = float(g.abs().max())
        # equal up to float rounding (about 3e-5 of the largest entry here); other masks move them by ~1
        assert float((grads_ckpt[name] - g).abs().max()) < 3e-4 * scale, name
        assert float((other_grads[name] - g).abs().max()) > 1e-2 * scale, name


def test_gradient_checkpointing_recomputes_every_layer(tiny_model):
    model, _ = modeling.load(str(tiny_model))
    tuning.prepare_for_training(model, TrainConfig(data="x", gradient_checkpointing=True))
    assert model.is_gradient_checkpointing
    assert all(layer.gradient_checkpointing for layer in model.transformer.h)


def test_gradient_checkpointing_run_resumes_exactly(tiny_model, corpus_file, tmp_path):
    kw = dict(gradient_checkpointing=True, eval_every=2, schedule="constant", dropout=0.1)
    _run(tiny_model, corpus_file, tmp_path / "whole", max_steps=4, **kw)
    _run(tiny_model, corpus_file, tmp_path / "split", max_steps=2, **kw)
    state_file = tmp_path / "split" / "last" / "trainer_state.pt"
    state = torch.load(state_file, weights_only=False)
    state["loop"]["stopped"] = None  # as if killed after its step-2 checkpoint
    torch.save(state, state_file)
    _run(tiny_model, corpus_file, tmp_path / "split", max_steps=4, resume=True, **kw)
    a, b = _weights(tmp_path / "whole" / "last"), _weights(tmp_path / "split" / "last")
    for name in a:
        assert torch.equal(a[name], b[name]), name
