"""Experiment trackers (--report-to tensorboard,wandb,mlflow): each evaluation's metrics, the run's options as
hyperparameters and the keyword samples as a table, written by each tracker's own library, offline by default.

A run's tracker ids and the last step each tracker logged live in RUN/trackers.json, so a resumed run continues
the same tracker runs and logs no step twice (an evaluation redone after a resume reproduces the same losses).
"""

from __future__ import annotations

import importlib
import json
import netrc
import os
import socket
import threading
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from gpt2tune.console import say
from gpt2tune.errors import UserError
from gpt2tune.files import atomic_write

IDS_FILE = "trackers.json"
PROJECT = "gpt2tune"  # the wandb project and the MLflow experiment


def scalars(row: dict[str, Any]) -> dict[str, float]:
    """The numbers of a metrics.jsonl row under the names every tracker shows."""
    names = {"train_loss": "train/loss", "val_loss": "val/loss", "val_ppl": "val/ppl", "lr": "train/lr",
             "tokens_per_s": "train/tokens_per_s", "epoch": "train/epoch"}
    return {name: float(row[key]) for key, name in names.items() if isinstance(row.get(key), (int, float))}


def hyperparameters(config: dict[str, Any]) -> dict[str, str | int | float | bool]:
    """A run's options as flat hyperparameters (lists comma-joined, None as 'none')."""
    flat: dict[str, str | int | float | bool] = {}
    for key, value in config.items():
        if isinstance(value, list):
            value = ",".join(map(str, value))
        flat[key] = "none" if value is None else value
    return flat


def samples_markdown(samples: list[dict[str, Any]]) -> str:
    """An evaluation's samples as a Markdown table (keyword | sample)."""
    cell = lambda s: " ".join(str(s).split()).replace("|", "\\|")
    return "| keyword | sample |\n|---|---|\n" + "".join(f"| {cell(x['keyword'])} | {cell(x['text'])} |\n"
                                                       for x in samples)


class TensorBoard:
    """Event files in RUN/tensorboard/."""

    name = "tensorboard"

    def __init__(self, out: Path, config: dict[str, Any], saved: dict[str, Any]):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(out / "tensorboard"))
        if not saved:  # the hyperparameters once, in the run's own event file (not add_hparams' sub-run)
            from torch.utils.tensorboard.summary import hparams

            for summary in hparams(hyperparameters(config), {"val/loss": 0.0, "val/ppl": 0.0}):
                self.writer.file_writer.add_summary(summary)
        self.ids: dict[str, Any] = {}

    def log(self, row: dict[str, Any], samples: list[dict[str, Any]]) -> None:
        for name, value in scalars(row).items():
            self.writer.add_scalar(name, value, row["step"])
        if samples:
            self.writer.add_text("samples", samples_markdown(samples), row["step"])
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


def wandb_mode() -> tuple[str, str]:
    """online or offline, and why: offline without an API key or when the W&B server can't be reached."""
    if os.environ.get("WANDB_MODE"):
        return os.environ["WANDB_MODE"], "WANDB_MODE"
    base = os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")
    host = urlparse(base).hostname or "api.wandb.ai"
    if not os.environ.get("WANDB_API_KEY"):
        try:
            has_key = netrc.netrc().authenticators(host) is not None
        except (OSError, netrc.NetrcParseError):
            has_key = False
        if not has_key:
            return "offline", "no W&B API key"
    try:
        socket.create_connection((host, urlparse(base).port or 443), timeout=3).close()
    except OSError:
        return "offline", f"{host} cannot be reached"
    return "online", "API key and network"


class WandB:
    """A Weights & Biases run; offline files in RUN/wandb/ when there is no key or no network."""

    name = "wandb"

    def __init__(self, out: Path, config: dict[str, Any], saved: dict[str, Any]):
        import wandb

        mode, why = wandb_mode()
        self.run = wandb.init(project=os.environ.get("WANDB_PROJECT", PROJECT), dir=str(out), mode=mode,
                              id=saved.get("id"), resume="allow", name=out.name,
                              config=hyperparameters(config), settings=wandb.Settings(silent=True))
        self.table = wandb.Table
        self.ids = {"id": self.run.id, "mode": mode}
        self.note = f"wandb {mode} ({why})"

    def log(self, row: dict[str, Any], samples: list[dict[str, Any]]) -> None:
        values: dict[str, Any] = dict(scalars(row))
        if samples:
            values["samples"] = self.table(columns=["step", "keyword", "sample"],
                                           data=[[row["step"], x["keyword"], x["text"]] for x in samples])
        self.run.log(values, step=row["step"])

    def close(self) -> None:
        self.run.finish()


