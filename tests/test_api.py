"""The Python API mirrors the CLI: one call per command, config classes importable without torch."""

from __future__ import annotations

import subprocess
import sys

import pytest

import gpt2tune
from gpt2tune.errors import UserError


def test_config_classes_and_the_api_import_no_torch():
    code = ("import sys, gpt2tune\n"
            "from gpt2tune import TrainConfig, SamplingConfig, EvaluateConfig, CompareConfig, ExportConfig, "
            "InspectConfig\n"
            "assert callable(gpt2tune.train) and callable(gpt2tune.evaluate) and callable(gpt2tune.export)\n"
            "print('torch' in sys.modules, 'transformers' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


def test_the_api_calls_survive_importing_their_packages():
    import gpt2tune.evaluate.run  # noqa: F401  (importing a subpackage must not replace the API call)
    import gpt2tune.export.run  # noqa: F401
    import gpt2tune.train.loop  # noqa: F401

    assert all(callable(getattr(gpt2tune, name)) for name in gpt2tune.__all__ if name[0].islower())


def test_evaluate_call_validates_its_options_like_the_cli(tiny_model):
    with pytest.raises(UserError, match="unknown config key 'nope'"):
        gpt2tune.evaluate(str(tiny_model), data="x.txt", nope=1)
    with pytest.raises(UserError, match="batch-size must be at least 1"):
        gpt2tune.evaluate(str(tiny_model), data="x.txt", batch_size=0)


def test_inspect_data_call_writes_the_json_it_returns(tmp_path, tiny_model):
    data = tmp_path / "d.txt"
    data.write_text("".join(f"Sentence number {i} is about Kyoto and its temples.\n" for i in range(40)))
    out = tmp_path / "report.json"
    result = gpt2tune.inspect_data(str(data), model=str(tiny_model), json=str(out))
    import json

    assert json.loads(out.read_text())["sentences"] == result["sentences"] == 40
