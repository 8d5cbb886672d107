"""Model and tokenizer loading, special tokens, clear errors."""

from __future__ import annotations

import pytest
import torch

from gpt2tune.errors import UserError
from gpt2tune.model import load as modeling
from gpt2tune.model.builtin import gpt2_tokenizer


def test_real_gpt2_tokenizer_offline(tmp_path):
    tok = gpt2_tokenizer(tmp_path)
    assert tok("Japan Tokyo")["input_ids"] == [16504, 11790]
    assert tok("japan tokyo")["input_ids"] == [73, 2674, 284, 2584, 78]


def test_tokenizer_without_a_directory_leaves_no_files(tmp_path, monkeypatch):
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    tok = gpt2_tokenizer()
    assert tok("Japan Tokyo")["input_ids"] == [16504, 11790]
    assert list(tmp_path.iterdir()) == []


def test_article_special_tokens_get_article_ids(tiny_model):
    model, tok = modeling.load(str(tiny_model))
    assert tok.convert_tokens_to_ids(["<sos>", "<eos>", "<pad>"]) == [50257, 50258, 50259]
    assert (tok.bos_token, tok.eos_token, tok.pad_token) == ("<sos>", "<eos>", "<pad>")
    assert model.get_input_embeddings().weight.shape[0] == 50260
    assert model.generation_config.eos_token_id == 50258
    assert tok("Japan Tokyo", add_special_tokens=False)["input_ids"] == [16504, 11790]


def test_new_token_rows_start_at_the_mean_of_the_old(tiny_model):
    from safetensors.torch import load_file
    from transformers import GPT2LMHeadModel

    base = load_file(tiny_model / "model.safetensors")["transformer.wte.weight"]
    model, _ = modeling.load(str(tiny_model))
    table = model.get_input_embeddings().weight
    assert torch.equal(table[:50257], base)
    assert torch.allclose(table[50257:], base.mean(0).expand(3, -1), atol=1e-7)
    assert model.get_output_embeddings().weight.data_ptr() == table.data_ptr()  # still tied

    # an untied head with a bias: its new rows and bias entries start at their own means
    untied = GPT2LMHeadModel.from_pretrained(tiny_model, tie_word_embeddings=False)
    untied.lm_head.weight.data.normal_()
    untied.lm_head.bias = torch.nn.Parameter(torch.randn(50257))
    head, bias = untied.lm_head.weight.detach().clone(), untied.lm_head.bias.detach().clone()
    untied.resize_token_embeddings(50260, mean_resizing=False)
    modeling.start_at_mean(untied, 50257)
    assert untied.lm_head.weight.shape[0] == 50260 and untied.lm_head.bias.shape[0] == 50260
    assert torch.allclose(untied.lm_head.weight[50257:], head.mean(0).expand(3, -1), atol=1e-6)
    assert torch.allclose(untied.lm_head.bias[50257:], bias.mean().expand(3), atol=1e-6)
    assert torch.allclose(untied.get_input_embeddings().weight[50257:], base.mean(0).expand(3, -1), atol=1e-7)


def test_adding_tokens_draws_no_random_numbers(tiny_model):
    """The resize's random fill of the new table (by torch, then by the model's _init_weights) is skipped: every
    row is copied from the old table or set to the mean right after."""
    from transformers import AutoTokenizer, GPT2LMHeadModel

    init = torch.nn.init.normal_
    for tied in (True, False):
        model = GPT2LMHeadModel.from_pretrained(tiny_model, tie_word_embeddings=tied)
        head = model.lm_head.weight.detach().clone()
        state = torch.get_rng_state()
        modeling.add_special_tokens(model, AutoTokenizer.from_pretrained(tiny_model))
        assert torch.equal(torch.get_rng_state(), state)  # the old code drew 2 x 50,260 x d numbers here
        assert torch.equal(model.lm_head.weight[:50257], head)
        assert torch.isfinite(model.lm_head.weight).all() and model.lm_head.weight.shape[0] == 50260
        assert "_init_weights" not in vars(model) and torch.nn.init.normal_ is init  # both back as they were
    torch.nn.Linear(4, 4)  # and initialising draws again afterwards
    assert not torch.equal(torch.get_rng_state(), state)


def test_model_mode_keeps_own_tokens(tiny_model):
    model, tok = modeling.load(str(tiny_model), special_tokens="model")
    # GPT-2 has <|endoftext|> as both start and end; 'model' keeps it and only adds a pad token
    assert tok.bos_token == tok.eos_token == "<|endoftext|>"
    assert tok.pad_token == "<pad>"


def test_offline_hub_id_says_what_to_give_instead(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UserError, match="give a run directory, a local model directory") as e:
        modeling.load("gpt2-this-model-is-not-cached")
    assert "--model" not in str(e.value)  # generate, evaluate and serve take the model as an argument
    assert "gpt2tune demo" in str(e.value) and "SmolLM2-135M" in str(e.value)  # the offline routes
    with pytest.raises(UserError, match="^no such run or model: someone/not-cached .*the hub could not be reached"):
        modeling.load("someone/not-cached")

