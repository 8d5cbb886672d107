"""The run directory under attack: whose it is, who is using it, what --overwrite removes, kills between the
renames of a checkpoint swap, failing writes (a full disk), paths that can't be made, runs with no checkpoint.

Every refusal is checked for its exit code, a single line on stderr, and that nothing was lost or written.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import make_corpus
from safetensors import SafetensorError
from safetensors.torch import load_file

from gpt2tune.cli import main
from gpt2tune.errors import UserError
from gpt2tune.evaluate import run as evaluate
from gpt2tune.evaluate.run import metrics_table
from gpt2tune.model import load as modeling
from gpt2tune.model.source import resolve
from gpt2tune.run import directory as rundir

ARGS = ["--epochs", "1", "--lr", "3e-3", "--batch-size", "4", "--block-size", "64", "--samples", "0",
        "--patience", "none", "--eval-every", "1"]


def train_args(model: Path, data: Path, out: Path, *extra: str) -> list[str]:
    return ["train", "--model", str(model), "--data", str(data), "--out", str(out), *ARGS, *extra]


def snapshot(d: Path) -> dict[str, str]:
    """Every path under `d` with a hash of its bytes: equal snapshots = nothing lost, changed or added."""
    return {str(p.relative_to(d)): (hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir")
            for p in sorted(d.rglob("*"))}


PROGRESS = ("step ", "first step done", "time budget")  # train's progress lines share stderr with errors
# what a command says before it fails: its thread choice and the model it is loading
INFO = re.compile(r"gpt2tune: (\d+ threads? \(|loading )")


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = [x for x in err.strip().splitlines() if x.strip() and not INFO.match(x) and not x.startswith(PROGRESS)]
    assert len(lines) == 1 and lines[0].startswith("gpt2tune: error: ") and "Traceback" not in err, err
    return lines[0]


def assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def history(run: Path) -> list[tuple]:
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["train_loss"], r["val_loss"], r["best"]) for r in rows]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    p = tmp_path_factory.mktemp("data") / "japan.txt"
    p.write_text("\n".join(make_corpus(300, seed=1)) + "\n", encoding="utf-8")
    return p


@pytest.fixture(scope="module")
def finished(tiny_model, corpus, tmp_path_factory) -> Path:
    """A finished two-step run (evaluated at steps 0, 1, 2): the reference the attacks start from."""
    out = tmp_path_factory.mktemp("runs") / "finished"
    assert main(train_args(tiny_model, corpus, out, "--max-steps", "2")) == 0
    return out


@pytest.fixture()
def run(finished, tmp_path) -> Path:
    """A copy of the finished run, free to damage."""
    return Path(shutil.copytree(finished, tmp_path / "run", symlinks=True))


def fake_comparison(base: str) -> dict:
    """A compare.json as `compare` writes it, without scoring anything."""
    side = {"perplexity": 10.0, "eos_rate": 0.5, "mean_length": 8.0, "distinct_1": 0.5, "distinct_2": 0.6,
            "copy_rate": 0.1, "prompt_faithfulness": 1.0}
    sampling = {"top_k": 50, "top_p": 0.95, "temperature": 1.0, "max_new_tokens": 6, "n": 1, "seed": 0}
    return {"settings": {"base": base, "tuned": "tuned", "heldout": "all of x", "heldout_sentences": 3,
                         "copy_reference_sentences": 3, "keywords": ["Kyoto"], "sampling": sampling,
                         "block_size": 64, "precision": "fp32", "heldout_mean_length": 8.0},
            "base": {"model": base, **side}, "tuned": {"model": "tuned", **side},
            "table": metrics_table(side, side, 8.0),
            "samples": [{"keyword": "Kyoto", "index": 0, "base": {"text": "Kyoto a", "ended": True},
                         "tuned": {"text": "Kyoto b", "ended": True}}]}


def full_disk(*args):
    raise OSError(errno.ENOSPC, "No space left on device")


# ------------------------------------------------------------------------------------ 1: only gpt2tune's runs

def test_overwrite_refuses_a_directory_gpt2tune_did_not_make(tiny_model, corpus, tmp_path, capsys):
    p = tmp_path / "p"
    (p / "last").mkdir(parents=True)
    (p / "config.yaml").write_text("mine\n")
    (p / "last" / "weights.bin").write_bytes(b"w")
    (p / "report.html").write_text("my page")
    before = snapshot(p)
    assert main(train_args(tiny_model, corpus, p, "--overwrite")) == 1
    line = one_error_line(capsys)
    assert f"--out {p} holds a config.yaml but is not a run gpt2tune made" in line
    assert main(["train", "--out", str(p), "--resume"]) == 1
    assert f"nothing to resume: --out {p} holds no gpt2tune run" in one_error_line(capsys)
    assert snapshot(p) == before


# ------------------------------------------------------------------------- 2: best/ is a copy; the advice works

def test_best_is_an_independent_copy_and_the_damage_advice_works(finished, run, corpus, tmp_path, capsys):
    best, last = finished / "best" / "model.safetensors", finished / "last" / "model.safetensors"
    assert best.stat().st_nlink == 1 and best.stat().st_ino != last.stat().st_ino  # no hard links
    best_before = snapshot(run / "best")
    weights = run / "last" / "model.safetensors"
    os.truncate(weights, weights.stat().st_size // 2)
    assert main(["train", "--out", str(run), "--resume", "--max-steps", "3"]) == 1
    line = one_error_line(capsys)
    assert f"checkpoint {run / 'last'} is damaged" in line and f"--model {run / 'best'} and another --out" in line
    assert snapshot(run / "best") == best_before
    # follow the advice
    new = tmp_path / "new"
    assert main(["train", "--model", str(run / "best"), "--data", str(corpus), "--out", str(new), *ARGS,
                 "--max-steps", "1"]) == 0
    assert (new / "best" / "model.safetensors").is_file() and snapshot(run / "best") == best_before


# ------------------------------------------------------------------------------------------------ 3: the lock

def hold_lock(run_dir: Path) -> subprocess.Popen:
    """Another process holding the run's lock, as a running `train` does."""
    code = ("import fcntl, sys, time; f = open(sys.argv[1], 'ab'); fcntl.flock(f, fcntl.LOCK_EX); "
            "print('locked', flush=True); time.sleep(300)")
    proc = subprocess.Popen([sys.executable, "-c", code, str(run_dir / rundir.MARKER)], stdout=subprocess.PIPE,
                            text=True)
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_a_second_train_on_a_run_in_use_is_refused(run, tiny_model, corpus, capsys):
    before = snapshot(run)
    holder = hold_lock(run)
    try:
        for args in (["train", "--out", str(run), "--resume", "--max-steps", "4"],
                     train_args(tiny_model, corpus, run, "--overwrite"), train_args(tiny_model, corpus, run)):
            assert main(args) == 1
            assert f"--out {run} is in use by another gpt2tune train" in one_error_line(capsys)
    finally:
        holder.kill()
        holder.wait()
    assert snapshot(run) == before  # metrics.jsonl and all: nothing mixed in


