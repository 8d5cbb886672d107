"""Resume belongs to train(): the Python API resumes from the run's saved config like the CLI, options that
shape the data or the model refuse to change, and the loop state goes into the checkpoint as one object."""

from __future__ import annotations

import dataclasses
import math
import shutil
from pathlib import Path

import pytest
import torch
from conftest import make_corpus
from safetensors.torch import load_file

import gpt2tune
from gpt2tune.cli import main
from gpt2tune.errors import Interrupted, UserError
from gpt2tune.train import loop as finetune
from gpt2tune.train import stop

OPTS = dict(epochs=2, lr=3e-3, batch_size=4, block_size=64, samples=0, patience=None, eval_every=2, max_steps=4,
            threads=1, keywords=["Osaka"])


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    p = tmp_path_factory.mktemp("data") / "japan.txt"
    p.write_text("\n".join(make_corpus(200, seed=7)) + "\n", encoding="utf-8")
    return p


@pytest.fixture(scope="module")
def whole(tiny_model, corpus, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "whole"
    gpt2tune.train(model=str(tiny_model), data=str(corpus), out=str(out), **OPTS)
    return out


def _interrupt_after(monkeypatch, steps: int) -> None:
    """Ctrl-C, as the loop sees it, after `steps` steps."""
    calls = {"n": 0}

    def requested(stop, accelerator) -> bool:
        calls["n"] += 1
        return calls["n"] >= steps

    monkeypatch.setattr(stop, "stop_requested", requested)


@pytest.fixture(scope="module")
def interrupted_once(tiny_model, corpus, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "split"
    with pytest.MonkeyPatch.context() as m:
        _interrupt_after(m, 2)
        with pytest.raises(Interrupted, match="interrupted at step 2"):
            gpt2tune.train(model=str(tiny_model), data=str(corpus), out=str(out), **OPTS)
    return out


@pytest.fixture()
def interrupted(interrupted_once, tmp_path) -> Path:
    """A run Ctrl-C stopped at step 2 of 4 (a fresh copy for each test)."""
    out = tmp_path / "split"
    shutil.copytree(interrupted_once, out)
    return out


def _files(run: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(run)): (p.stat().st_size, p.stat().st_mtime_ns) for p in run.rglob("*") if p.is_file()}


def test_python_api_resumes_from_the_saved_config(whole, interrupted):
    result = gpt2tune.train(out=str(interrupted), resume=True)  # nothing else: lr, batch, steps come from the run
    assert result.steps == 4 and result.stopped == "max_steps"
    a, b = load_file(whole / "last" / "model.safetensors"), load_file(interrupted / "last" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert (interrupted / "config.yaml").read_text() == (whole / "config.yaml").read_text().replace(
        str(whole), str(interrupted))


@pytest.mark.parametrize("flags, line", [
    (["--batch-size", "16", "--epochs", "6"], "cannot change batch-size on --resume: the run has 4, given 16"),
    (["--block-size", "32"], "cannot change block-size on --resume: the run has 64, given 32"),
    (["--seed", "1"], "cannot change seed on --resume: the run has 42, given 1"),
    (["--lr", "0.1"], "cannot change lr on --resume: the run has 0.003, given 0.1"),
])
def test_resume_refuses_a_changed_option_in_one_line_and_writes_nothing(interrupted, flags, line, capsys):
    before = _files(interrupted)
    assert main(["train", "--out", str(interrupted), "--resume", *flags]) == 1
    err = capsys.readouterr().err
    assert err.startswith("gpt2tune: error: " + line) and err.count("\n") == 1
    assert _files(interrupted) == before


def test_resume_may_change_the_length_of_the_run(interrupted):
    result = gpt2tune.train(out=str(interrupted), resume=True, max_steps=6, eval_every=3)
    assert result.steps == 6 and [r["step"] for r in result.metrics] == [0, 2, 3, 6]


def test_resume_refuses_a_data_file_whose_content_changed(interrupted, corpus, tmp_path):
    changed = tmp_path / "japan.txt"
    changed.write_text(corpus.read_text() + "Nara has a new museum in 2024.\n", encoding="utf-8")
    before = _files(interrupted)
    with pytest.raises(UserError, match="cannot change data on --resume"):
        gpt2tune.train(out=str(interrupted), resume=True, data=str(changed))
    original = corpus.read_bytes()
    corpus.write_bytes(changed.read_bytes())
    try:
        with pytest.raises(UserError, match=r"data file .* changed since the run started \(sha256"):
            gpt2tune.train(out=str(interrupted), resume=True)
    finally:
        corpus.write_bytes(original)
    assert _files(interrupted) == before


def test_loop_state_is_saved_and_restored_as_one_object(interrupted):
    saved = torch.load(interrupted / "last" / "trainer_state.pt", weights_only=False)
    state = finetune.LoopState.restore(saved)
    assert state.step == 2 and state.total_steps == 4 and state.threads == 1 and len(state.data_sha256) == 64
    assert dataclasses.asdict(state) == saved["loop"]
    old = {"loop": {k: v for k, v in saved["loop"].items() if k not in ("threads", "total_steps")}, "threads": 3,
           "removed_key": 1}
    assert finetune.LoopState.restore(old).threads == 3  # checkpoints written before the state was one object
    assert math.isinf(finetune.LoopState().best_val)


def test_resume_in_the_second_epoch_is_exact(tiny_model, corpus, tmp_path, monkeypatch):
    opts = {**OPTS, "max_steps": None, "eval_every": None}
    whole = gpt2tune.train(model=str(tiny_model), data=str(corpus), out=str(tmp_path / "whole"), **opts)
    per_epoch = whole.metrics[1]["step"]
    assert [r["event"] for r in whole.metrics] == ["start", "epoch", "epoch"] and whole.steps == 2 * per_epoch
    out = tmp_path / "split"
    with monkeypatch.context() as m:
        _interrupt_after(m, per_epoch + 2)
        with pytest.raises(Interrupted, match=f"interrupted at step {per_epoch + 2}"):
            gpt2tune.train(model=str(tiny_model), data=str(corpus), out=str(out), **opts)
    assert gpt2tune.train(out=str(out), resume=True).steps == 2 * per_epoch
    a, b = load_file(tmp_path / "whole" / "last" / "model.safetensors"), load_file(out / "last" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_the_training_state_is_written_without_zip_checksums_and_reads_back_exactly(tmp_path):
    """The state file skips the zip records' CRC-32 (torch.load never reads it); what loads back is bit-exact, and
    torch.save elsewhere in the process still computes them."""
    import zipfile

    from torch.utils.serialization import config as serialization

    from gpt2tune.run import checkpoint

    state = checkpoint_like_state()
    checkpoint.save_state(state, tmp_path)
    back = checkpoint.load_state(tmp_path)
    assert torch.equal(back["optimizer"]["state"][0]["exp_avg"], state["optimizer"]["state"][0]["exp_avg"])
    assert back["loop"] == state["loop"] and back["rng"][0]["python"] == state["rng"][0]["python"]
    with zipfile.ZipFile(tmp_path / checkpoint.STATE_FILE) as z:
        assert {i.CRC for i in z.infolist() if i.file_size} == {0}
    assert serialization.save.compute_crc32 is True
    torch.save(state, tmp_path / "other.pt")
    with zipfile.ZipFile(tmp_path / "other.pt") as z:
        assert z.testzip() is None and all(i.CRC for i in z.infolist() if i.file_size)


def checkpoint_like_state() -> dict:
    from gpt2tune.run import checkpoint
    from gpt2tune.train.state import LoopState

    moments = {"step": torch.tensor(3.0), "exp_avg": torch.randn(1000), "exp_avg_sq": torch.rand(1000)}
    return {"loop": {**dataclasses.asdict(LoopState()), "loss_sum": [1.5]},
            "optimizer": {"state": {0: moments}, "param_groups": [{"lr": 1e-3, "params": [0]}]},
            "scheduler": {"last_epoch": 3}, "rng": [checkpoint.rng_state()], "scaler": None}
