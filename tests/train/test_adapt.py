"""A model that can't be saved fails in seconds, before the first evaluation; a GGUF-marked directory loads dense."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from conftest import make_corpus
from transformers import AutoModelForCausalLM, GgufConfig

from gpt2tune.cli import main
from gpt2tune.model import load as modeling
from gpt2tune.train import adapt as tuning


@pytest.fixture()
def gguf_marked(tiny_model, tmp_path) -> Path:
    """What transformers writes for a model loaded from a .gguf: dense weights, a config that says "gguf"."""
    d = tmp_path / "from-gguf"
    shutil.copytree(tiny_model, d)
    config = json.loads((d / "config.json").read_text())
    config["quantization_config"] = {**GgufConfig(gguf_file="model.gguf").to_dict(), "quant_method": "gguf"}
    (d / "config.json").write_text(json.dumps(config))
    return d


def test_gguf_marked_directory_loads_dense_and_saves(gguf_marked, tmp_path):
    plain = AutoModelForCausalLM.from_pretrained(gguf_marked)  # what transformers alone does with it
    with pytest.raises(ValueError, match="not serializable"):
        plain.save_pretrained(tmp_path / "plain")
    with pytest.raises(Exception, match="cannot train .*quantized \\(gguf\\).*cannot save"):
        tuning.check_saveable(plain, str(gguf_marked))
    model, tokenizer = modeling.load(str(gguf_marked))
    tuning.check_saveable(model, str(gguf_marked))
    modeling.save(model, tokenizer, tmp_path / "saved")
    assert (tmp_path / "saved" / "model.safetensors").is_file()


def test_train_refuses_an_unsaveable_model_before_the_first_evaluation(gguf_marked, tmp_path, monkeypatch, capsys):
    data = tmp_path / "japan.txt"
    data.write_text("\n".join(make_corpus(50)) + "\n")
    real = modeling.load_model
    # a model transformers can't save (as a GGUF-quantized one was before it loaded dense)
    monkeypatch.setattr(modeling, "load_model", lambda source, name, dropout=None: AutoModelForCausalLM
                        .from_pretrained(source.path) if "gguf" in name else real(source, name, dropout))
    evaluated = []
    monkeypatch.setattr("gpt2tune.train.step.evaluate_loss", lambda *a, **k: evaluated.append(1) or (1.0, 1))
    out = tmp_path / "run"
    assert main(["train", "--model", str(gguf_marked), "--data", str(data), "--out", str(out)]) == 1
    errors = [x for x in capsys.readouterr().err.splitlines() if x.startswith("gpt2tune: error:")]
    assert len(errors) == 1 and errors[0].startswith("gpt2tune: error: cannot train") and "quantized (gguf)" in errors[0]
    assert evaluated == [] and not out.exists()


@pytest.mark.parametrize("lora", [False, True])
def test_a_full_fine_tune_owns_its_weights_a_lora_run_reads_the_mapped_base(tiny_model, tmp_path, lora):
    from gpt2tune.config import TrainConfig

    cfg = TrainConfig(model=str(tiny_model), data="unused.txt", out=str(tmp_path / "run"), lora=lora)
    model, _ = tuning.load_for_training(cfg, tmp_path / "run", resuming=False)
    mapped = [n for n, p in model.named_parameters() if not p.untyped_storage().resizable()]
    if lora:
        assert mapped and not any(p.requires_grad for n, p in model.named_parameters() if n in mapped)
    else:
        assert mapped == []


def test_training_on_an_accelerator_leaves_the_weights_mapped(tiny_model, tmp_path, monkeypatch):
    from gpt2tune.config import TrainConfig

    monkeypatch.setattr(tuning, "choose_device", lambda requested="auto": "cuda")  # they move off the host anyway
    cfg = TrainConfig(model=str(tiny_model), data="unused.txt", out=str(tmp_path / "run"))
    model, _ = tuning.load_for_training(cfg, tmp_path / "run", resuming=False)
    assert any(not p.untyped_storage().resizable() for p in model.parameters())


def _mapped(path) -> bool:
    with open("/proc/self/maps", encoding="utf-8") as f:
        return str(path) in f.read()


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="reads the process's memory map (Linux)")
def test_own_memory_copies_the_weights_off_the_file_and_closes_its_mapping(tiny_model, tmp_path):
    import torch

    own = shutil.copytree(tiny_model, tmp_path / "model")  # a file no other test's model maps
    model, _ = modeling.load(str(own))  # GPT-2's vocabulary resized: the old token table is dead
    weights = own / "model.safetensors"
    mapped = [n for n, p in model.named_parameters() if not p.untyped_storage().resizable()]
    assert mapped and _mapped(weights)  # transformers leaves the other weights as views of the mapped file
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    copied = tuning.own_memory(model)
    assert copied == sum(model.get_parameter(n).numel() * 4 for n in mapped)
    assert all(p.untyped_storage().resizable() for p in model.parameters())
    assert not _mapped(weights)  # the mapping closed, with the pages only the resize read
    for n, p in model.named_parameters():
        assert torch.equal(p, before[n]), n
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight  # still tied
    assert tuning.own_memory(model) == 0