def test_two_trains_starting_on_one_new_directory(tmp_path):
    out = tmp_path / "new"
    assert rundir.claim(out, resume=False, overwrite=False) is None  # a new directory: nothing to lock yet
    out.mkdir()
    holder = hold_lock(out)  # ...while loading its model, another train made the run and holds it
    try:
        with pytest.raises(UserError, match="in use by another gpt2tune train"):
            rundir.start(out, None)
    finally:
        holder.kill()
        holder.wait()
    (out / "config.yaml").write_text("theirs\n")  # it finished before this one got there
    with pytest.raises(UserError, match="taken by another gpt2tune train meanwhile"):
        rundir.start(out, None)
    assert (out / "config.yaml").read_text() == "theirs\n"


# ---------------------------------------------------------------------- 4: --overwrite removes the run's files

def test_overwrite_replaces_every_run_file_and_nothing_else(run, tiny_model, corpus, capsys):
    (run / "compare.json").write_text(json.dumps(fake_comparison("old-base-model")))
    (run / "compare.md").write_text("old comparison")
    (run / "val.txt").write_text("old\n")
    for leftover in ("best.tmp", "last.old", "best.old"):
        (run / leftover).mkdir()
    (run / ".report.html.99.tmp").write_text("half")
    for tracker in ("tensorboard", "wandb", "mlruns"):  # --report-to's files belong to the run too
        (run / tracker).mkdir()
        (run / tracker / "events").write_text("old")
    (run / "trackers.json").write_text("{}")
    (run / "exports.json").write_text("{}")
    (run / "notes.txt").write_text("mine")
    (run / "mine").mkdir()
    (run / "mine" / "x.txt").write_text("y")
    assert main(train_args(tiny_model, corpus, run, "--overwrite", "--max-steps", "1")) == 0
    names = {p.name for p in run.iterdir()} - {"val.txt"}  # a run may write its own val.txt
    assert names == {rundir.MARKER, "config.yaml", "metrics.jsonl", "samples.jsonl", "best", "last",
                     "report.html", "loss.png", "data.json", "notes.txt", "mine"}
    assert not (run / "val.txt").exists() or (run / "val.txt").read_text() != "old\n"
    assert (run / "notes.txt").read_text() == "mine" and (run / "mine" / "x.txt").read_text() == "y"
    assert "old-base-model" not in (run / "report.html").read_text()  # the new report shows no old comparison
    assert [r[0] for r in history(run)] == [0, 1]


