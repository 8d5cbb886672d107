"""Training end to end through the CLI: loss goes down, run directory, resume, kill -9, Ctrl-C, failures."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from conftest import make_corpus
from safetensors.torch import load_file

from gpt2tune.cli import main
from gpt2tune.errors import UserError
from gpt2tune.model import load as modeling
from gpt2tune.train import loop as finetune
from gpt2tune.train import step as scoring

ARGS = ["--epochs", "3", "--lr", "3e-3", "--batch-size", "4", "--block-size", "64", "--keywords",
        "Osaka,Kyoto is the", "--samples", "2", "--patience", "none", "--warmup", "0.1"]


def train_args(model: Path, data: Path, out: Path, *extra: str) -> list[str]:
    return ["train", "--model", str(model), "--data", str(data), "--out", str(out), *ARGS, *extra]


def metrics(run: Path) -> list[dict]:
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


def same_history(a: list[dict], b: list[dict]) -> bool:
    keys = ("epoch", "step", "train_loss", "val_loss", "event", "best")
    return [{k: r[k] for k in keys} for r in a] == [{k: r[k] for k in keys} for r in b]


def weights(d: Path) -> dict[str, torch.Tensor]:
    return load_file(d / "model.safetensors")


def assert_bit_identical(a: Path, b: Path) -> None:
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    p = tmp_path_factory.mktemp("data") / "japan.txt"
    sentences = make_corpus(300, seed=1)
    p.write_text("\n".join(sentences + sentences[:15]) + "\n", encoding="utf-8")
    return p


@pytest.fixture(scope="module")
def finished_run(tiny_model, corpus, tmp_path_factory) -> Path:
    """One uninterrupted run, the reference for the resume tests."""
    out = tmp_path_factory.mktemp("runs") / "full"
    assert main(train_args(tiny_model, corpus, out)) == 0
    return out


def test_run_directory_and_loss_goes_down(finished_run):
    rows = metrics(finished_run)
    assert [r["event"] for r in rows] == ["start", "epoch", "epoch", "epoch"]
    assert [r["epoch"] for r in rows] == [0, 1, 2, 3]
    for key in ("epoch", "step", "train_loss", "val_loss", "val_ppl", "tokens_per_s", "elapsed_s"):
        assert key in rows[1]
    assert rows[-1]["val_loss"] < rows[0]["val_loss"] - 1.0
    assert rows[-1]["train_loss"] < rows[1]["train_loss"]
    assert rows[1]["val_ppl"] == pytest.approx(2.718281828 ** rows[1]["val_loss"], rel=1e-3)
    assert rows[1]["useful_fraction"] > 0.9
    samples = [json.loads(x) for x in (finished_run / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == 4 * 2 * 2  # evaluations x keywords x samples
    assert {s["keyword"] for s in samples} == {"Osaka", "Kyoto is the"}
    assert all(s["text"].startswith(s["keyword"]) for s in samples)
    cfg = (finished_run / "config.yaml").read_text()
    assert "lr: 0.003" in cfg and "block_size: 64" in cfg
    for d in ("best", "last"):
        for f in ("config.json", "model.safetensors", "tokenizer.json", "generation_config.json"):
            assert (finished_run / d / f).is_file(), (d, f)


def test_run_keeps_its_val_sentences_and_data_summary(finished_run, corpus):
    from gpt2tune.data import read
    from gpt2tune.data import split as data_split
    split = data_split.split_sentences(read.read_sentences(corpus), 0.1, 42, val_size=2000, near_dedupe=True)
    assert (finished_run / "val.txt").read_text(encoding="utf-8").splitlines() == split.val
    summary = json.loads((finished_run / "data.json").read_text())
    assert (summary["sentences"], summary["unique"]) == (315, 300)
    assert summary["near_duplicates"]["sentences"] == split.near_grouped > 0
    assert summary["split"] == {"train": 270, "val": 30, "val_fraction": 0.1, "val_size": 2000}
    report = (finished_run / "report.html").read_text(encoding="utf-8")
    assert "<h2>Data</h2>" in report and "270 train / 30 val sentences" in report


def test_best_and_last_load_with_pipeline(finished_run):
    from transformers import pipeline

    for d in ("best", "last"):
        pipe = pipeline("text-generation", model=str(finished_run / d))
        out = pipe("Osaka", max_new_tokens=5, do_sample=False)
        assert out[0]["generated_text"].startswith("Osaka")


def test_generate_cli(finished_run, capsys):
    assert main(["generate", str(finished_run / "best"), "Kyoto is the", "Osaka", "-n", "2", "--seed", "1"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 4
    assert lines[0].startswith("Kyoto is the") and lines[2].startswith("Osaka")
    assert "<eos>" not in "".join(lines) and "<sos>" not in "".join(lines)
    # --json, a run directory as MODEL (its best/), and seeded: same seed -> same samples
    assert main(["generate", str(finished_run), "Kyoto is the", "Osaka", "-n", "2", "--seed", "1", "--json"]) == 0
    rows = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [r["text"] for r in rows] == lines
    assert set(rows[0]) >= {"prompt", "text", "ended", "new_tokens"}


def test_stop_text_cuts_the_continuation(finished_run, capsys):
    assert main(["generate", str(finished_run), "Osaka", "--temperature", "0", "--max-new-tokens", "20"]) == 0
    full = capsys.readouterr().out.strip()
    assert main(["generate", str(finished_run), "Osaka", "--temperature", "0", "--max-new-tokens", "20",
                 "--stop", " in"]) == 0
    cut = capsys.readouterr().out.strip()
    assert full.startswith(cut) and " in" not in cut[len("Osaka"):]


def test_refuses_to_overwrite_a_run(tiny_model, corpus, finished_run, capsys):
    before = (finished_run / "metrics.jsonl").read_text()
    assert main(train_args(tiny_model, corpus, finished_run)) == 1
    assert "already holds a run" in capsys.readouterr().err
    assert (finished_run / "metrics.jsonl").read_text() == before


def _spawn(args: list[str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "gpt2tune", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)


def _wait_for_start_evaluation(run: Path, proc: subprocess.Popen, timeout: float = 240) -> None:
    t0 = time.time()
    while time.time() - t0 < timeout:
        if proc.poll() is not None:
            pytest.fail(f"training ended before it could be interrupted: {proc.communicate()}")
        if (run / "metrics.jsonl").is_file() and (run / "metrics.jsonl").read_text().strip():
            assert not (run / "last").exists() and not (run / "best").exists()  # step 0: nothing new to keep
            return
        time.sleep(0.05)
    pytest.fail("the start evaluation did not finish")


def _wait_for_checkpoint(run: Path, proc: subprocess.Popen, min_step: int, timeout: float = 240) -> None:
    state = run / "last" / "trainer_state.pt"
    t0 = time.time()
    while time.time() - t0 < timeout:
        if proc.poll() is not None:
            pytest.fail(f"training ended before it could be interrupted: {proc.communicate()}")
        if state.is_file():
            try:
                if torch.load(state, weights_only=False)["loop"]["step"] >= min_step:
                    return
            except Exception:
                pass  # being replaced right now
        time.sleep(0.05)
    pytest.fail("no checkpoint appeared")


def test_kill_9_then_resume_is_bit_identical(tiny_model, corpus, finished_run, tmp_path):
    out = tmp_path / "killed"
    proc = _spawn(train_args(tiny_model, corpus, out, "--save-every", "2"))
    _wait_for_checkpoint(out, proc, min_step=3)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert main(train_args(tiny_model, corpus, out, "--save-every", "2", "--resume")) == 0
    assert_bit_identical(out / "last", finished_run / "last")
    assert_bit_identical(out / "best", finished_run / "best")
    assert same_history(metrics(out), metrics(finished_run))


# fp16 on a CPU is emulated (~10x slower than fp32 here): a short run, a checkpoint every step
FP16 = ("--precision", "fp16", "--samples", "0", "--save-every", "1", "--max-steps", "5", "--batch-size", "2",
        "--eval-every", "2")


def test_fp16_with_a_grad_scaler_runs_on_a_cpu_and_resumes_after_kill_9(tiny_model, corpus, tmp_path, capfd):
    """The path of a GPU without bf16 (fp16 autocast + GradScaler), run here on the CPU: it trains, every
    checkpoint holds the scaler's state, and a kill -9 mid-run resumes to what an unbroken run computes."""
    whole, out = tmp_path / "whole", tmp_path / "killed"
    assert main(train_args(tiny_model, corpus, whole, *FP16)) == 0
    assert "device cpu, precision fp16 + GradScaler" in capfd.readouterr().out
    rows = metrics(whole)
    assert rows[-1]["val_loss"] < rows[0]["val_loss"] - 0.1  # it learns in fp16
    scaler = torch.load(whole / "last" / "trainer_state.pt", weights_only=False)["scaler"]
    assert scaler["scale"] > 0 and scaler["_growth_tracker"] >= 0

    proc = _spawn(train_args(tiny_model, corpus, out, *FP16))
    _wait_for_checkpoint(out, proc, min_step=2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    killed_at = torch.load(out / "last" / "trainer_state.pt", weights_only=False)
    assert killed_at["scaler"] is not None and killed_at["loop"]["step"] < rows[-1]["step"]
    assert main(train_args(tiny_model, corpus, out, *FP16, "--resume")) == 0
    assert f"resuming {out} at step {killed_at['loop']['step']}" in capfd.readouterr().out
    assert_bit_identical(out / "last", whole / "last")
    assert same_history(metrics(out), rows)
    assert torch.load(out / "last" / "trainer_state.pt", weights_only=False)["scaler"] == scaler


def test_ctrl_c_saves_and_resumes(tiny_model, corpus, finished_run, tmp_path):
    out = tmp_path / "interrupted"
    proc = _spawn(train_args(tiny_model, corpus, out))
    _wait_for_start_evaluation(out, proc)  # now it is training (the start evaluation saves no checkpoint)
    os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "interrupted at step" in err and "--resume" in err and "Traceback" not in err
    assert main(["train", "--out", str(out), "--resume"]) == 0  # the run's own config.yaml fills the rest
    assert_bit_identical(out / "last", finished_run / "last")
    assert same_history(metrics(out), metrics(finished_run))


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tiny_model, corpus, tmp_path, monkeypatch):
    calls = {"n": 0}
    real = scoring.block_loss

    def flaky(model, b):
        loss = real(model, b)
        calls["n"] += 1
        return loss * float("nan") if model.training and calls["n"] >= 8 else loss

    monkeypatch.setattr(scoring, "block_loss", flaky)
    out = tmp_path / "nan"
    with pytest.raises(UserError, match=r"NaN/inf at step \d+.*last good checkpoint"):
        finetune.train(_cfg(tiny_model, corpus, out, save_every="1"))
    state = torch.load(out / "last" / "trainer_state.pt", weights_only=False)
    assert state["loop"]["step"] >= 1
    assert all(torch.isfinite(t).all() for t in weights(out / "last").values())


