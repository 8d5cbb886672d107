"""Sizes and shapes that files and options set, checked before anything is allocated (issue 24, round three):
a full disk under the data cache and `data inspect --json`, a YAML bomb, a huge block size, thread count or LoRA
rank, run files of the wrong shape (metrics, samples, trainer_state.pt), model files of the wrong shape
(tokenizer_config.json, n_head 0), a user's matplotlibrc, and run files cut mid-character under `serve`.
Each fails with one line and a non-zero exit, or renders what is valid; none is a traceback."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest
from attack import one_line_error, run_cli, snapshot
from conftest import make_corpus

from gpt2tune.config import TrainConfig, write_config
from gpt2tune.errors import UserError

PAGE = 4096


@pytest.fixture()
def corpus(tmp_path) -> Path:
    p = tmp_path / "corpus.txt"
    p.write_text("\n".join(make_corpus(300)) + "\n", encoding="utf-8")
    return p


@pytest.fixture()
def small_disk(tmp_path):
    """A 1 MiB tmpfs (a disk that fills up); skipped where mounting is not allowed (not root, a container)."""
    d = tmp_path / "disk"
    d.mkdir()
    try:
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(d)], capture_output=True)
    except OSError:
        pytest.skip("no mount command")
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode(errors='replace').strip()}")
    yield d
    subprocess.run(["umount", "-l", str(d)], check=False)


def fill(disk: Path, leave: int = 0) -> None:
    """Take the disk's free space, all but `leave` bytes."""
    free = os.statvfs(disk).f_bavail * os.statvfs(disk).f_frsize
    with open(disk / "filler", "wb") as f:
        f.write(b"\0" * max(free - leave, 0))


# ------------------------------------------------------------------------------------------- full disks

def test_full_disk_under_the_data_cache_is_one_line(small_disk, corpus, tiny_model, capsys, tmp_path):
    fill(small_disk)
    rc, _, err = run_cli(capsys, "train", "--data", corpus, "--model", tiny_model, "--out", tmp_path / "run",
                         "--cache-dir", small_disk, "--max-steps", "1")
    one_line_error(rc, err, f"could not write to the data cache {small_disk / 'data'} (No space left on device)",
                   "--cache-dir")
    assert sorted(p.name for p in small_disk.iterdir()) == ["data", "filler"]
    assert list((small_disk / "data").iterdir()) == []  # no half-written entry left behind
    assert not (tmp_path / "run").exists()