# ---------------------------------------------------------------- 6: a kill between the two renames of a swap

@pytest.mark.parametrize("name", ["best", "last"])
def test_resume_restores_a_checkpoint_after_a_kill_between_its_renames(finished, run, name, capsys):
    before = {n: snapshot(run / n) for n in ("best", "last")}
    (run / name).rename(run / f"{name}.old")  # the state a kill between the renames leaves
    (run / f"{name}.tmp").mkdir()
    (run / f"{name}.tmp" / "model.safetensors").write_bytes(b"half")
    (run / f"{'last' if name == 'best' else 'best'}.tmp").mkdir()  # a stale one of the other, too
    if name == "best":  # meanwhile readers load the intact previous best
        assert resolve(str(run)).path == str(run / "best.old")
    assert main(["train", "--out", str(run), "--resume"]) == 0  # finished already: restores, trains nothing
    assert {n: snapshot(run / n) for n in ("best", "last")} == before
    assert not [n for n in ("best.old", "best.tmp", "last.old", "last.tmp") if (run / n).exists()]
    assert resolve(str(run)).path == str(run / "best")


class Killed(BaseException):
    """Stands for kill -9: nothing catches it, so no clean-up runs and the files stay as they were."""


def test_kill_between_the_renames_of_best_then_resume_is_bit_identical(finished, tiny_model, corpus, tmp_path,
                                                                        monkeypatch):
    real = rundir.swap_in

    def killed_mid_swap(tmp: Path, target: Path) -> None:
        if target.name == "best" and target.exists():
            target.rename(target.with_name("best.old"))
            raise Killed  # between the two renames
        real(tmp, target)

    monkeypatch.setattr(rundir, "swap_in", killed_mid_swap)
    out = tmp_path / "killed"
    with pytest.raises(Killed):
        main(train_args(tiny_model, corpus, out, "--max-steps", "2"))
    monkeypatch.undo()
    assert not (out / "best").exists() and (out / "best.old" / "config.json").is_file()
    assert (out / "best.tmp").is_dir() and (out / "last.tmp").is_dir()
    assert main(["train", "--out", str(out), "--resume"]) == 0
    assert_same_weights(out / "best", finished / "best")
    assert_same_weights(out / "last", finished / "last")
    assert history(out) == history(finished)
    assert not [n for n in ("best.old", "best.tmp", "last.old", "last.tmp") if (out / n).exists()]


# --------------------------------------------------------------------------------- 15: failing writes, full disk