def test_no_space_left_keeps_previous_checkpoint(tiny_model, corpus, tmp_path, monkeypatch):
    real_save = modeling.save
    calls = {"n": 0}

    def full_disk(model, tok, d):
        calls["n"] += 1
        if calls["n"] >= 4:
            raise OSError(errno.ENOSPC, "No space left on device")
        real_save(model, tok, d)

    monkeypatch.setattr(modeling, "save", full_disk)
    out = tmp_path / "full"
    with pytest.raises(UserError, match="No space left on device.*previous checkpoint"):
        finetune.train(_cfg(tiny_model, corpus, out, save_every="1"))
    assert not (out / "last.tmp").exists()
    model, _ = modeling.load(str(out / "last"))  # still loadable
    assert torch.load(out / "last" / "trainer_state.pt", weights_only=False)["loop"]["step"] >= 1


def test_checkpoint_records_the_lines_its_evaluation_wrote(finished_run):
    """The checkpoint is written while its evaluation's samples are drawn, yet records their lines."""
    state = torch.load(finished_run / "last" / "trainer_state.pt", weights_only=False)["loop"]
    assert state["metrics_lines"] == len(metrics(finished_run))
    assert state["samples_lines"] == len((finished_run / "samples.jsonl").read_text().splitlines()) > 0


