"""HTTP GETs with a total deadline per request and a cap on the answer's size.

httpx's timeouts bound each network operation, not a request: a server that sends one byte every few
seconds never trips a read timeout and keeps a request alive for ever. The deadline here bounds the whole
request (connect, send, headers, body) by checking it before every read and write and shortening each
socket wait to the time left.
"""

from __future__ import annotations

import time
from typing import Any

import httpcore
import httpx

MAX_ANSWER_BYTES = 64 * 1024 * 1024  # a MediaWiki answer is KBs to a few MBs; more is a misbehaving server


class AnswerTooLarge(httpx.HTTPError):
    """The server sent more than MAX_ANSWER_BYTES."""


class Deadline:
    """The monotonic time by which the current request must be done (None: no deadline)."""

    def __init__(self) -> None:
        self.at: float | None = None

    def left(self, timeout: float | None, error: type[Exception] = httpcore.ReadTimeout) -> float | None:
        """The socket wait to use: `timeout` shortened to the time left; raises `error` when none is left."""
        if self.at is None:
            return timeout
        left = self.at - time.monotonic()
        if left <= 0:
            raise error("the request's deadline passed")
        return left if timeout is None else min(timeout, left)


class _Stream(httpcore.NetworkStream):
    def __init__(self, stream: httpcore.NetworkStream, deadline: Deadline):
        self.stream, self.deadline = stream, deadline

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self.stream.read(max_bytes, self.deadline.left(timeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self.stream.write(buffer, self.deadline.left(timeout, httpcore.WriteTimeout))

    def close(self) -> None:
        self.stream.close()

    def start_tls(self, ssl_context: Any, server_hostname: str | None = None,
                  timeout: float | None = None) -> httpcore.NetworkStream:
        left = self.deadline.left(timeout, httpcore.ConnectTimeout)
        return _Stream(self.stream.start_tls(ssl_context, server_hostname, left), self.deadline)

    def get_extra_info(self, info: str) -> Any:
        return self.stream.get_extra_info(info)


class _Backend(httpcore.NetworkBackend):
    def __init__(self, backend: httpcore.NetworkBackend, deadline: Deadline):
        self.backend, self.deadline = backend, deadline

    def connect_tcp(self, host: str, port: int, timeout: float | None = None, local_address: str | None = None,
                    socket_options: Any = None) -> httpcore.NetworkStream:
        left = self.deadline.left(timeout, httpcore.ConnectTimeout)
        return _Stream(self.backend.connect_tcp(host, port, left, local_address, socket_options), self.deadline)

    def connect_unix_socket(self, path: str, timeout: float | None = None,
                            socket_options: Any = None) -> httpcore.NetworkStream:
        left = self.deadline.left(timeout, httpcore.ConnectTimeout)
        return _Stream(self.backend.connect_unix_socket(path, left, socket_options), self.deadline)

    def sleep(self, seconds: float) -> None:
        self.backend.sleep(seconds)


def deadline_client(user_agent: str, timeout: float) -> tuple[httpx.Client, Deadline]:
    """An httpx client whose every network wait respects the returned Deadline (set it before each request)."""
    deadline = Deadline()
    transport = httpx.HTTPTransport()
    # httpx offers no public way to hand its connection pool a network backend; the pool is httpcore's, whose
    # backends are public API. tests/test_adversarial_wiki.py fails if this stops taking effect.
    pool = transport._pool
    pool._network_backend = _Backend(pool._network_backend, deadline)
    client = httpx.Client(headers={"User-Agent": user_agent}, timeout=timeout, follow_redirects=True,
                          max_redirects=10, transport=transport)
    return client, deadline


def get_bytes(client: httpx.Client, deadline: Deadline, url: str, params: dict[str, str],
              timeout: float) -> tuple[httpx.Response, bytes]:
    """GET url within `timeout` seconds in all; the answer's body is read up to MAX_ANSWER_BYTES."""
    deadline.at = time.monotonic() + timeout
    try:
        with client.stream("GET", url, params=params) as response:
            chunks, size = [], 0
            for chunk in response.iter_bytes():
                size += len(chunk)
                if size > MAX_ANSWER_BYTES:
                    raise AnswerTooLarge(f"the answer is over {MAX_ANSWER_BYTES // 2**20} MB")
                chunks.append(chunk)
                if time.monotonic() > deadline.at:  # a decompressing stream may yield without reading
                    raise httpx.ReadTimeout("the request's deadline passed", request=response.request)
        return response, b"".join(chunks)
    finally:
        deadline.at = None