def _fail_on_call(n: int, real, error: Exception, partial_file: str):
    calls = {"n": 0}

    def failing(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == n:
            target = args[-1]  # modeling.save(model, tokenizer, directory), torch.save(obj, file or writer)
            target = Path(target.f.name if hasattr(target, "f") else target)
            (target if target.is_dir() else target.parent).joinpath(partial_file).write_bytes(b"half")
            raise error  # what a full disk does, after leaving half a file
        return real(*args, **kwargs)

    return failing


@pytest.mark.parametrize("where", ["safetensors", "torch.save"])
def test_a_failing_checkpoint_save_is_one_line_and_keeps_the_previous(where, tiny_model, corpus, tmp_path,
                                                                      monkeypatch, capsys):
    out = tmp_path / "full"
    if where == "safetensors":  # fails at the second save: the first (step 1; step 0 saves none) is kept
        error = SafetensorError('Error while serializing: IoError(Os { code: 28, kind: StorageFull })')
        monkeypatch.setattr(modeling, "save", _fail_on_call(2, modeling.save, error, "model.safetensors"))
    else:  # fails at the very first save: there is no previous one
        error = RuntimeError("PytorchStreamWriter failed writing file data/0: file write failed")
        monkeypatch.setattr(torch, "save", _fail_on_call(1, torch.save, error, "trainer_state.pt"))
    assert main(train_args(tiny_model, corpus, out, "--max-steps", "2")) == 1
    line = one_error_line(capsys)
    assert f"could not save a checkpoint in {out}" in line and type(error).__name__ in line
    assert not [n for n in ("best.tmp", "last.tmp", "best.old", "last.old") if (out / n).exists()]
    monkeypatch.undo()
    if where == "safetensors":
        assert "the previous checkpoint (step 1) is kept; free some space and use --resume" in line
        assert torch.load(out / "last" / "trainer_state.pt", weights_only=False)["loop"]["step"] == 1
        modeling.load(str(out / "last"))
        modeling.load(str(out / "best"))
    else:
        assert "none was saved before; free some space and start again with --overwrite" in line
        assert not (out / "last").exists() and not (out / "best").exists()
        assert main(["train", "--out", str(out), "--resume"]) == 1  # and resume agrees
        assert "start it again with --overwrite" in one_error_line(capsys)


def test_report_on_a_full_disk_leaves_the_old_report(run, monkeypatch, capsys):
    before = snapshot(run)
    monkeypatch.setattr(os, "fsync", full_disk)
    assert main(["report", str(run)]) == 1
    line = one_error_line(capsys)
    assert "could not write" in line and "No space left on device" in line and str(run) in line
    assert snapshot(run) == before  # no 0-byte file, no temporary file


def test_report_hitting_a_real_write_failure_writes_nothing(run, capsys):
    (run / "report.html").unlink()
    (run / "loss.png").unlink()
    before = snapshot(run)
    # a real failing write, from the kernel: a file size limit (EFBIG once SIGXFSZ is ignored), only for this call
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (1000, hard))
    try:
        code = main(["report", str(run)])
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, handler)
    assert code == 1
    assert "(File too large); it was left as it was" in one_error_line(capsys)
    assert snapshot(run) == before  # no 0-byte report.html or loss.png, no temporary file


def test_compare_on_a_full_disk_keeps_the_old_files(tmp_path, monkeypatch, capsys):
    out = tmp_path / "cmp"
    out.mkdir()
    (out / "compare.json").write_text("old")
    before = snapshot(out)
    monkeypatch.setattr(evaluate, "compare", lambda *a, **k: fake_comparison("base"))
    monkeypatch.setattr(os, "fsync", full_disk)
    argv = ["compare", "--base", "b", "--tuned", "t", "--data", "d.txt", "--out", str(out), "--overwrite"]
    assert main(argv) == 1
    line = one_error_line(capsys)
    assert f"could not write {out / 'compare.json'} (No space left on device)" in line
    assert snapshot(out) == before


# ------------------------------------------------------------------------------- 16: paths that can't be made

def unmakeable(tmp_path: Path, kind: str) -> tuple[Path, str]:
    """A path below a regular file or through a dangling symbolic link, and what the error must say."""
    (tmp_path / "a-file").write_text("x")
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    if kind == "below-file":
        return tmp_path / "a-file" / "out", f"can't be made: {tmp_path / 'a-file'} is a file, not a directory"
    if kind == "dangling":
        return tmp_path / "dangling", f"is a symbolic link to {tmp_path / 'nowhere'}, which does not exist"
    return tmp_path / "dangling" / "out", f"can't be made: {tmp_path / 'dangling'} is a symbolic link"


