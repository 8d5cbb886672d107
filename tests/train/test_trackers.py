"""--report-to: TensorBoard, W&B (offline) and MLflow get each evaluation's metrics, the options and the samples,
read back with each library's own reader; a run killed after logging and resumed logs every step once."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
from conftest import make_corpus

import gpt2tune
from gpt2tune.cli import main
from gpt2tune.run import checkpoint
from gpt2tune.train import trackers

OPTS = dict(epochs=1, lr=3e-3, batch_size=4, block_size=64, samples=1, patience=None, eval_every=2, max_steps=6,
            threads=1, keywords=["Osaka", "Kyoto is"])


class Killed(BaseException):
    """A kill -9 as the loop sees it: nothing after it runs."""


@pytest.fixture()
def offline(tmp_path, monkeypatch):
    """No W&B key, no MLflow server: every tracker writes under the run."""
    for name in ("WANDB_API_KEY", "WANDB_MODE", "MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME", "WANDB_PROJECT"):
        monkeypatch.delenv(name, raising=False)
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("NETRC", str(home / ".netrc"))
    for name in ("WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_DATA_DIR", "WANDB_ARTIFACT_DIR"):
        monkeypatch.setenv(name, str(home / name.lower()))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    p = tmp_path_factory.mktemp("data") / "japan.txt"
    p.write_text("\n".join(make_corpus(200, seed=3)) + "\n", encoding="utf-8")
    return p


def wandb_records(run: Path):
    """The records of RUN/wandb's offline run files, parsed with wandb's own protobuf (the files are a
    LevelDB-style log: a 7-byte ':W&B' header, 32 KiB blocks, each record a 7-byte header and a chunk)."""
    from wandb.proto import wandb_internal_pb2 as pb

    for path in sorted(run.glob("wandb/offline-run-*/run-*.wandb")):
        data, pos, chunks = path.read_bytes(), 7, b""
        assert data[:4] == b":W&B"
        while pos + 7 <= len(data):
            left = 32768 - pos % 32768
            _, length, kind = struct.unpack("<IHB", data[pos:pos + 7]) if left >= 7 else (0, 0, 0)
            if kind == 0:
                pos += left
                continue
            chunks += data[pos + 7:pos + 7 + length]
            pos += 7 + length
            if kind in (1, 4):  # a full record, or the last chunk of one
                record = pb.Record()
                record.ParseFromString(chunks)
                chunks = b""
                yield path, record


def wandb_history(run: Path) -> list[dict]:
    return [{i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in r.history.item}
            for _, r in wandb_records(run) if r.WhichOneof("record_type") == "history"]


def tensorboard_scalars(run: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run / "tensorboard"), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def tensorboard_text_steps(run: Path) -> list[int]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run / "tensorboard"), size_guidance={"tensors": 0})
    acc.Reload()
    return [e.step for e in acc.Tensors("samples/text_summary")]


def mlflow_run(run: Path):
    import mlflow

    mlflow.set_tracking_uri((run / "mlruns").resolve().as_uri())
    (found,) = mlflow.search_runs(experiment_names=["gpt2tune"], output_format="list")
    return found, mlflow.MlflowClient()


def test_a_killed_and_resumed_run_logs_every_evaluation_once_to_each_tracker(tiny_model, corpus, tmp_path, offline,
                                                                              monkeypatch):
    out = tmp_path / "run"
    saves = {"n": 0}
    real_save = checkpoint.save_checkpoint

    def save_then_die(*args, **kwargs):  # the second save (step 4; step 0 saves none) dies after its evaluation
        saves["n"] += 1                   # was logged
        if saves["n"] == 2:
            raise Killed
        real_save(*args, **kwargs)

    monkeypatch.setattr(checkpoint, "save_checkpoint", save_then_die)
    with pytest.raises(Killed):
        gpt2tune.train(model=str(tiny_model), data=str(corpus), out=str(out),
                       report_to=["tensorboard", "wandb", "mlflow"], **OPTS)
    ids = json.loads((out / "trackers.json").read_text())
    assert ids["tensorboard"]["logged_step"] == ids["wandb"]["logged_step"] == ids["mlflow"]["logged_step"] == 4
    monkeypatch.setattr(checkpoint, "save_checkpoint", real_save)
    result = gpt2tune.train(out=str(out), resume=True)  # from the step-2 checkpoint: redoes the step-4 evaluation
    assert [r["step"] for r in result.metrics] == [0, 2, 4, 6]
    rows = {r["step"]: r for r in result.metrics}
    again = json.loads((out / "trackers.json").read_text())
    assert again["wandb"]["id"] == ids["wandb"]["id"] and again["mlflow"]["run_id"] == ids["mlflow"]["run_id"]

    scalars = tensorboard_scalars(out)
    assert {"train/loss", "val/loss", "val/ppl", "train/lr", "train/tokens_per_s"} <= set(scalars)
    assert [s for s, _ in scalars["val/loss"]] == [0, 2, 4, 6]
    assert [s for s, _ in scalars["train/loss"]] == [2, 4, 6]  # the start has no train loss
    assert all(v == pytest.approx(rows[s]["val_loss"], rel=1e-6) for s, v in scalars["val/loss"])
    assert tensorboard_text_steps(out) == [0, 2, 4, 6]

    found, client = mlflow_run(out)
    assert found.info.run_id == ids["mlflow"]["run_id"] and found.info.status == "FINISHED"
    history = client.get_metric_history(found.info.run_id, "val/ppl")
    assert [(m.step, m.value) for m in history] == [(s, pytest.approx(rows[s]["val_ppl"])) for s in (0, 2, 4, 6)]
    assert found.data.params["lr"] == "0.003" and found.data.params["keywords"] == "Osaka,Kyoto is"
    samples = client.list_artifacts(found.info.run_id, "samples")
    assert [Path(a.path).name for a in samples] == [f"step_{s:06d}.md" for s in (0, 2, 4, 6)]

    history = wandb_history(out)
    assert [h["_step"] for h in history if "val/loss" in h] == [0, 2, 4, 6]
    assert all(h["val/loss"] == pytest.approx(rows[h["_step"]]["val_loss"]) for h in history if "val/loss" in h)
    assert [h["samples/nrows"] for h in history if "samples/nrows" in h] == [2, 2, 2, 2]
    configs = [r.run.config for _, r in wandb_records(out) if r.WhichOneof("record_type") == "run"]
    assert {u.key or "/".join(u.nested_key): json.loads(u.value_json) for u in configs[0].update}["batch_size"] == 4
    assert {r.run.run_id for _, r in wandb_records(out) if r.WhichOneof("record_type") == "run"} == {ids["wandb"]["id"]}


def test_tensorboard_holds_the_options_as_hyperparameters(tiny_model, corpus, tmp_path, offline):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    out = tmp_path / "run"
    gpt2tune.train(model=str(tiny_model), data=str(corpus), out=str(out), report_to=["tensorboard"],
                   **{**OPTS, "max_steps": 2, "samples": 0})
    acc = EventAccumulator(str(out / "tensorboard"))
    acc.Reload()
    content = acc.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    hparams = plugin_data_pb2.HParamsPluginData.FromString(content).session_start_info.hparams
    assert hparams["block_size"].number_value == 64 and hparams["report_to"].string_value == "tensorboard"
    assert not (out / "mlruns").exists() and not (out / "wandb").exists()


def test_wandb_goes_offline_without_a_key_or_without_the_server(offline, monkeypatch):
    assert trackers.wandb_mode() == ("offline", "no W&B API key")
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")  # the discard port: nothing listens
    assert trackers.wandb_mode() == ("offline", "127.0.0.1 cannot be reached")
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert trackers.wandb_mode() == ("disabled", "WANDB_MODE")


@pytest.mark.parametrize("value, line", [
    ("tensorbord", "report-to: unknown tracker 'tensorbord' (known: tensorboard, wandb, mlflow, or none)"),
    ("mlflow,comet", "report-to: unknown tracker 'comet' (known: tensorboard, wandb, mlflow, or none)"),
])
def test_an_unknown_tracker_is_one_line(value, line, corpus, tmp_path, capsys):
    assert main(["train", "--data", str(corpus), "--out", str(tmp_path / "r"), "--report-to", value]) == 1
    assert capsys.readouterr().err == f"gpt2tune: error: {line}\n"
    assert not (tmp_path / "r").exists()


def test_report_to_is_a_config_key_and_none_means_none(tmp_path):
    from gpt2tune.config import TrainConfig, build

    assert build(TrainConfig, {"data": "x", "report_to": "TensorBoard, mlflow"}).report_to == ["tensorboard", "mlflow"]
    assert build(TrainConfig, {"data": "x", "report_to": ["none"]}).report_to == []
    assert build(TrainConfig, {"data": "x"}).report_to == []


def test_a_tracker_that_fails_mid_run_is_left_out_and_the_training_goes_on(tiny_model, corpus, tmp_path, offline,
                                                                           monkeypatch, capsys):
    real_log = trackers.TensorBoard.log

    def log_until_step_2(self, row, samples):
        if row["step"] >= 4:
            raise OSError(28, "No space left on device")
        real_log(self, row, samples)

    monkeypatch.setattr(trackers.TensorBoard, "log", log_until_step_2)
    out = tmp_path / "run"
    result = gpt2tune.train(model=str(tiny_model), data=str(corpus), out=str(out), report_to=["tensorboard"],
                            **{**OPTS, "samples": 0})
    assert [r["step"] for r in result.metrics] == [0, 2, 4, 6] and result.stopped == "max_steps"
    assert "gpt2tune: warning: --report-to tensorboard failed at step 4 and is left out from now on (OSError: " \
           "[Errno 28] No space left on device)" in capsys.readouterr().err
    assert [s for s, _ in tensorboard_scalars(out)["val/loss"]] == [0, 2]
    assert json.loads((out / "trackers.json").read_text())["tensorboard"]["logged_step"] == 2


def test_a_tracker_that_cannot_start_is_one_line(tiny_model, corpus, tmp_path, offline, monkeypatch, capsys):
    def refuse(self, out, config, saved):
        raise ConnectionError("tracking server refused the connection")

    monkeypatch.setattr(trackers.MLflow, "__init__", refuse)
    assert main(["train", "--model", str(tiny_model), "--data", str(corpus), "--out", str(tmp_path / "r"),
                 "--max-steps", "2", "--block-size", "64", "--report-to", "mlflow"]) == 1
    assert capsys.readouterr().err.splitlines()[-1] == (
        "gpt2tune: error: --report-to mlflow could not start (ConnectionError: tracking server refused the connection)")


def test_the_trackers_libraries_import_in_the_background_and_a_missing_one_is_left_to_the_one_line(monkeypatch):
    seen: list[tuple[str, str]] = []
    real_import = trackers.importlib.import_module

    def spy(name):
        seen.append((name, trackers.threading.current_thread().name))
        if name == "no_such_tracker_library":
            raise ModuleNotFoundError(f"No module named {name!r}")
        return real_import(name)

    monkeypatch.setattr(trackers.importlib, "import_module", spy)
    monkeypatch.setitem(trackers.MODULES, "mlflow", ["no_such_tracker_library", "mlflow.tracking"])
    assert trackers.preload([]) is None
    thread = trackers.preload(["tensorboard", "mlflow"])
    thread.join(timeout=60)
    assert not thread.is_alive()
    # both of TensorBoard's modules, then the missing one, which stops the thread without raising
    assert seen == [("torch.utils.tensorboard", "gpt2tune-trackers-import"),
                    ("torch.utils.tensorboard.summary", "gpt2tune-trackers-import"),
                    ("no_such_tracker_library", "gpt2tune-trackers-import")]


def test_train_starts_the_import_before_the_model_loads_and_the_trackers_wait_for_it(tiny_model, corpus, tmp_path,
                                                                                     offline, monkeypatch):
    from gpt2tune.train import adapt, loop

    events: list[str] = []
    real_preload, real_load, real_init = loop.trackers_preload, adapt.load_for_training, trackers.Trackers.__init__

    def preload(names):
        events.append("import started: " + ",".join(names))
        return real_preload(names)

    def load(*args, **kwargs):
        events.append("model loads")
        return real_load(*args, **kwargs)

    def init(self, out, names, config, preloading=None):
        events.append(f"trackers start ({'after the import' if preloading is not None else 'no import thread'})")
        real_init(self, out, names, config, preloading)
        assert not preloading.is_alive()

    monkeypatch.setattr(loop, "trackers_preload", preload)
    monkeypatch.setattr(adapt, "load_for_training", load)
    monkeypatch.setattr(trackers.Trackers, "__init__", init)
    gpt2tune.train(model=str(tiny_model), data=str(corpus), out=str(tmp_path / "run"), report_to=["tensorboard"],
                   **{**OPTS, "samples": 0, "max_steps": 2})
    assert events == ["import started: tensorboard", "model loads", "trackers start (after the import)"]
    assert [s for s, _ in tensorboard_scalars(tmp_path / "run")["val/loss"]] == [0, 2]
