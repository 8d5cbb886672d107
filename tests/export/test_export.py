"""GGUF export: files transformers (and llama.cpp, when installed) read back as the same model; bad input refused."""

from __future__ import annotations

import errno
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_corpus

from gpt2tune.cli import main
from gpt2tune.errors import UserError
from gpt2tune.export import gguf_write as gguf_model
from gpt2tune.export import run as ex
from gpt2tune.model import load as modeling
from gpt2tune.model.builtin import make_llama
from gpt2tune.model.source import resolve


@pytest.fixture(scope="module")
def gpt2_dir(tiny_model, tmp_path_factory) -> Path:
    """The tiny GPT-2 with the article's <sos>/<eos>/<pad> (ids 50257-50259), as a run directory's best/.

    Its embeddings are scaled up so next-token distributions are peaked like a trained model's: a random
    GPT-2's logits are nearly flat, and then float rounding alone decides which token is top-1.
    """
    run = tmp_path_factory.mktemp("gpt2run")
    lm, tokenizer = modeling.load(str(tiny_model), special_tokens="article")
    with torch.no_grad():
        lm.transformer.wte.weight.mul_(15.0)
    modeling.save(lm, tokenizer, run / "best")
    (run / "config.yaml").write_text("model: tiny\ntop_k: 40\n", encoding="utf-8")
    return run


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory) -> Path:
    return make_llama(tmp_path_factory.mktemp("llama") / "model", make_corpus(200))


@pytest.fixture(scope="module")
def gpt2_f16(gpt2_dir, tmp_path_factory) -> ex.ExportResult:
    out = tmp_path_factory.mktemp("gguf") / "tiny-f16.gguf"
    return ex.export(str(gpt2_dir), ex.ExportConfig(gguf=str(out), ollama=True))


def _leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.startswith("."))


def test_gpt2_f16_export_reads_back_as_the_same_model(gpt2_f16):
    from gpt2tune.model.gguf_read import reader

    r = gpt2_f16
    assert r.parity.passed and r.parity.top1 >= 0.99 and r.parity.positions > 200
    assert 0 <= r.parity.mean_kl < 1e-2
    assert r.parity.probe_ids == [16504, 11790]  # "Japan Tokyo", as llama.cpp must tokenize it too
    # f32: position_embd, 8 norms and biases per layer, output_norm's two; f16: token_embd, 4 matrices per layer
    assert r.tensors == {"F32": 1 + 2 * 8 + 2, "F16": 1 + 2 * 4}
    assert _leftovers(r.path.parent) == []
    assert r.path.stat().st_mode & 0o044  # not left private like the temporary file
    f = reader(r.path)
    fields = {k: f.fields[k].contents() for k in ("general.architecture", "tokenizer.ggml.pre",
                                                  "tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id",
                                                  "tokenizer.ggml.padding_token_id", "gpt2.context_length")}
    assert fields == {"general.architecture": "gpt2", "tokenizer.ggml.pre": "gpt-2",
                      "tokenizer.ggml.bos_token_id": 50257, "tokenizer.ggml.eos_token_id": 50258,
                      "tokenizer.ggml.padding_token_id": 50259, "gpt2.context_length": 256}
    names = {t.name for t in f.tensors}
    assert "output.weight" not in names  # the head is tied: llama.cpp reuses token_embd
    assert f.fields["tokenizer.ggml.tokens"].contents()[50257:50260] == ["<sos>", "<eos>", "<pad>"]
    assert f.fields["tokenizer.ggml.token_type"].contents()[50256:50260] == [3, 3, 3, 3]  # control tokens


def test_ollama_modelfile_takes_the_runs_sampling_settings(gpt2_f16):
    text = gpt2_f16.modelfile.read_text(encoding="utf-8")
    assert text.splitlines() == ["FROM ./tiny-f16.gguf", 'TEMPLATE """{{ .Prompt }}"""', 'PARAMETER stop "<eos>"',
                                 "PARAMETER temperature 1", "PARAMETER top_k 40", "PARAMETER top_p 0.9",
                                 "PARAMETER num_predict 50"]