class MLflow:
    """An MLflow run: in RUN/mlruns/ unless MLFLOW_TRACKING_URI names another store."""

    name = "mlflow"

    def __init__(self, out: Path, config: dict[str, Any], saved: dict[str, Any]):
        uri = os.environ.get("MLFLOW_TRACKING_URI") or saved.get("tracking_uri") or (out / "mlruns").resolve().as_uri()
        if uri.startswith("file:"):
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")  # the local store that needs no server or DB
        from mlflow.entities import Metric, Param
        from mlflow.tracking import MlflowClient

        self.client, self.metric = MlflowClient(tracking_uri=uri), Metric
        if saved.get("run_id") and saved.get("tracking_uri") == uri:
            self.run_id = saved["run_id"]
            self.client.update_run(self.run_id, status="RUNNING")
        else:
            name = os.environ.get("MLFLOW_EXPERIMENT_NAME", PROJECT)
            experiment = self.client.get_experiment_by_name(name)
            experiment_id = experiment.experiment_id if experiment else self.client.create_experiment(name)
            self.run_id = self.client.create_run(experiment_id, run_name=out.name).info.run_id
            params = [Param(k, str(v)) for k, v in hyperparameters(config).items()]
            for i in range(0, len(params), 100):  # MLflow takes 100 parameters per batch
                self.client.log_batch(self.run_id, params=params[i:i + 100])
        self.ids = {"run_id": self.run_id, "tracking_uri": uri}

    def log(self, row: dict[str, Any], samples: list[dict[str, Any]]) -> None:
        import time

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[self.metric(k, v, now, row["step"])
                                                    for k, v in scalars(row).items()])
        if samples:
            self.client.log_text(self.run_id, samples_markdown(samples), f"samples/step_{row['step']:06d}.md")

    def close(self) -> None:
        self.client.set_terminated(self.run_id)


KINDS = {"tensorboard": TensorBoard, "wandb": WandB, "mlflow": MLflow}
# what each tracker imports when it starts: most of its start-up time (MLflow's import alone is about a second)
MODULES = {"tensorboard": ["torch.utils.tensorboard", "torch.utils.tensorboard.summary"], "wandb": ["wandb"],
           "mlflow": ["mlflow.entities", "mlflow.tracking"]}


def preload(names: list[str]) -> threading.Thread | None:
    """Import the trackers' libraries in a background thread while the data and the model load, so that the
    run's first step does not wait for them; Trackers() joins it. A failed import is left for Trackers() to
    report, in its one line."""
    modules = [m for name in names for m in MODULES.get(name, [])]
    if not modules:
        return None

    def work() -> None:
        for module in modules:
            try:
                importlib.import_module(module)
            except Exception:  # Trackers() imports it again and says what is wrong
                return

    thread = threading.Thread(target=work, name="gpt2tune-trackers-import", daemon=True)
    thread.start()
    return thread


class Trackers:
    """The trackers a run reports to; the main process calls log() once per evaluation."""

    def __init__(self, out: Path, names: list[str], config: dict[str, Any], preloading: threading.Thread | None = None):
        if preloading is not None:
            preloading.join()
        self.out = out
        self.saved: dict[str, dict[str, Any]] = {}
        if (out / IDS_FILE).is_file():
            try:
                self.saved = json.loads((out / IDS_FILE).read_text(encoding="utf-8"))
            except (OSError, json.JSONDecodeError):
                self.saved = {}  # a damaged ids file: the trackers start new runs rather than fail the training
        self.items = []
        for name in names:
            try:
                self.items.append(KINDS[name](out, config, self.saved.get(name, {})))
            except ImportError as e:
                raise UserError(f"--report-to {name} needs the trackers extra: pip install 'gpt2tune[trackers]' "
                                f"({e})") from None
            except Exception as e:  # a tracker server that refuses, a bad MLFLOW_TRACKING_URI: one line, at the start
                raise UserError(f"--report-to {name} could not start ({type(e).__name__}: "
                                f"{' '.join(str(e).split())[:200]})") from None
        self.notes = [t.note for t in self.items if getattr(t, "note", None)]
        self.record()

    def logged_step(self, name: str) -> int:
        return int(self.saved.get(name, {}).get("logged_step", -1))

    def log(self, row: dict[str, Any], samples: list[dict[str, Any]]) -> None:
        """One evaluation to every tracker that has not logged its step yet (a resume may redo one)."""
        for t in list(self.items):
            if row["step"] > self.logged_step(t.name):
                try:
                    t.log(row, samples)
                except Exception as e:  # the training matters more than one tracker: it goes on without it
                    say(f"gpt2tune: warning: --report-to {t.name} failed at step {row['step']} and is left out "
                        f"from now on ({type(e).__name__}: {' '.join(str(e).split())[:200]})")
                    self.items.remove(t)
                    continue
                self.saved.setdefault(t.name, {})["logged_step"] = row["step"]
        self.record()

    def record(self) -> None:
        for t in self.items:
            self.saved[t.name] = {**self.saved.get(t.name, {}), **t.ids}
        if self.items:
            atomic_write(self.out / IDS_FILE, json.dumps(self.saved, indent=1) + "\n")

    def close(self) -> None:
        for t in self.items:
            t.close()