@pytest.mark.parametrize("kind", ["below-file", "dangling", "below-dangling"])
def test_train_out_that_cant_be_made(kind, tiny_model, corpus, tmp_path, capsys):
    out, says = unmakeable(tmp_path, kind)
    before = snapshot(tmp_path)
    assert main(train_args(tiny_model, corpus, out)) == 1
    line = one_error_line(capsys)
    assert f"--out {out}" in line and says in line
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("kind", ["below-file", "below-dangling"])
def test_compare_out_that_cant_be_made_fails_before_the_slow_part(kind, tmp_path, monkeypatch, capsys):
    def slow_part(*a, **k):
        raise AssertionError("compare ran before --out was checked")

    monkeypatch.setattr(evaluate, "compare", slow_part)
    out, says = unmakeable(tmp_path, kind)
    before = snapshot(tmp_path)
    assert main(["compare", "--base", "b", "--tuned", "t", "--data", "d.txt", "--out", str(out)]) == 1
    line = one_error_line(capsys)
    assert f"--out {out}" in line and says in line
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("kind", ["below-file", "dangling", "below-dangling"])
def test_corpus_out_that_cant_be_made(kind, tmp_path, capsys):
    source = tmp_path / "notes.txt"
    source.write_text("Kyoto has many temples and gardens that visitors love.\n")
    out, says = unmakeable(tmp_path, kind)
    out = out if kind == "dangling" else out / "corpus.txt"
    before = snapshot(tmp_path)
    assert main(["corpus", "clean", str(source), "--out", str(out)]) == 1
    line = one_error_line(capsys)
    assert f"--out {out}" in line and says in line
    assert snapshot(tmp_path) == before


def test_cache_dir_that_is_a_file_or_read_only(tmp_path, monkeypatch, capsys):
    args = ["corpus", "wikipedia", "Japan", "--out", str(tmp_path / "japan.txt"),
            "--api-url", "http://127.0.0.1:9/w/api.php", "--cache-dir"]
    (tmp_path / "cache-file").write_text("x")
    before = snapshot(tmp_path)
    assert main([*args, str(tmp_path / "cache-file")]) == 1
    line = one_error_line(capsys)
    assert f"--cache-dir {tmp_path / 'cache-file'} is a file, not a directory" in line and "--no-cache" in line
    read_only = tmp_path / "read-only"
    read_only.mkdir()
    read_only.chmod(0o555)
    if os.geteuid() == 0:  # root writes anywhere; ask as the OS would answer a user (or a read-only mount)
        real = os.access
        monkeypatch.setattr(os, "access", lambda p, mode: Path(p) != read_only and real(p, mode))
    before = snapshot(tmp_path)
    assert main([*args, str(read_only)]) == 1
    assert f"--cache-dir {read_only} is not writable" in one_error_line(capsys)
    assert snapshot(tmp_path) == before


# ----------------------------------------------------------------------- 20: a run that never saved a checkpoint

def test_a_run_without_a_checkpoint_gets_one_consistent_advice(run, tiny_model, corpus, capsys):
    shutil.rmtree(run / "last")  # killed before its first save (config.yaml and the marker already written)
    shutil.rmtree(run / "best")
    before = snapshot(run)
    assert main(train_args(tiny_model, corpus, run)) == 1
    line = one_error_line(capsys)
    assert "stopped before its first checkpoint" in line and "pass --overwrite" in line and "--resume" not in line
    assert main(["train", "--out", str(run), "--resume"]) == 1
    line = one_error_line(capsys)
    assert "stopped before its first checkpoint" in line and "again with --overwrite instead of --resume" in line
    assert snapshot(run) == before
    lock = rundir.claim(run, resume=False, overwrite=True)  # the advice is taken: --overwrite may replace it
    assert lock is not None
    lock.release()