def test_blocks_that_outgrow_the_cache_disk_are_one_line_not_a_bus_error(small_disk, tiny_model, capsys, tmp_path):
    # room for the token file and the first and last page of each block file, not for the blocks: the files
    # are created sparse and memory-mapped, and writing into a page the disk has no room for killed the process
    # with SIGBUS; the blocks' space is now taken before they are mapped
    from transformers import AutoTokenizer

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(make_corpus(1200)) + "\n", encoding="utf-8")
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    tokens = sum(len(ids) + 2 for ids in tokenizer(corpus.read_text(encoding="utf-8").splitlines())["input_ids"])
    token_file = -(-tokens * 4 // PAGE) * PAGE
    blocks_file = tokens * 4  # ids.npy alone holds at least every token, as int32
    assert blocks_file > 10 * PAGE
    fill(small_disk, leave=token_file + 6 * PAGE)
    rc, _, err = run_cli(capsys, "evaluate", tiny_model, "--data", corpus, "--cache-dir", small_disk)
    one_line_error(rc, err, "could not write to the data cache", "No space left on device")
    assert list((small_disk / "data").iterdir()) == []


def test_full_disk_under_data_inspect_json_is_one_line(small_disk, corpus, tiny_model, capsys):
    fill(small_disk)
    target = small_disk / "report.json"
    rc, _, err = run_cli(capsys, "data", "inspect", corpus, "--model", tiny_model, "--json", target)
    one_line_error(rc, err, f"could not write {target} (No space left on device)")
    assert sorted(p.name for p in small_disk.iterdir()) == ["filler"]  # no temporary file left


# ----------------------------------------------------------------------------------------------- YAML

def _bomb(levels: int) -> str:
    """A "billion laughs": each anchor a list of nine aliases of the one before (9**levels values)."""
    lines = ["seed:", '  - &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    lines += [f"  - &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, levels)]
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("text, message", [
    (_bomb(6), "expands to more than 100,000 values"),
    ("seed: " + "[" * 50_000 + "]" * 50_000 + "\n", "nests deeper than 20 levels"),
    ("# " + "x" * (1 << 20) + "\nseed: 1\n", "is 1,048,587 bytes; a file of options is at most 1,048,576"),
])
def test_a_config_file_that_attacks_the_memory_is_one_line(text, message, capsys, tmp_path):
    config = tmp_path / "bomb.yaml"
    config.write_text(text, encoding="utf-8")
    rc, _, err = run_cli(capsys, "train", "--config", config, "--out", tmp_path / "run")
    one_line_error(rc, err, f"config file {config}", message)
    assert not (tmp_path / "run").exists()


def test_aliases_that_expand_little_still_load(capsys, tmp_path):
    from gpt2tune.config import read_config_file

    config = tmp_path / "ok.yaml"
    config.write_text("words: &k [Tokyo, Osaka]\nkeywords: *k\nbase: &b {lr: 0.001}\nmore:\n  <<: *b\n",
                      encoding="utf-8")
    assert read_config_file(config)["keywords"] == ["Tokyo", "Osaka"]


# ---------------------------------------------------------------------------------- sizes from options

def test_a_block_size_beyond_the_context_is_refused_before_packing(corpus, tiny_model, capsys, tmp_path):
    rc, _, err = run_cli(capsys, "evaluate", tiny_model, "--data", corpus, "--block-size", "100000000",
                         "--cache-dir", tmp_path / "cache")
    one_line_error(rc, err, "block-size 100000000 is above the model's context of 256 tokens")
    assert not any((tmp_path / "cache").rglob("blocks-*"))  # nothing was packed


def test_a_block_size_whose_masks_outgrow_the_memory_is_refused(monkeypatch):
    from gpt2tune import hardware
    from gpt2tune.model.load import check_block_size

    model = SimpleNamespace(config=SimpleNamespace(n_positions=131_072))
    monkeypatch.setattr(hardware, "total_memory", lambda: 16 << 30)
    check_block_size(model, 1024, 8)  # 40 MiB of masks: fine
    with pytest.raises(UserError, match=r"block-size 65536 with batch-size 8 needs at least 160.0 GiB for its "
                                        r"attention masks, more than this machine's 16.0 GiB of memory"):
        check_block_size(model, 65_536, 8)


@pytest.mark.parametrize("command", ["generate", "evaluate", "train", "train --config"])
def test_a_thread_count_beyond_the_cap_is_one_line(command, corpus, tiny_model, capsys, tmp_path):
    config = tmp_path / "threads.yaml"
    config.write_text("threads: 100000\n", encoding="utf-8")
    args = {"generate": ["generate", tiny_model, "Tokyo", "--threads", "100000"],
            "evaluate": ["evaluate", tiny_model, "--data", corpus, "--threads", "100000"],
            "train": ["train", "--data", corpus, "--model", tiny_model, "--out", tmp_path / "run",
                      "--threads", "100000"],
            "train --config": ["train", "--config", config, "--data", corpus, "--model", tiny_model,
                               "--out", tmp_path / "run"]}[command]
    rc, out, err = run_cli(capsys, *args)
    one_line_error(rc, err, "threads must be at most ", "(4 per CPU here, 64 at least), got 100000")
    assert out == "" and not (tmp_path / "run").exists()


def test_omp_num_threads_beyond_the_cap_is_one_line(tiny_model, capsys, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "100000")
    rc, out, err = run_cli(capsys, "generate", tiny_model, "Tokyo")
    one_line_error(rc, err, "OMP_NUM_THREADS=100000 is more threads than this machine can use (at most ",
                   "set it lower, or unset it")
    assert out == ""


def test_a_run_recorded_with_64_threads_is_still_valid_anywhere():
    TrainConfig(data="x", threads=64).validate()
    with pytest.raises(UserError, match="threads must be at most"):
        TrainConfig(data="x", threads=max(64, 4 * (os.cpu_count() or 1)) + 1).validate()


def test_a_lora_rank_beyond_the_layers_is_refused_before_allocating(corpus, tiny_model, capsys, tmp_path):
    rc, _, err = run_cli(capsys, "train", "--data", corpus, "--model", tiny_model, "--out", tmp_path / "run",
                         "--lora", "--lora-r", "1000000000", "--max-steps", "1")
    one_line_error(rc, err, "lora-r 1000000000 is above the rank of the layers LoRA adapts in this model "
                            "(64 at most)")
    assert not (tmp_path / "run").exists()


# ---------------------------------------------------------------------------------- run files

def test_report_leaves_out_null_numbers_and_a_list_epoch(capsys, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    write_config(TrainConfig(data="corpus.txt", out=str(run), model="gpt2"), run / "config.yaml")
    good = [{"epoch": 0, "step": 0, "train_loss": None, "val_loss": 5.0, "val_ppl": 148.4, "tokens_per_s": 0,
             "elapsed_s": 0, "lr": 0.0, "best": True, "event": "start"},
            {"epoch": 1, "step": 10, "train_loss": 4.2, "val_loss": 4.0, "val_ppl": 54.6, "tokens_per_s": 900.0,
             "elapsed_s": 12.5, "lr": 1e-4, "best": True, "event": "epoch"}]
    nulls = [{**good[1], "step": 20, key: None} for key in ("lr", "epoch", "elapsed_s")]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in good + nulls), encoding="utf-8")
    samples = [{"epoch": 1, "step": 10, "keyword": "Tokyo", "text": "Tokyo is a city.", "ended": True},
               {"epoch": [1, 2], "step": 10, "keyword": "Tokyo", "text": "Tokyo has trains.", "ended": True}]
    (run / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in samples), encoding="utf-8")
    rc, out, err = run_cli(capsys, "report", run)
    assert rc == 0, err
    assert err.strip().splitlines() == [
        f"gpt2tune: warning: {run}: skipped 3 lines of metrics.jsonl (line 3: lr is not a number)",
        f"gpt2tune: warning: {run}: skipped 1 line of samples.jsonl (line 2: epoch is not a number)"]
    page = (run / "report.html").read_text(encoding="utf-8")
    assert "Tokyo is a city." in page and "Tokyo has trains." not in page and "54.60</b>" in page


