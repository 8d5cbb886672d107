"""The run directory: who owns it (a marker), who is using it (a lock), what --overwrite may remove, swaps that
survive a kill, and file writes that never leave a half-written file under its final name.

Light on imports (no torch).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import shutil
import time
import weakref
from pathlib import Path
from typing import IO

from gpt2tune.errors import UserError
from gpt2tune.files import check_makeable, make_dir

MARKER = ".gpt2tune-run"  # written when gpt2tune creates a run; only a directory holding it may be replaced
STATE_FILE = "trainer_state.pt"  # the training state inside last/ (checkpoint.py writes it)
SWAPPED = ("last", "best")  # checkpoint directories, replaced by swap_in()
# every file or directory a run may hold: --overwrite removes these (and their leftovers), nothing else
OWNED = ("config.yaml", "metrics.jsonl", "samples.jsonl", "val.txt", "data.json", "report.html", "loss.png",
         "compare.json", "compare.md", "trackers.json", "tensorboard", "wandb", "mlruns", "exports.json") + SWAPPED


# ------------------------------------------------------------------------------------------- checkpoint swaps

def _sibling(target: Path, suffix: str) -> Path:
    return target.with_name(target.name + suffix)


def swap_in(tmp: Path, target: Path) -> None:
    """Replace directory `target` by the complete directory `tmp` so that a kill at any instant leaves a whole one.

    The moment between the two renames leaves only `target.old`; recover() turns it back into `target`.
    """
    old = _sibling(target, ".old")
    if target.exists():
        shutil.rmtree(old, ignore_errors=True)
        target.rename(old)
    try:
        tmp.rename(target)
    except BaseException:
        if old.exists() and not target.exists():
            old.rename(target)  # put the previous one back rather than leave only target.old
        raise
    shutil.rmtree(old, ignore_errors=True)


def recover(target: Path) -> None:
    """Finish a swap a kill interrupted: `target.old` alone becomes `target` again; leftovers are removed.

    `target.tmp` may be partly written (killed while saving) and `target.old` beside a `target` is the replaced
    copy (killed before or while removing it): neither is ever needed.
    """
    old = _sibling(target, ".old")
    if not target.exists() and (old / "config.json").is_file():
        old.rename(target)
    shutil.rmtree(old, ignore_errors=True)
    shutil.rmtree(_sibling(target, ".tmp"), ignore_errors=True)


# ---------------------------------------------------------------------------------------------- owner and lock

class RunLock:
    """An exclusive lock on a run directory (flock on its marker), held while a `train` writes there."""

    def __init__(self, out: Path, handle: IO[bytes]):
        self.out, self._handle = out, handle

    def release(self) -> None:
        """Let another process use the run directory (also happens when this process ends)."""
        if not self._handle.closed:
            self._handle.close()


# this process's locks, so a train() that died with its lock still referenced (a notebook keeps the traceback)
# does not lock out the next train() on the same directory in the same process
_HELD: weakref.WeakValueDictionary[str, RunLock] = weakref.WeakValueDictionary()


def is_run(out: str | Path) -> bool:
    """Whether gpt2tune made this directory as a run (it holds the marker)."""
    return (Path(out) / MARKER).is_file()


def check_resumable(out: str | Path) -> None:
    """UserError unless `out` is a run gpt2tune made (or an older run with config.yaml and a checkpoint)."""
    out = Path(out)
    if not out.is_dir():
        raise UserError(f"nothing to resume: --out {out} is not a directory")
    if not is_run(out) and not ((out / "config.yaml").is_file() and _has_checkpoint(out)):
        raise UserError(f"nothing to resume: --out {out} holds no gpt2tune run")


def _lock(out: Path) -> RunLock:
    """Take the run's lock, or a UserError when another process holds it."""
    key = os.path.realpath(out)
    if key in _HELD:
        _HELD.pop(key).release()
    try:
        handle = open(out / MARKER, "ab+")
    except OSError as e:
        raise UserError(f"--out {out} can't be written ({e.strerror or e})") from None
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        handle.close()
        if e.errno in (errno.EWOULDBLOCK, errno.EACCES):
            raise UserError(f"--out {out} is in use by another gpt2tune train; wait for it to finish or choose "
                            "another --out") from None
        raise UserError(f"--out {out} can't be locked ({e.strerror or e})") from None
    if handle.tell() == 0:  # a new marker: say what it is (its existence is what counts, so a failure is harmless)
        created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        with contextlib.suppress(OSError):
            handle.write(json.dumps({"gpt2tune_run": True, "created": created}).encode() + b"\n")
            handle.flush()
    lock = RunLock(out, handle)
    _HELD[key] = lock
    return lock