def test_a_failure_while_sampling_discards_the_checkpoint_being_written(tiny_model, corpus, tmp_path, monkeypatch):
    real, calls = finetune.sample, {"n": 0}

    def breaks_at_epoch_2(*args, **kwargs):  # calls: step 0, epoch 1, epoch 2
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("the sampler broke")
        return real(*args, **kwargs)

    monkeypatch.setattr(finetune, "sample", breaks_at_epoch_2)
    out = tmp_path / "broken"
    with pytest.raises(RuntimeError, match="the sampler broke"):
        finetune.train(_cfg(tiny_model, corpus, out, samples=1))
    state = torch.load(out / "last" / "trainer_state.pt", weights_only=False)["loop"]
    rows = metrics(out)
    assert [r["event"] for r in rows] == ["start", "epoch"]
    assert state["step"] == rows[-1]["step"] > 0 and state["metrics_lines"] == 2  # epoch 1's checkpoint
    assert not (out / "last.tmp").exists()


def test_the_last_evaluation_samples_on_every_thread_then_saves(tiny_model, corpus, tmp_path, monkeypatch):
    """A checkpoint is written alongside its evaluation's samples, which leave it a core, except at the run's last
    evaluation: nothing follows it but the report, so the samples get every thread and the checkpoint comes after."""
    real, seen = finetune.sample, []

    def watched(*args, **kwargs):
        writing = any(t.name == "gpt2tune-checkpoint" and t.is_alive() for t in threading.enumerate())
        seen.append((torch.get_num_threads(), writing))
        return real(*args, **kwargs)

    monkeypatch.setattr(finetune, "sample", watched)
    before = torch.get_num_threads()
    try:
        out = tmp_path / "order"
        finetune.train(_cfg(tiny_model, corpus, out, epochs=2, samples=1, threads=2))
    finally:
        torch.set_num_threads(before)
    assert seen == [(2, False), (1, True), (2, False)]  # step 0 (nothing to save), epoch 1, epoch 2: the last
    state = torch.load(out / "last" / "trainer_state.pt", weights_only=False)["loop"]
    assert state["step"] == metrics(out)[-1]["step"] and state["samples_lines"] == 3  # the last one is saved