@pytest.mark.parametrize("kind", ["f32", "f16", "bf16", "q8_0"])
def test_llama_exports_each_type_with_parity(llama_dir, tmp_path, kind):
    r = ex.export(str(llama_dir), ex.ExportConfig(gguf=str(tmp_path / f"m-{kind}.gguf"), type=kind))
    assert r.parity.passed, r.parity.problems
    if kind == "f32":
        assert r.parity.max_rel_diff <= 1e-4 and r.tensors == {"F32": 20}
    else:
        assert r.parity.top1 >= 0.99 and r.tensors == {"F32": 5, kind.upper(): 15}
    assert r.parity.probe_ids == modeling.load_tokenizer(resolve(str(llama_dir)), "x")(
        "Japan Tokyo", add_special_tokens=False)["input_ids"]
    assert _leftovers(tmp_path) == []


def test_llama_q_and_k_are_permuted_for_llama_cpp(llama_dir):
    from transformers import AutoModelForCausalLM

    lm = AutoModelForCausalLM.from_pretrained(llama_dir)
    tensors = dict(gguf_model._llama_tensors(lm))
    q = lm.model.layers[0].self_attn.q_proj.weight.detach().numpy()
    head = q[:16]  # head 0: 16 rows, rotary halves [0:8] and [8:16]
    assert np.array_equal(tensors["blk.0.attn_q.weight"][:16:2], head[:8])  # interleaved in llama.cpp's layout
    assert np.array_equal(tensors["blk.0.attn_q.weight"][1:16:2], head[8:])
    assert np.array_equal(tensors["blk.0.attn_v.weight"], lm.model.layers[0].self_attn.v_proj.weight.detach().numpy())


def test_generate_runs_on_an_exported_file(llama_dir, tmp_path, capsys):
    out = tmp_path / "m.gguf"
    ex.export(str(llama_dir), ex.ExportConfig(gguf=str(out), type="f16"))
    lm, tokenizer = modeling.load(str(out))
    assert (tokenizer.bos_token, tokenizer.eos_token, tokenizer.pad_token) == ("<sos>", "<eos>", "<pad>")
    assert lm.get_input_embeddings().weight.shape[0] == len(tokenizer)  # nothing added or resized
    assert main(["generate", str(out), "Kyoto is the", "--max-new-tokens", "5", "--json"]) == 0
    row = json.loads(capsys.readouterr().out.splitlines()[0])
    assert row["prompt"] == "Kyoto is the" and row["text"].startswith("Kyoto is the")


def test_a_corrupted_tensor_fails_parity_and_leaves_no_file(llama_dir, tmp_path, monkeypatch, capsys):
    real = gguf_model._llama_tensors

    def corrupted(model):
        for name, data in real(model):
            yield name, (data * 1.5 if name == "blk.1.ffn_down.weight" else data)

    monkeypatch.setattr(gguf_model, "_llama_tensors", corrupted)
    out = tmp_path / "bad.gguf"
    assert main(["export", str(llama_dir), "--gguf", str(out), "--type", "f32"]) == 1
    err = capsys.readouterr().err
    assert "parity check failed" in err and "logits differ by up to" in err
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_refusals_are_one_line_and_leave_nothing(llama_dir, tmp_path, capsys):
    existing = tmp_path / "m.gguf"
    existing.write_bytes(b"mine")
    assert main(["export", str(llama_dir), "--gguf", str(existing)]) == 1
    assert "already exists; pass --overwrite" in capsys.readouterr().err and existing.read_bytes() == b"mine"
    assert main(["export", str(tmp_path), "--gguf", str(tmp_path / "x.gguf")]) == 1
    assert "not a Hugging Face model" in capsys.readouterr().err
    bert = tmp_path / "bert"
    bert.mkdir()
    (bert / "config.json").write_text(json.dumps({"model_type": "bert"}), encoding="utf-8")
    assert main(["export", str(bert), "--gguf", str(tmp_path / "b.gguf")]) == 1
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("gpt2tune: error:")]
    assert len(errors) == 1 and "cannot export model type 'bert'" in errors[0] and "gpt2" in errors[0]
    assert main(["export", str(llama_dir), "--gguf", str(tmp_path / "x.bin")]) == 1
    assert "must end in .gguf" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bert", "m.gguf"]


