"""Serve a tuned model: an HTTP API (FastAPI) and a playground page, base vs tuned side by side."""

from __future__ import annotations

from typing import Any

from gpt2tune.serve.options import ServeConfig

__all__ = ["ServeConfig", "create_app"]


def __getattr__(name: str) -> Any:
    # create_app pulls in FastAPI; import it only when asked for, so `gpt2tune --help` stays fast
    if name == "create_app":
        from gpt2tune.serve.app import create_app

        return create_app
    raise AttributeError(name)
