"""gpt2tune push, end to end against a stand-in for the Hub on 127.0.0.1 (HF_ENDPOINT): the files that arrive are
best/'s files, the model card and, with --gguf, the exported file; without a token, a network or a commit it says
so in one line, and nothing is reported as pushed."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import make_corpus
from hub_standin import Hub

import gpt2tune

TOKEN = "hf_test_token"


@pytest.fixture(scope="module")
def run(tiny_model, tmp_path_factory) -> Path:
    data = tmp_path_factory.mktemp("data") / "japan.txt"
    data.write_text("\n".join(make_corpus(120, seed=5)) + "\n", encoding="utf-8")
    out = tmp_path_factory.mktemp("runs") / "japan"
    gpt2tune.train(model=str(tiny_model), data=str(data), out=str(out), max_steps=2, batch_size=4, block_size=64,
                   samples=0, patience=None, threads=1, keywords=["Osaka is the"])
    return out


@pytest.fixture()
def hub():
    h = Hub(TOKEN)
    yield h
    h.close()


def push(run_dir: Path, *args: str, endpoint: str, token: str | None = TOKEN, home: Path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env.update(HF_ENDPOINT=endpoint, HF_HOME=str(home), HF_HUB_DISABLE_XET="1", HF_HUB_DISABLE_TELEMETRY="1",
               PYTHONPATH=os.pathsep.join(sys.path))
    if token:
        env["HF_TOKEN"] = token
    return subprocess.run([sys.executable, "-m", "gpt2tune", "push", str(run_dir), *args], env=env,
                          capture_output=True, text=True, timeout=300)


def test_push_uploads_best_with_its_card_in_one_commit(run, hub, tmp_path):
    from huggingface_hub import ModelCard
    from transformers import AutoModelForCausalLM

    done = push(run, "--repo", "alice/japan-gpt2", "--private", endpoint=hub.url, home=tmp_path)
    assert done.returncode == 0, done.stderr
    repo = hub.repos["alice/japan-gpt2"]
    best = {p.name: p.read_bytes() for p in (run / "best").iterdir() if p.name != "README.md"}
    assert repo["private"] is True and len(repo["commits"]) == 1
    assert set(repo["files"]) == set(best) | {"README.md"}
    assert all(repo["files"][name] == data for name, data in best.items())
    assert repo["commits"][0]["lfs"] == ["model.safetensors", "tokenizer.json"]  # the large ones went through LFS
    size = sum(map(len, repo["files"].values()))
    assert done.stdout == (f"pushed {len(repo['files'])} files ({size / 1e6:.1f} MB) to alice/japan-gpt2: "
                           f"{hub.url}/alice/japan-gpt2/commit/{repo['commits'][0]['oid']}\n")
    arrived = tmp_path / "arrived"
    arrived.mkdir()
    for name, data in repo["files"].items():
        (arrived / name).write_bytes(data)
    card = ModelCard.load(arrived / "README.md")
    assert card.data.library_name == "transformers" and "gpt2tune" in card.data.tags
    assert 'pipeline("text-generation", model="alice/japan-gpt2")' in card.text
    assert "gpt2tune generate alice/japan-gpt2 'Osaka is the' -n 3" in card.text
    assert AutoModelForCausalLM.from_pretrained(arrived).num_parameters() > 0  # what arrived is a loadable model
    assert "POST /api/validate-yaml" in hub.requests  # huggingface_hub had the card's metadata checked


def test_push_with_gguf_uploads_the_exported_file(run, hub, tmp_path):
    from gpt2tune.export.options import ExportConfig
    from gpt2tune.export.run import export

    gguf = tmp_path / "japan.gguf"
    export(str(run), ExportConfig(gguf=str(gguf), type="f32", parity_prompts=["Osaka is the"]))
    assert "japan.gguf" in (run / "best" / "README.md").read_text()  # the run's own card names the export
    done = push(run, "--repo", "alice/japan-gguf", "--gguf", endpoint=hub.url, home=tmp_path)
    assert done.returncode == 0, done.stderr
    files = hub.repos["alice/japan-gguf"]["files"]
    assert files["japan.gguf"] == gguf.read_bytes()
    assert "llama-cli -m japan.gguf" in files["README.md"].decode()


def test_no_token_is_one_line_and_nothing_is_sent(run, hub, tmp_path):
    done = push(run, "--repo", "alice/x", endpoint=hub.url, token=None, home=tmp_path)
    assert (done.returncode, done.stdout) == (1, "")
    assert done.stderr == ("gpt2tune: error: no Hugging Face token: set HF_TOKEN or run `hf auth login`; nothing was "
                           "uploaded\n")
    assert hub.requests == []


def test_a_refused_token_is_one_line(run, hub, tmp_path):
    done = push(run, "--repo", "alice/x", endpoint=hub.url, token="hf_wrong", home=tmp_path)
    assert done.returncode == 1 and done.stderr.splitlines()[-1] == (
        "gpt2tune: error: the Hub refused the token (401 Unauthorized): check HF_TOKEN or run `hf auth login` "
        "again; nothing was uploaded")
    assert hub.repos == {}


def test_no_network_is_one_line(run, tmp_path):
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    done = push(run, "--repo", "alice/x", endpoint=f"http://127.0.0.1:{port}", home=tmp_path)
    assert done.returncode == 1 and done.stdout == ""
    line = done.stderr.splitlines()[-1]
    assert line.startswith(f"gpt2tune: error: could not reach http://127.0.0.1:{port} (")
    assert line.endswith("); nothing was uploaded")


def test_a_failed_commit_is_not_reported_as_done(run, hub, tmp_path):
    hub.fail_commit = True
    done = push(run, "--repo", "alice/x", endpoint=hub.url, home=tmp_path)
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr.splitlines()[-1].startswith("gpt2tune: error: the Hub answered 500 (")
    assert done.stderr.splitlines()[-1].endswith("the repository exists but got no commit: nothing was uploaded")
    assert hub.repos["alice/x"]["files"] == {}


@pytest.mark.parametrize("args, line", [
    (["--repo", "japan"], "--repo 'japan' is not a Hub repository id: give user/name (letters, digits, '-', '_', '.')"),
    (["--repo", "a/b", "--gguf"], "--gguf: {run} has no GGUF export; write one with: gpt2tune export {run} --gguf "
                                  "FILE.gguf"),
])
def test_bad_input_is_one_line(run, tmp_path, args, line, capsys):
    from gpt2tune.cli import main

    plain = tmp_path / "plain"
    plain.mkdir()
    for name in ("config.yaml", "metrics.jsonl", "data.json"):
        (plain / name).write_bytes((run / name).read_bytes())
    (plain / "best").mkdir()
    for p in (run / "best").iterdir():
        (plain / "best" / p.name).write_bytes(p.read_bytes())
    assert main(["push", str(plain), *args]) == 1
    assert capsys.readouterr().err == f"gpt2tune: error: {line.format(run=plain)}\n"