def test_a_full_disk_leaves_no_file(llama_dir, tmp_path, monkeypatch):
    import gguf

    def fail(self, *args, **kwargs):
        for fout in self.fout:
            fout.write(b"\0" * 1000)  # some bytes made it before the disk filled up
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(gguf.GGUFWriter, "write_tensors_to_file", fail)
    with pytest.raises(UserError, match="No space left on device"):
        ex.export(str(llama_dir), ex.ExportConfig(gguf=str(tmp_path / "m.gguf")))
    assert list(tmp_path.iterdir()) == []


def test_unsupported_tokenizer_is_refused():
    from tokenizers import Tokenizer, models, normalizers
    from transformers import PreTrainedTokenizerFast

    wordpiece = Tokenizer(models.WordPiece({"[UNK]": 0, "a": 1}, unk_token="[UNK]"))
    wordpiece.normalizer = normalizers.Lowercase()
    with pytest.raises(UserError, match="byte-level BPE"):
        gguf_model.vocab(PreTrainedTokenizerFast(tokenizer_object=wordpiece), 2)


LLAMA_CPP = """
import json, sys
import numpy as np
import llama_cpp
path, ids = sys.argv[1], json.loads(sys.argv[2])
llm = llama_cpp.Llama(model_path=path, logits_all=True, n_ctx=64, n_threads=1, verbose=False)
llm.eval(ids)
np.save(path + ".npy", np.array(llm.scores[: len(ids)]))
print(json.dumps({"probe": llm.tokenize(b"Japan Tokyo", add_bos=False), "first": llm.tokenize(b"Japan Tokyo")[0],
                  "eos": llm.token_eos()}))
"""


def test_llama_cpp_reads_the_files_as_transformers_does(gpt2_dir, gpt2_f16, llama_dir, tmp_path):
    pytest.importorskip("llama_cpp")
    import subprocess
    import sys

    from gpt2tune.export import parity

    llama = ex.export(str(llama_dir), ex.ExportConfig(gguf=str(tmp_path / "l.gguf"), type="f32"))
    for path, model_dir in ((gpt2_f16.path, gpt2_dir), (llama.path, llama_dir)):
        lm, tokenizer = ex.load(str(model_dir))
        ids = parity.prompt_ids(tokenizer, ["Kyoto is the old capital of Japan."])[0]
        # in its own process: a llama.cpp built for the wrong CPU dies of SIGILL, which must fail this test only
        run = subprocess.run([sys.executable, "-c", LLAMA_CPP, str(path), json.dumps(ids)], capture_output=True,
                             text=True, timeout=300)
        assert run.returncode == 0, run.stderr[-2000:]
        seen = json.loads(run.stdout.splitlines()[-1])
        assert seen == {"probe": tokenizer("Japan Tokyo", add_special_tokens=False)["input_ids"],
                        "first": tokenizer.bos_token_id, "eos": tokenizer.eos_token_id}  # llama.cpp adds <sos>
        got = torch.tensor(np.load(str(path) + ".npy"), dtype=torch.float64)
        with torch.no_grad():
            ref = lm(torch.tensor([ids])).logits[0].double()
        rel, top1, kl = parity.compare_logits(ref, got)
        assert top1 == 1.0 and kl < 1e-3, (path.name, rel, top1, kl)
