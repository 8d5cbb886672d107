"""Where a model comes from: a model argument (hub id, model directory, run directory, or .gguf file) checked and
turned into a ModelSource. Light on purpose (no torch, no transformers), so a typo fails before they load."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from gpt2tune.errors import UserError


@dataclass
class ModelSource:
    """Where a model comes from: a hub id or local directory, plus a GGUF file name inside it."""

    path: str
    gguf_file: str | None = None

    @property
    def is_local(self) -> bool:
        return Path(self.path).is_dir()


def resolve(model: str) -> ModelSource:
    """Turn a model argument (hub id, directory, run directory, or .gguf file) into a ModelSource; a local path
    that isn't there is an error at once, never a trip to the hub."""
    p = Path(model).expanduser()
    if model.lower().endswith(".gguf"):
        if not p.is_file():
            raise UserError(f"no such run or model: {model}")
        return ModelSource(str(p.parent.resolve()), p.name)
    if p.is_dir():
        best = best_model(p) if not (p / "config.json").is_file() else None
        if best:
            return ModelSource(str(best))  # a run directory: its best model
        if not (p / "config.json").is_file():
            raise UserError(f"{model} is a directory but not a Hugging Face model (no config.json in it)")
        return ModelSource(str(p))
    if p.exists():
        raise UserError(f"{model} is a file, not a model: give a run directory, a model directory or a .gguf file")
    if looks_like_path(model):
        raise UserError(f"no such run or model: {model}")
    return ModelSource(model)


_HUB_ID = re.compile(r"[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)?")


def looks_like_path(model: str) -> bool:
    """Whether a model argument that names nothing here is meant as a local path rather than a hub id.

    A hub id is "name" or "org/name" in letters, digits, "-", "_" and "."; anything else (a leading "." or "~",
    two slashes, a backslash, a space) is a path. "org/name" is a path too when "org" is a directory here:
    runs/japan, with runs/ present, is a run that isn't there, not a hub model.
    """
    if not _HUB_ID.fullmatch(model) or model.startswith((".", "-")) or ".." in model:
        return True
    return "/" in model and Path(model.split("/")[0]).is_dir()


def best_model(run: str | Path) -> Path | None:
    """A run's best model directory, read-only: best/, or best.old/ when a kill interrupted its swap; else None."""
    run = Path(run)
    for d in (run / "best", run / "best.old"):
        if (d / "config.json").is_file():
            return d
    return None
