"""Progress for people, one way everywhere: a tqdm bar on a terminal (or a notebook), a plain line every EVERY_S
seconds in logs; a bar for any phase that takes more than DELAY_S seconds, the training steps' bar, and lines."""

from __future__ import annotations

import os
import sys
import threading
import time
from contextlib import contextmanager
from typing import Any, Iterator, TextIO

from tqdm import tqdm
from tqdm.auto import tqdm as auto_tqdm

DELAY_S = 2.0  # a phase shorter than this shows no bar at all
EVERY_S = 30.0  # not a terminal (a log, CI): one plain line at least this often


class _Lines:
    """A stream that turns tqdm's carriage-return redraws into whole lines, for logs that are not terminals."""

    def __init__(self, stream: TextIO):
        self.stream = stream

    def write(self, text: str) -> None:
        text = text.replace("\r", "").strip()
        if text:
            self.stream.write(text + "\n")

    def flush(self) -> None:
        self.stream.flush()


def bar(total: int | None, desc: str, unit: str = "it", enabled: bool = True, **kwargs: Any) -> tqdm:
    """A bar on stderr that appears once a phase has run DELAY_S seconds: redrawn on a terminal, a plain line
    every EVERY_S seconds otherwise."""
    stream = sys.stderr
    tty = hasattr(stream, "isatty") and stream.isatty()
    return tqdm(total=total, desc=desc, unit=unit, disable=not enabled, delay=DELAY_S, leave=False,
                file=stream if tty else _Lines(stream), mininterval=0.1 if tty else EVERY_S,
                maxinterval=10 if tty else EVERY_S, dynamic_ncols=tty, **kwargs)


@contextmanager
def phase(what: str, enabled: bool = True) -> Iterator[None]:
    """Say what a slow step without a natural count is doing: nothing if it ends within DELAY_S seconds, else a
    line then, a line every EVERY_S seconds after, and how long it took."""
    if not enabled:
        yield
        return
    t0, done, said = time.perf_counter(), threading.Event(), threading.Event()

    def tell() -> None:
        if done.wait(DELAY_S):
            return
        print(f"gpt2tune: {what} ...", file=sys.stderr, flush=True)
        said.set()
        while not done.wait(EVERY_S):
            print(f"gpt2tune: {what}: {time.perf_counter() - t0:.0f} s so far", file=sys.stderr, flush=True)

    teller = threading.Thread(target=tell, daemon=True)
    teller.start()
    ok = False
    try:
        yield
        ok = True
    finally:
        done.set()
        teller.join()
        if said.is_set() and ok:
            print(f"gpt2tune: {what}: done in {time.perf_counter() - t0:.1f} s", file=sys.stderr, flush=True)


def interactive() -> bool:
    """Whether a live bar can be drawn: stderr is a terminal, or this runs in a Jupyter kernel."""
    return sys.stderr.isatty() or in_notebook()


def in_notebook() -> bool:
    """Whether this runs in a Jupyter kernel (IPython started by a kernel app, not just imported)."""
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None and hasattr(ipython, "get_ipython") else None
    return shell is not None and "IPKernelApp" in getattr(shell, "config", {})


def duration(seconds: float) -> str:
    """4 s, 3m05s, 1h02m."""
    s = int(round(seconds))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def process_age() -> float | None:
    """Seconds since this process started (Linux), counting the imports before any of our code ran; else None."""
    try:
        with open("/proc/self/stat", encoding="ascii") as f:
            start_ticks = int(f.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/uptime", encoding="ascii") as f:
            uptime = float(f.read().split()[0])
        return max(0.0, uptime - start_ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError, AttributeError):
        return None


def say(line: str) -> None:
    """One line for people on stderr, above the bar if one is drawn."""
    tqdm.write(line, file=sys.stderr)


class StepProgress:
    """Progress over the run's optimizer steps: the bar (ETA, loss, tokens/s) or, without a terminal, a line
    on the first step and then at least every EVERY_S seconds."""

    def __init__(self, total: int, done: int, enabled: bool = True):
        self.total, self.done, self.enabled = total, done, enabled
        self.t0 = self.last = time.perf_counter()
        self.first = done
        self.bar = None
        if enabled and interactive():
            self.bar = auto_tqdm(total=total, initial=done, desc="training", unit="step", dynamic_ncols=True,
                            file=sys.stderr)

    def set_total(self, total: int) -> None:
        """The run's step count changed (a time budget fixed it)."""
        self.total = total
        if self.bar is not None:
            self.bar.total = total
            self.bar.refresh()

    def update(self, step: int, epoch: int, loss: float | None, tokens_per_s: float) -> None:
        """Step `step` (1-based) is done."""
        self.done = step
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.update(step - self.bar.n)
            if loss is not None:
                self.bar.set_postfix_str(f"epoch {epoch}, loss {loss:.3f}, {tokens_per_s:,.0f} tok/s", refresh=False)
            return
        now = time.perf_counter()
        if step == self.first + 1 or now - self.last >= EVERY_S or step == self.total:
            self.last = now
            rate = (step - self.first) / max(now - self.t0, 1e-9)
            eta = (self.total - step) / rate if rate > 0 else 0.0
            loss_text = "-" if loss is None else f"{loss:.3f}"
            say(f"step {step}/{self.total} ({step / max(self.total, 1):.0%}) | epoch {epoch} | loss {loss_text} | "
                f"{tokens_per_s:,.0f} tok/s | {duration(now - self.t0)} elapsed | ETA {duration(eta)}")

    def clear(self) -> None:
        """Take the bar off the screen for a moment (other lines are about to be printed)."""
        if self.bar is not None:
            self.bar.clear()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