def test_damaged_checkpoint_is_named_on_resume(tiny_model, corpus, tmp_path, capsys):
    out = tmp_path / "damaged"
    assert main(train_args(tiny_model, corpus, out, "--max-steps", "2", "--samples", "0")) == 0
    state = out / "last" / "trainer_state.pt"
    intact = state.read_bytes()
    state.write_bytes(intact[:1000])
    assert main(["train", "--out", str(out), "--resume", "--max-steps", "4"]) == 1
    err = capsys.readouterr().err
    assert "trainer_state.pt is damaged" in err and "Traceback" not in err
    state.write_bytes(intact)  # a valid training state again, so the next check reaches the model weights
    weights_file = out / "last" / "model.safetensors"
    weights_file.write_bytes(weights_file.read_bytes()[:5000])
    assert main(["train", "--out", str(out), "--resume", "--max-steps", "4"]) == 1
    assert "last is damaged" in capsys.readouterr().err


def _cfg(model: Path, data: Path, out: Path, **kw):
    from gpt2tune.config import TrainConfig

    base = dict(model=str(model), data=str(data), out=str(out), epochs=3, lr=3e-3, batch_size=4, block_size=64,
                keywords=["Osaka"], samples=0, patience=None)
    return TrainConfig(**{**base, **kw})


def test_early_stopping_fires(tiny_model, corpus, tmp_path, monkeypatch):
    val_losses = iter([10.0, 5.0, 5.5, 5.6, 4.0, 3.0, 2.0])  # worse twice after epoch 1: patience 2 fires
    monkeypatch.setattr(scoring, "evaluate_loss", lambda *a, **k: (next(val_losses), 100))
    result = finetune.train(_cfg(tiny_model, corpus, tmp_path / "early", epochs=6, patience=2))
    assert result.stopped == "early_stop"
    assert [r["val_loss"] for r in result.metrics] == [10.0, 5.0, 5.5, 5.6]
    assert [r["best"] for r in result.metrics] == [True, True, False, False]
    assert result.best_val_loss == 5.0
    state = torch.load(tmp_path / "early" / "last" / "trainer_state.pt", weights_only=False)
    assert state["loop"]["stopped"] == "early_stop"
    # best/ holds epoch 1's weights, last/ epoch 3's
    assert not all(torch.equal(a, b) for a, b in zip(weights(tmp_path / "early" / "best").values(),
                                                     weights(tmp_path / "early" / "last").values()))


