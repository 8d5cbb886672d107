"""Checkpoints: a Hugging Face model directory plus one training-state file, written atomically."""

from __future__ import annotations

import os
import pickle
import random
import re
import shutil
import threading
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from gpt2tune.errors import UserError
from gpt2tune.hardware import device_rng_state, set_device_rng_state
from gpt2tune.run import directory as rundir

STATE_FILE = rundir.STATE_FILE


def rng_state() -> dict[str, Any]:
    """Every random stream the loop uses, as tensors, lists and numbers (what torch.load's weights_only reads)."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {"python": random.getstate(), "numpy": (name, keys.tolist(), pos, has_gauss, cached),
            "torch": torch.get_rng_state(), **device_rng_state()}


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what rng_state() captured."""
    random.setstate(state["python"])
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), *rest))
    torch.set_rng_state(state["torch"])
    set_device_rng_state({k: v for k, v in state.items() if k not in ("python", "numpy", "torch")})


# Checkpoint files are flushed to disk, then dropped from the page cache (where the kernel supports it), a slice at
# a time while they are written: the memory a slice took is reused for the next one. A checkpoint is rarely read
# back soon, and on virtual machines that hand free memory back to the host (free page reporting), memory the
# kernel has not used recently is slow to touch again: a 124M model's 2 GB checkpoint took 16-20 s to copy into
# fresh page cache on a 2-core cloud VM, at memcpy speed through a reused slice.
SLICE_BYTES = 64 << 20


def _drop(fd: int, start: int = 0, length: int = 0) -> None:
    """Let the kernel free the page cache of a flushed file range (0: to the end)."""
    if hasattr(os, "posix_fadvise"):
        os.posix_fadvise(fd, start, length, os.POSIX_FADV_DONTNEED)


def settle(path: Path) -> None:
    """Flush a written file to disk and drop it from the page cache."""
    with open(path, "rb") as fh:
        os.fsync(fh.fileno())
        _drop(fh.fileno())


class _Settling:
    """A binary file's writer that flushes and drops what it has written every SLICE_BYTES (torch.save's target)."""

    def __init__(self, f) -> None:
        self.f, self.settled = f, 0

    def write(self, data) -> int:
        n = self.f.write(data)
        at = self.f.tell()
        if at - self.settled >= SLICE_BYTES:
            self.f.flush()
            os.fdatasync(self.f.fileno()) if hasattr(os, "fdatasync") else os.fsync(self.f.fileno())
            _drop(self.f.fileno(), self.settled, at - self.settled)
            self.settled = at
        return n

    def flush(self) -> None:
        self.f.flush()


def _fsync_tree(directory: Path, drop: bool = True) -> None:
    for f in directory.rglob("*"):
        if f.is_file():
            if drop:
                settle(f)
            else:
                with open(f, "rb") as fh:
                    os.fsync(fh.fileno())
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _stage(target: Path, write: Callable[[Path], None], drop: bool = True) -> Path:
    """Have `write` fill `target.tmp` and flush it to disk (`drop`: and out of the page cache); on any failure
    remove it and re-raise."""
    tmp = target.with_name(target.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        write(tmp)
        _fsync_tree(tmp, drop)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return tmp


def save_atomic(target: Path, write: Callable[[Path], None]) -> None:
    """Have `write` fill a temporary sibling directory, flush it, then swap it in for `target`.

    At every moment either the old or the new `target` is complete on disk: a kill mid-save
    leaves the previous checkpoint (as `target` or, for an instant, `target.old`) loadable.
    """
    rundir.swap_in(_stage(target, write), target)


def copy_model_files(source: Path, target: Path) -> None:
    """Fill `target` with an independent copy of the model files of checkpoint `source` (not its training state).

    A copy, not hard links: damage to one checkpoint's files must leave the other intact.
    """
    for f in source.rglob("*"):
        dest = target / f.relative_to(source)
        if f.is_dir():
            dest.mkdir(exist_ok=True)
        elif f.name != STATE_FILE:
            shutil.copyfile(f, dest)


def save_checkpoint(out: Path, write: Callable[[Path], None], improved: bool, kept_step: int,
                    ready: Callable[[], bool] | None = None) -> None:
    """Save last/ (and, when `improved`, a copy of it as best/); any failure is one line, the previous one kept.

    best/ is swapped in before last/: a kill between the two leaves the old last/, whose resume recomputes
    the same steps and writes the same best/ again. With `ready`, the new checkpoint is written and flushed,
    then swapped in only if ready() (which may wait) says True; False discards it.
    """
    last = out / "last"
    tmp = None
    try:
        tmp = _stage(last, write, drop=False)  # best/ copies its model files from the page cache
        if ready is not None and not ready():
            shutil.rmtree(tmp, ignore_errors=True)
            return
        if improved:
            save_atomic(out / "best", lambda d: copy_model_files(tmp, d))
        _fsync_tree(tmp)
        rundir.swap_in(tmp, last)
    except Exception as e:  # a full disk shows as OSError, safetensors' SafetensorError or torch's RuntimeError
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        reason = e.strerror if isinstance(e, OSError) and e.strerror else f"{type(e).__name__}: {e}"
        reason = " ".join(str(reason).split())[:200]
        if not (last / STATE_FILE).is_file():
            raise UserError(f"could not save a checkpoint in {out} ({reason}); none was saved before; free some "
                            "space and start again with --overwrite") from None
        raise UserError(f"could not save a checkpoint in {out} ({reason}); the previous checkpoint (step "
                        f"{kept_step}) is kept; free some space and use --resume") from None


class Background:
    """A checkpoint written by a thread while the caller goes on, and swapped in once the caller commits.

    The writing (serializing, the kernel's copies into the page cache, fsync) mostly runs without the GIL, so it
    overlaps the caller's next work (drawing samples, writing the report) on another core. The caller must not
    change what `save` reads (the weights, the optimizer state) before join(), and commits only once what the
    checkpoint records (the metrics and samples lines) is on disk; abort() discards it.
    """

    def __init__(self, save: Callable[[Callable[[], bool]], None]):
        self._go = threading.Event()
        self._keep = False
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(save,), name="gpt2tune-checkpoint")
        self._thread.start()

    def _run(self, save: Callable[[Callable[[], bool]], None]) -> None:
        try:
            save(self._ready)
        except BaseException as e:  # raised again by join(), in the caller's thread
            self._error = e

    def _ready(self) -> bool:
        self._go.wait()
        return self._keep

    def commit(self) -> None:
        """Let the checkpoint be swapped in once written."""
        self._keep = True
        self._go.set()

    def abort(self) -> None:
        """Discard the checkpoint (the previous one stays) and wait for the thread."""
        self._go.set()
        self._thread.join()

    def join(self) -> None:
        """Wait until the committed checkpoint is in place; its failure (a UserError) is raised here."""
        self._thread.join()
        if self._error is not None:
            error, self._error = self._error, None
            raise error


