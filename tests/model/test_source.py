"""A model argument checked and turned into a ModelSource, without torch or transformers."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from gpt2tune.errors import UserError
from gpt2tune.model.source import best_model, looks_like_path, resolve


def test_missing_local_model_is_a_clear_error(tmp_path):
    with pytest.raises(UserError, match="no such run or model: .*nope/model$"):
        resolve(str(tmp_path / "nope" / "model"))
    with pytest.raises(UserError, match="not a Hugging Face model"):
        resolve(str(tmp_path))
    with pytest.raises(UserError, match="no such run or model: .*m.gguf$"):
        resolve(str(tmp_path / "m.gguf"))
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(UserError, match="is a file, not a model"):
        resolve(str(tmp_path / "notes.txt"))


@pytest.mark.parametrize("name, is_path", [
    ("gpt2", False), ("openai-community/gpt2", False), ("HuggingFaceTB/SmolLM2-135M", False),
    ("./run", True), ("../runs/japan", True), ("~/models/x", True), ("/abs/model", True), ("a/b/c", True),
    ("runs\\japan", True), ("my run", True), ("runs/japan", True),  # runs/ exists in the working directory
])
def test_path_or_hub_id(name, is_path, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    assert looks_like_path(name) is is_path
    if is_path:
        with pytest.raises(UserError, match=f"^no such run or model: {re.escape(name)}$"):
            resolve(name)
    else:
        assert resolve(name).path == name


def test_a_run_directory_resolves_to_its_best_model(tmp_path):
    run = tmp_path / "run"
    (run / "best.old").mkdir(parents=True)
    (run / "best.old" / "config.json").write_text("{}")
    assert best_model(run) == run / "best.old"  # a kill between the renames of its swap
    assert resolve(str(run)).path == str(run / "best.old")
    (run / "best").mkdir()
    (run / "best" / "config.json").write_text("{}")
    assert resolve(str(run)).path == str(run / "best")
    assert resolve(str(run / "best")).path == str(run / "best")
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF")
    source = resolve(str(gguf))
    assert (source.path, source.gguf_file) == (str(tmp_path), "m.gguf")


def test_the_module_loads_no_heavy_library():
    code = "import sys, gpt2tune.model.source; print(sorted({'torch', 'transformers'} & set(sys.modules)))"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"
