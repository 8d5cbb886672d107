"""Damaged or mismatched model files: every command that loads a model fails with one line naming the file."""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path

import pytest
from attack import one_line_error, run_cli, snapshot
from conftest import make_corpus


def _config(d: Path, **changes) -> None:
    config = json.loads((d / "config.json").read_text())
    config.update(changes)
    (d / "config.json").write_text(json.dumps(config))


def _truncate(d: Path) -> None:
    f = d / "model.safetensors"
    os.truncate(f, f.stat().st_size // 2)


def _random_bin(d: Path) -> None:
    (d / "model.safetensors").unlink()
    (d / "pytorch_model.bin").write_bytes(random.Random(0).randbytes(4096))


def _no_tokenizer(d: Path) -> None:
    for name in ("vocab.json", "merges.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        (d / name).unlink(missing_ok=True)


def _empty_tokenizer(d: Path) -> None:
    _no_tokenizer(d)
    (d / "vocab.json").write_text("{}")
    (d / "merges.txt").write_text("#version: 0.2\n")


DAMAGE = {  # name -> (make the damage, what the error line says, the file it names)
    "truncated safetensors": (_truncate, "damaged or not a safetensors file", "model.safetensors"),
    "random safetensors": (lambda d: (d / "model.safetensors").write_bytes(os.urandom(5000)),
                           "damaged or not a safetensors file", "model.safetensors"),
    "random pytorch_model.bin": (_random_bin, "not a PyTorch checkpoint", "pytorch_model.bin"),
    "no tokenizer files": (_no_tokenizer, "has no tokenizer files", "model-no tokenizer files"),
    "empty tokenizer": (_empty_tokenizer, "is empty", "model-empty tokenizer"),
    "config with extra layers": (lambda d: _config(d, n_layer=4), "it has no transformer.h.2.", "model.safetensors"),
    "config with fewer layers": (lambda d: _config(d, n_layer=1), "it has layers the config has no place for",
                                 "model.safetensors"),
    "config of another model_type": (lambda d: _config(d, model_type="llama", architectures=["LlamaForCausalLM"]),
                                     "belong to different models", "config.json"),
    "config of another width": (lambda d: _config(d, n_embd=128), "belong to different models", "model.safetensors"),
}


@pytest.fixture(scope="module")
def damaged(tiny_model, tmp_path_factory) -> dict[str, Path]:
    """A copy of the tiny model per kind of damage, plus a fake .gguf file."""
    root = tmp_path_factory.mktemp("damaged")
    out = {}
    for name, (damage, _, _) in DAMAGE.items():
        d = shutil.copytree(tiny_model, root / f"model-{name}")
        damage(d)
        out[name] = d
    (root / "fake.gguf").write_bytes(b"GGUF" + os.urandom(2000))
    (root / "not-gguf.gguf").write_bytes(os.urandom(2000))
    out["fake gguf"], out["not gguf"] = root / "fake.gguf", root / "not-gguf.gguf"
    return out


@pytest.mark.parametrize("name", list(DAMAGE))
def test_generate_names_the_damaged_file(damaged, capsys, name):
    before = snapshot(damaged[name])
    rc, out, err = run_cli(capsys, "generate", damaged[name], "Tokyo is", "--max-new-tokens", "3")
    _, says, file = DAMAGE[name]
    one_line_error(rc, err, says, file)
    assert out == ""
    assert snapshot(damaged[name]) == before  # nothing written into the model directory


def test_any_random_pytorch_bin_is_the_same_one_line(damaged, capsys):
    # random bytes fail the unpickler in many ways (UnpicklingError, IndexError "pop from empty list", ...)
    d = damaged["random pytorch_model.bin"]
    for seed in range(1, 5):
        (d / "pytorch_model.bin").write_bytes(random.Random(seed).randbytes(4096))
        rc, out, err = run_cli(capsys, "generate", d, "Tokyo is")
        one_line_error(rc, err, "pytorch_model.bin: it is not a PyTorch checkpoint, or it is damaged")


@pytest.mark.parametrize("name", ["fake gguf", "not gguf"])
def test_fake_gguf_is_one_line(damaged, capsys, name):
    rc, out, err = run_cli(capsys, "generate", damaged[name], "Tokyo is")
    one_line_error(rc, err, damaged[name].name)
    assert out == ""


def test_hub_style_checkpoint_with_old_buffers_still_loads(tiny_model, tmp_path):
    # the hub's GPT-2 checkpoints name weights without "transformer." and may carry old attention-mask buffers:
    # left-over weights that are no layer the config lacks are ignored, as transformers ignores them
    import torch
    from safetensors.torch import load_file, save_file

    from gpt2tune.model import load as modeling

    d = shutil.copytree(tiny_model, tmp_path / "hub-style")
    weights = {k.removeprefix("transformer."): v for k, v in load_file(d / "model.safetensors").items()}
    weights.update({f"h.{i}.attn.masked_bias": torch.tensor(-1e4) for i in range(2)})
    save_file(weights, d / "model.safetensors", metadata={"format": "pt"})
    model, _ = modeling.load(str(d))
    assert torch.equal(model.transformer.h[1].mlp.c_fc.weight, weights["h.1.mlp.c_fc.weight"])


@pytest.fixture()
def corpus(tmp_path) -> Path:
    p = tmp_path / "heldout.txt"
    p.write_text("\n".join(make_corpus(40)) + "\n", encoding="utf-8")
    return p


@pytest.mark.parametrize("name", ["random safetensors", "config with extra layers"])
def test_evaluate_names_the_damaged_file(damaged, capsys, corpus, name):
    rc, out, err = run_cli(capsys, "evaluate", damaged[name], "--data", corpus)
    one_line_error(rc, err, DAMAGE[name][1], DAMAGE[name][2])
    assert out == ""


def test_compare_names_the_damaged_file_and_writes_nothing(damaged, tiny_model, capsys, corpus, tmp_path):
    out_dir = tmp_path / "cmp"
    rc, out, err = run_cli(capsys, "compare", "--base", damaged["truncated safetensors"], "--tuned", tiny_model,
                           "--data", corpus, "--out", out_dir, "--samples", "1", "--max-new-tokens", "3")
    one_line_error(rc, err, "model.safetensors", "damaged")
    assert not out_dir.exists()


@pytest.mark.parametrize("name", ["random pytorch_model.bin", "no tokenizer files"])
def test_serve_fails_at_startup_with_one_line(damaged, capsys, name):
    rc, out, err = run_cli(capsys, "serve", damaged[name], "--port", "0")
    one_line_error(rc, err, DAMAGE[name][1])


def test_train_refuses_a_model_without_tokenizer(damaged, capsys, corpus, tmp_path):
    run = tmp_path / "run"
    rc, out, err = run_cli(capsys, "train", "--data", corpus, "--model", damaged["no tokenizer files"],
                           "--out", run, "--epochs", "1", "--samples", "0")
    one_line_error(rc, err, "has no tokenizer files")
    assert not run.exists()
