"""Checkpoints: a Hugging Face model directory plus one training-state file, written atomically."""

from __future__ import annotations

import os
import random
import shutil
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from .errors import UserError

STATE_FILE = "trainer_state.pt"


def rng_state() -> dict[str, Any]:
    """Every random stream the loop uses."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what rng_state() captured."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _fsync_tree(directory: Path) -> None:
    for f in directory.rglob("*"):
        if f.is_file():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_atomic(target: Path, write: Callable[[Path], None]) -> None:
    """Have `write` fill a temporary sibling directory, flush it, then swap it in for `target`.

    At every moment either the old or the new `target` is complete on disk: a kill mid-save
    leaves the previous checkpoint (as `target` or, for an instant, `target.old`) loadable.
    """
    tmp = target.with_name(target.name + ".tmp")
    old = target.with_name(target.name + ".old")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        write(tmp)
        _fsync_tree(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if target.exists():
        shutil.rmtree(old, ignore_errors=True)
        target.rename(old)
    tmp.rename(target)
    shutil.rmtree(old, ignore_errors=True)


def link_model_files(source: Path, target: Path) -> None:
    """Fill `target` with the model files of checkpoint `source` (hard links: no second copy on disk)."""
    for f in source.rglob("*"):
        dest = target / f.relative_to(source)
        if f.is_dir():
            dest.mkdir(exist_ok=True)
        elif f.name != STATE_FILE:
            try:
                os.link(f, dest)
            except OSError:  # file systems without hard links
                shutil.copy2(f, dest)


def recover(target: Path) -> None:
    """Finish a swap that a kill interrupted: if only `target.old` is left, it becomes `target` again."""
    old = target.with_name(target.name + ".old")
    if not target.exists() and old.exists():
        old.rename(target)
    shutil.rmtree(target.with_name(target.name + ".tmp"), ignore_errors=True)


def load_state(directory: Path) -> dict[str, Any]:
    """Read a checkpoint's training state, or raise a UserError naming the bad file."""
    path = directory / STATE_FILE
    if not path.is_file():
        raise UserError(f"nothing to resume: {path} does not exist")
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # a truncated or corrupt file shows up as many exception types
        best = directory.parent / "best"
        hint = (f"{best} is a separate intact copy you can start a new run from with --model {best}"
                if (best / "config.json").is_file() else "start again with --overwrite")
        raise UserError(f"checkpoint {path} is damaged ({type(e).__name__}); {hint}") from None
