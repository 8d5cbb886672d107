"""data/workers.py: results in the order of the items, whether one process or several do the work."""

from __future__ import annotations

import os

from gpt2tune.data.workers import ordered_map


def _square_and_pid(x: int) -> tuple[int, int]:
    return x * x, os.getpid()


def test_ordered_map_keeps_order_on_forked_workers():
    out = list(ordered_map(_square_and_pid, range(50), workers=2))
    assert [v for v, _ in out] == [x * x for x in range(50)]
    assert {pid for _, pid in out} != {os.getpid()}  # the work ran in worker processes


def test_ordered_map_with_one_worker_runs_here():
    out = list(ordered_map(_square_and_pid, range(5), workers=1))
    assert out == [(x * x, os.getpid()) for x in range(5)]
