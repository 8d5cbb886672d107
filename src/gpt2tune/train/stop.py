"""When a run stops besides its planned end: Ctrl-C, and the --save-every cadence."""

from __future__ import annotations

import math
import signal
import threading

import torch

from gpt2tune.errors import UserError


class StopRequest:
    """Ctrl-C asks the loop to stop after the current step, save, and exit resumably; a second Ctrl-C is immediate."""

    def __init__(self) -> None:
        self.requested = False
        self._previous = None

    def __enter__(self) -> "StopRequest":
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        self.requested = True
        signal.signal(signal.SIGINT, self._previous or signal.default_int_handler)

    def __exit__(self, *exc) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


def parse_every(value: str | None) -> tuple[str, float] | None:
    """'200' -> ('steps', 200); '10m' -> ('minutes', 10); None -> None."""
    v = str(value).strip().lower() if value is not None else "none"
    if v in ("none", "off", ""):
        return None
    try:
        if v.endswith("m"):
            n, unit = float(v[:-1]), "minutes"
        else:
            n, unit = int(v), "steps"
    except ValueError:
        raise UserError(f"save-every must be a number of steps (200) or minutes (10m), got {value!r}") from None
    if not n > 0 or n == math.inf:  # nan is neither positive nor refused by `n <= 0`
        raise UserError(f"save-every must be a positive number of steps (200) or minutes (10m), got {value!r}")
    return unit, n


def stop_requested(stop: StopRequest, accelerator) -> bool:
    """Whether any process got Ctrl-C (all processes must agree, or their collective saves would hang)."""
    if accelerator.num_processes == 1:
        return stop.requested
    flag = torch.tensor([1.0 if stop.requested else 0.0], device=accelerator.device)
    return bool(accelerator.reduce(flag, "sum").item() > 0)