def _has_checkpoint(out: Path) -> bool:
    return (out / "last" / STATE_FILE).is_file()


def _inside(path: str | None, out: Path) -> bool:
    """Whether `path` (as named, or where its links lead) is one of the files --overwrite removes, or inside one."""
    if not path:
        return False
    p = Path(path).expanduser()
    if not (p.exists() or p.is_symlink()):
        return False
    places = (Path(os.path.abspath(p)), p.resolve())
    owned = [q for name in OWNED for q in (Path(os.path.abspath(out / name)), (out / name).resolve())]
    return any(place.is_relative_to(o) for place in places for o in owned)


def claim(out: str | Path, resume: bool, overwrite: bool, model: str | None = None,
          inputs: dict[str, str | None] | None = None) -> RunLock | None:
    """Check --out before anything slow happens; lock an existing run (None: --out is new or empty).

    Refuses a directory gpt2tune didn't make, one another train is using, a run that would be clobbered
    without --overwrite, and an --overwrite that would delete one of the command's `inputs` (option -> path;
    `model` is --model's); on resume, finishes checkpoint swaps that a kill interrupted.
    """
    out = Path(out)
    if resume:
        return _claim_resume(out)
    check_makeable(out, "--out")
    if not out.is_dir() or not any(out.iterdir()):
        return None
    if not is_run(out):
        if (out / "config.yaml").exists():
            raise UserError(f"--out {out} holds a config.yaml but is not a run gpt2tune made (no {MARKER} in it), "
                            "so it won't be replaced; choose another --out")
        raise UserError(f"--out {out} is not empty and holds no gpt2tune run; choose another directory")
    lock = _lock(out)
    if not overwrite:
        lock.release()
        if _has_checkpoint(out):
            raise UserError(f"--out {out} already holds a run; pass --resume to continue it or --overwrite to "
                            "replace it")
        raise UserError(f"--out {out} holds a run that stopped before its first checkpoint, so there is nothing "
                        "to resume; pass --overwrite to start it again")
    for option, path in {"--model": model, **(inputs or {})}.items():
        if _inside(path, out):
            lock.release()
            raise UserError(f"{option} {path} is inside --out {out}, which --overwrite would delete; choose "
                            f"another --out (or move {Path(path).name} out of it)")
    return lock


def _claim_resume(out: Path) -> RunLock:
    check_resumable(out)
    lock = _lock(out)  # also marks a run made before markers existed (it has config.yaml and a checkpoint)
    for name in SWAPPED:
        recover(out / name)
    if not _has_checkpoint(out):
        lock.release()
        raise UserError(f"nothing to resume in {out}: the run stopped before its first checkpoint; start it "
                        "again with --overwrite instead of --resume")
    return lock


def _remove_owned(out: Path) -> None:
    """Delete a run's own files and their leftovers (temporary files, interrupted swaps); nothing else."""
    doomed = [out / name for name in OWNED]
    doomed += [_sibling(out / name, s) for name in SWAPPED for s in (".tmp", ".old")]
    doomed += [p for name in OWNED for p in out.glob(f".{name}.*.tmp")]
    doomed += [_sibling(out / name, ".tmp") for name in ("report.html", "loss.png")]  # older versions' temp names
    for p in doomed:
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        elif p.exists() or p.is_symlink():
            p.unlink()


def start(out: str | Path, lock: RunLock | None) -> RunLock:
    """Make (or, under the lock claim() took, empty) the run directory and mark it as gpt2tune's run."""
    out = make_dir(out, "--out")
    if lock is not None:
        _remove_owned(out)
        return lock
    lock = _lock(out)
    if any(p.name != MARKER for p in out.iterdir()):  # another train got here between claim() and now
        lock.release()
        raise UserError(f"--out {out} was taken by another gpt2tune train meanwhile; choose another --out")
    return lock
