"""Run the server: load the models, check the port, hand the app to uvicorn."""

from __future__ import annotations

import ipaddress
import socket
import sys

from gpt2tune.errors import UserError
from gpt2tune.serve.options import ServeConfig


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on host:port, or a UserError saying why not (port taken, no such address)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as e:
        raise UserError(f"cannot listen on host '{host}': {e.strerror}") from None
    family, _, _, _, address = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as e:
        sock.close()
        raise UserError(f"cannot listen on {host}:{port}: {e.strerror}") from None
    sock.listen(2048)
    return sock


def _load(model: str, cfg: ServeConfig):
    """The tuned and (optional) base model holders; a model that can't be loaded is a UserError naming its file."""
    from gpt2tune.serve.holder import ModelHolder
    from gpt2tune.threads import use_threads

    use_threads(cfg.threads)  # before loading: the worker thread that runs the models inherits it
    tuned = ModelHolder.load("tuned", model, cfg.device)
    base = ModelHolder.load("base", cfg.base, cfg.device) if cfg.base else None
    return tuned, base


def serve(model: str, cfg: ServeConfig) -> None:
    """Load the tuned (and base) model and serve them until interrupted."""
    from gpt2tune.model.source import resolve

    for path in (model, cfg.base):
        if path:
            resolve(path)  # a missing model path fails at once, before the heavy libraries load
    import uvicorn

    from gpt2tune.serve.app import create_app

    sock = bind(cfg.host, cfg.port)  # before the slow model loading: a taken port fails at once too
    try:
        tuned, base = _load(model, cfg)
    except BaseException:
        sock.close()  # a model that fails to load frees the port at once (and in-process callers leak nothing)
        raise
    app = create_app(tuned, base, cfg)
    if not _is_loopback(cfg.host) and cfg.api_key is None:
        print(f"warning: listening on {cfg.host} without --api-key: anyone who can reach this port can use "
              "the models", file=sys.stderr)
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    print(f"playground: http://{shown}:{port}/   API docs: http://{shown}:{port}/docs"
          + ("   (API key required)" if cfg.api_key else ""), file=sys.stderr)
    uvicorn.Server(uvicorn.Config(app, log_level="info")).run(sockets=[sock])