def test_best_is_the_base_model_when_no_evaluation_beats_it(tiny_model, corpus, tmp_path, monkeypatch):
    """Step 0 saves no checkpoint (nothing new to keep); when the next evaluation is worse, its checkpoint writes
    best/ as the base model, loaded again as training loaded it."""
    val_losses, at_start = iter([10.0, 11.0, 12.0]), {}

    def evaluate(model, *args, **kwargs):
        if not at_start:
            at_start.update({k: v.detach().clone() for k, v in model.state_dict().items()})
        return next(val_losses), 100

    monkeypatch.setattr(scoring, "evaluate_loss", evaluate)
    out = tmp_path / "worse"
    result = finetune.train(_cfg(tiny_model, corpus, out, epochs=2))
    assert [(r["step"] > 0, r["best"]) for r in result.metrics] == [(False, True), (True, False), (True, False)]
    assert result.best_val_loss == 10.0
    best, last = weights(out / "best"), weights(out / "last")
    shared = set(best) & set(at_start)
    assert len(shared) >= len(best) - 1  # every saved tensor (a tied head is saved once)
    assert all(torch.equal(best[k], at_start[k]) for k in shared)
    assert not all(torch.equal(best[k], last[k]) for k in shared)  # last/ is the trained model
    assert (out / "best" / "README.md").is_file() and modeling.load(str(out / "best"))


def test_two_runs_with_different_precision_in_one_process(tiny_model, corpus, tmp_path):
    """Each run scores in its own precision, whatever ran before it in the process."""
    from accelerate.utils import set_seed

    from gpt2tune.evaluate.run import perplexity

    runs = [finetune.train(_cfg(tiny_model, corpus, tmp_path / f"{i}-{p}", precision=p, max_steps=1))
            for i, p in enumerate(["bf16", "fp32", "bf16"])]
    start = [r.metrics[0]["val_loss"] for r in runs]
    val = (runs[0].out / "val.txt").read_text(encoding="utf-8").splitlines()  # the run's own held-out sentences
    want = {}
    for p in ("bf16", "fp32"):
        set_seed(42)  # the new tokens' embeddings are drawn as in train()
        model, tok = modeling.load(str(tiny_model))
        want[p] = round(perplexity(model, tok, val, batch_size=4, block_size=64, precision=p)["loss"], 5)
    assert want["bf16"] != want["fp32"]
    assert start == [want["bf16"], want["fp32"], want["bf16"]]


def test_tokens_per_s_leaves_out_the_warm_up_step():
    """The session's first step (kernels built, fresh memory touched) is not the speed training runs at."""
    from types import SimpleNamespace

    from gpt2tune.config import TrainConfig
    from gpt2tune.console import StepProgress
    from gpt2tune.train.state import LoopState, Run

    acc = SimpleNamespace(is_main_process=False, device=torch.device("cpu"))
    run = Run(TrainConfig(data="d.txt"), Path("."), acc, None, None, None, None, None,
              torch.zeros((), dtype=torch.float64), began=0.0)
    state, progress = LoopState(), StepProgress(3, 0, enabled=False)

    def step(seconds: float) -> None:
        finetune.record_step(run, state, scoring.StepResult(torch.tensor(1.0, dtype=torch.float64), 90, 100),
                             seconds, progress)

    step(5.0)
    assert run.tokens_per_s(state) == 20.0  # the only step so far: it is all there is to report
    step(1.0)
    step(1.0)
    assert run.tokens_per_s(state) == 100.0  # 200 tokens in 2 s; the 5 s warm-up step left out
    assert state.train_time == 7.0 and state.loss_tokens == 270  # elapsed time and the loss still count it