def damaged(what: Path, run: Path, error: BaseException) -> UserError:
    """The one-line error for a damaged checkpoint file or directory `what` of run directory `run`.

    Its advice works: best/ is an independent copy, so damage to last/ leaves it loadable.
    """
    best = run / "best"
    head = f"checkpoint {what} is damaged ({error if isinstance(error, UserError) else type(error).__name__})"
    if not what.resolve().is_relative_to(best.resolve()) and (best / "config.json").is_file():
        return UserError(f"{head}; {best} is an intact copy of the best model: start a new run from it with "
                         f"--model {best} and another --out")
    return UserError(f"{head}; start the run again with --overwrite")


def _numpy_array_types() -> list[Any]:
    """What a numpy array in a training state of an earlier version (numpy's random state) unpickles with."""
    multiarray = np._core.multiarray if hasattr(np, "_core") else np.core.multiarray
    return [multiarray._reconstruct, (multiarray._reconstruct, "numpy.core.multiarray._reconstruct"), np.ndarray,
            np.dtype, type(np.dtype(np.uint32))]


def save_state(state: dict[str, Any], directory: Path) -> None:
    """Write a training state (optimizer moments: twice the model's fp32 size) as the checkpoint's STATE_FILE.

    Without the zip records' CRC-32: torch.load never checks it (a damaged record loads as it is, with or without
    one), and computing it took a quarter to a half of the write, 0.2-0.3 s for a 30M-parameter model's state.
    """
    from torch.utils.serialization import config as serialization

    with serialization.patch({"save.compute_crc32": False}), open(directory / STATE_FILE, "wb") as f:
        torch.save(state, _Settling(f))


def load_state(directory: Path) -> dict[str, Any]:
    """Read a checkpoint's training state, or raise a UserError naming the bad file.

    Only tensors, numbers, strings and containers of them load (weights_only): a state file from someone else
    that carries other Python objects, which could run code while unpickled, is refused.
    """
    path = directory / STATE_FILE
    if not path.is_file():
        raise UserError(f"nothing to resume: {path} does not exist")
    try:
        with torch.serialization.safe_globals(_numpy_array_types()):
            state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "Weights only load failed" in str(e):
            found = re.search(r"GLOBAL (\S+)", str(e))
            what = f" ({found.group(1)})" if found else ""
            raise UserError(f"{path} was not loaded: it holds Python objects other than tensors and numbers"
                            f"{what}, which could run code; it is not a training state gpt2tune wrote") from None
        raise damaged(path, directory.parent, e) from None
    except Exception as e:  # a truncated or corrupt file shows up as many exception types
        raise damaged(path, directory.parent, e) from None
    why = state_problem(state)
    if why:
        raise damaged(path, directory.parent, UserError(f"it is not a gpt2tune training state: {why}"))
    return state


def state_problem(state: Any) -> str | None:
    """What keeps a loaded training state from being one the loop saved (None: nothing): the keys restore() reads,
    of the types it reads them as."""
    if not isinstance(state, dict):
        return f"it holds a {type(state).__name__}, not a dict"
    for key in ("loop", "optimizer", "scheduler"):
        if not isinstance(state.get(key), dict):
            return f"no {key} dict"
    if not isinstance(state["optimizer"].get("state"), dict) or not isinstance(state["optimizer"].get("param_groups"),
                                                                               list):
        return "the optimizer has no state and param_groups"
    rngs = state.get("rng")
    if not isinstance(rngs, list) or not rngs or not all(
            isinstance(r, dict) and {"python", "numpy", "torch"} <= r.keys() for r in rngs):
        return "no list of random states"
    if not isinstance(state.get("scaler"), (dict, type(None))):
        return "scaler is not a dict"
    return None