@pytest.fixture(scope="module")
def trained_run(tiny_model, tmp_path_factory) -> tuple[Path, Path]:
    """A run of one step with its last/ checkpoint, and its data file."""
    root = tmp_path_factory.mktemp("trained")
    data = root / "corpus.txt"
    data.write_text("\n".join(make_corpus(60)) + "\n", encoding="utf-8")
    from gpt2tune.cli import main

    assert main(["train", "--data", str(data), "--model", str(tiny_model), "--out", str(root / "run"),
                 "--max-steps", "1", "--samples", "0"]) == 0
    return root / "run", data


@pytest.mark.parametrize("state, why", [
    ({"loop": {}}, "no optimizer dict"),
    ([1, 2, 3], "it holds a list, not a dict"),
    ({"loop": {}, "optimizer": {}, "scheduler": {}, "rng": []}, "the optimizer has no state and param_groups"),
])
def test_a_trainer_state_of_the_wrong_shape_is_named_on_resume(state, why, trained_run, capsys, tmp_path):
    import torch

    run = tmp_path / "run"
    shutil.copytree(trained_run[0], run)
    torch.save(state, run / "last" / "trainer_state.pt")
    before = snapshot(run)
    rc, _, err = run_cli(capsys, "train", "--data", trained_run[1], "--out", run, "--resume")
    one_line_error(rc, err, f"checkpoint {run / 'last' / 'trainer_state.pt'} is damaged (it is not a gpt2tune "
                            f"training state: {why})", f"--model {run / 'best'}")
    assert snapshot(run) == before


