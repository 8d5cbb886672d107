"""Loaded models and the one worker thread that runs them, one request at a time."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence, TypeVar

from gpt2tune.config import SamplingConfig
from gpt2tune.evaluate.best_of import BestOf, Pick, best_of
from gpt2tune.model.load import context_length, load_seeded
from gpt2tune.model.sample import sample

T = TypeVar("T")


class Busy(Exception):
    """The request queue is full."""


@dataclass
class ModelHolder:
    """A model and tokenizer loaded once, with where they came from (and their run directory, if any)."""

    name: str  # "tuned" or "base": the id clients use; a path never comes from a request
    source: str
    model: Any
    tokenizer: Any
    run_dir: Path | None = None
    context: int | None = None
    _copies: Any = None  # the copy check against the run's training sentences, made on the first best-of request

    @classmethod
    def load(cls, name: str, path: str | Path, device: str = "auto") -> "ModelHolder":
        """Load a model from a hub id, HF directory, run directory or .gguf file, onto the chosen device."""
        # seeded: new start/end token rows are drawn at random; a seed must give the same samples after a restart
        model, tokenizer = load_seeded(str(path), "auto", 0, role=f"{name} model", device=device)
        context = context_length(model)
        return cls(name, public_name(path), model, tokenizer, find_run_dir(path), context)

    def pick(self, prompts: Sequence[str], cfg: SamplingConfig) -> BestOf:
        """Sample plainly, best-of-N or about a title (call it on the worker thread only); a UserError when the
        model was not trained with titles and `about` is asked for."""
        from gpt2tune.data.condition import run_prefix
        from gpt2tune.evaluate.generate import run_copies
        from gpt2tune.evaluate.run import run_config

        run = run_config(str(self.run_dir)) if self.run_dir else None
        prefix = run_prefix(run, cfg.about, f"the {self.name} model")
        if cfg.best_of == 1:
            return BestOf([Pick(s, [], {}) for s in sample(self.model, self.tokenizer, prompts, cfg, prefix=prefix)])
        if self._copies is None:
            self._copies = run_copies(self.run_dir) or False
        return best_of(self.model, self.tokenizer, prompts, cfg, self._copies or None, prefix=prefix)

    def count_tokens(self, text: str) -> int:
        """Tokens in a prompt as the model sees it (with its start token)."""
        return 1 + len(self.tokenizer(text, add_special_tokens=False)["input_ids"])


def public_name(path: str | Path) -> str:
    """How /v1/models names a model: a hub id as given, a local path by its last parts (never the absolute path,
    which tells a caller the user's name and directory layout)."""
    p = Path(path).expanduser()
    if not p.exists():
        return str(path)  # a hub id
    p = p.resolve()
    return f"{p.parent.name}/{p.name}" if p.name in ("best", "last") else p.name


def find_run_dir(path: str | Path) -> Path | None:
    """The training run directory a model path belongs to: the path itself, or the parent of its best/ or last/."""
    p = Path(path).expanduser()
    if not p.is_dir():
        return None
    for d in (p, p.parent):
        if (d / "config.yaml").is_file() and (d / "metrics.jsonl").is_file():
            if d == p or p.name in ("best", "last"):
                return d
    return None


@dataclass
class Worker:
    """One thread runs every model call in arrival order.

    One thread for all models, not one per model: sampling seeds torch's global generator, so two
    generate() calls at once would interleave their random draws and a seed would stop meaning
    "same samples". Running requests one by one keeps each request's samples a function of its own
    prompts, options and seed, whatever else is in flight.
    """

    max_queue: int = 64
    _pool: ThreadPoolExecutor = field(default_factory=lambda: ThreadPoolExecutor(1, thread_name_prefix="model"))
    _pending: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def pending(self) -> int:
        return self._pending

    async def run(self, fn: Callable[[], T]) -> T:
        """Run fn on the worker thread and await its result; Busy when max_queue calls are already waiting."""
        with self._lock:
            if self._pending >= self.max_queue:
                raise Busy(f"server busy: {self._pending} requests already queued")
            self._pending += 1
        try:
            future = self._pool.submit(fn)
        except RuntimeError:
            self._done(None)
            raise
        # counted until the call finishes, even when its client has gone away and stopped awaiting it
        future.add_done_callback(self._done)
        return await asyncio.wrap_future(future)

    def _done(self, _future: Any) -> None:
        with self._lock:
            self._pending -= 1

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