def test_the_loss_plot_ignores_a_matplotlibrc_that_needs_latex(tmp_path):
    # a matplotlibrc in the working directory is read into rcParams when matplotlib is imported: rc_file does
    # the same here, in a context so the other tests keep matplotlib's defaults
    import matplotlib

    from gpt2tune.run.report import write_report

    run = tmp_path / "run"
    run.mkdir()
    write_config(TrainConfig(data="corpus.txt", out=str(run), model="gpt2"), run / "config.yaml")
    rows = [{"epoch": 0, "step": 0, "train_loss": None, "val_loss": 5.0, "val_ppl": 148.4, "best": True,
             "event": "start"},
            {"epoch": 1, "step": 10, "train_loss": 4.2, "val_loss": 4.0, "val_ppl": 54.6, "best": True,
             "event": "epoch"}]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    rc = tmp_path / "matplotlibrc"
    rc.write_text("text.usetex: True\ntext.latex.preamble: \\usepackage{nonexistent}\n", encoding="utf-8")
    with matplotlib.rc_context():
        matplotlib.rc_file(rc)
        assert matplotlib.rcParams["text.usetex"]
        write_report(run)
        assert matplotlib.rcParams["text.usetex"]  # the user's settings are theirs again afterwards
    assert (run / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ---------------------------------------------------------------------------------------- model files

@pytest.mark.parametrize("name, content, message", [
    ("tokenizer_config.json", ["a", 1], "tokenizer_config.json: it holds a list, not a JSON object"),
    ("config.json", {"n_head": 0}, "config.json: n_head must be a positive whole number, got 0"),
    ("config.json", {"n_layer": -2}, "config.json: n_layer must be a positive whole number, got -2"),
    ("config.json", {"n_embd": 64.5}, "config.json: n_embd must be a positive whole number, got 64.5"),
])
def test_model_files_of_the_wrong_shape_are_one_line(name, content, message, tiny_model, capsys, tmp_path):
    model = tmp_path / "model"
    shutil.copytree(tiny_model, model)
    if isinstance(content, dict):
        content = {**json.loads((model / name).read_text(encoding="utf-8")), **content}
    (model / name).write_text(json.dumps(content), encoding="utf-8")
    rc, out, err = run_cli(capsys, "generate", model, "Tokyo")
    one_line_error(rc, err, str(model / name), message)
    assert out == ""


# ---------------------------------------------------------------------------------------------- serve

@pytest.fixture(scope="module")
def holder(tiny_model):
    pytest.importorskip("fastapi")
    from gpt2tune.serve.holder import ModelHolder

    return ModelHolder.load("tuned", tiny_model)


def test_serve_answers_for_run_files_cut_mid_character(holder, tmp_path):
    from fastapi.testclient import TestClient

    from gpt2tune.serve import ServeConfig, create_app

    run = tmp_path / "run"
    run.mkdir()
    rows = [{"epoch": 0, "step": 0, "train_loss": None, "val_loss": 10.8, "val_ppl": 49000.0, "best": True,
             "event": "start"}]
    cut = "東京".encode("utf-8")[:4]  # a whole character and a piece of the next
    (run / "metrics.jsonl").write_bytes(json.dumps(rows[0]).encode() + b"\n" + b'{"event": "' + cut)
    sample = {"epoch": 0, "step": 0, "keyword": "Tokyo", "text": "Tokyo is", "ended": True}
    (run / "samples.jsonl").write_bytes(json.dumps(sample).encode() + b"\n" + b'{"text": "' + cut)
    (run / "config.yaml").write_bytes(b"keywords:\n- Tokyo\n- " + cut)
    app = create_app(dataclasses.replace(holder, run_dir=run), config=ServeConfig())
    with TestClient(app, base_url="http://127.0.0.1", raise_server_exceptions=False) as client:
        r = client.get("/v1/run")
        assert r.status_code == 200, r.text
        info = r.json()
        assert info["metrics"] == rows and info["samples"] == [sample]
        assert info["keywords"] == []  # a config.yaml that is not UTF-8 names none
        (run / "config.yaml").write_text("keywords:\n- Tokyo\n", encoding="utf-8")
        assert client.get("/v1/run").json()["keywords"] == ["Tokyo"]
