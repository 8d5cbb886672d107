"""Request guards in front of the app: only known Host names (no DNS rebinding), bodies of bounded size."""

from __future__ import annotations

import ipaddress
import json
from typing import Any, Awaitable, Callable

from gpt2tune.serve.options import ServeConfig

LOOPBACK_NAMES = {"localhost", "127.0.0.1", "::1"}
WILDCARDS = {"0.0.0.0", "::", ""}
Scope = dict[str, Any]
Message = dict[str, Any]


def host_name(header: str) -> str:
    """The name in a Host header, without port or IPv6 brackets, lower-cased ('[::1]:8000' -> '::1')."""
    header = header.strip().lower()
    if header.startswith("["):
        return header[1:header.find("]")] if "]" in header else header
    return header.rsplit(":", 1)[0].rstrip(".") if header.count(":") == 1 else header.rstrip(".")


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def _is_loopback_ip(name: str) -> bool:
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


class HostPolicy:
    """Which Host headers the server answers: loopback names, --host itself, and --allow-host names.

    A web page can point a name it owns at 127.0.0.1 (DNS rebinding) and then call the server as a page of
    that name; the browser sends that name as Host, so refusing unknown names keeps such pages out. An IP
    address in Host cannot be rebound, so when --host listens on every interface any IP address is accepted.
    """

    def __init__(self, cfg: ServeConfig):
        self.names = LOOPBACK_NAMES | {cfg.host.lower().strip("[]")} | {h.lower().strip("[]") for h in cfg.allow_host}
        self.any = "*" in cfg.allow_host
        self.any_ip = cfg.host in WILDCARDS

    def allows(self, header: str | None) -> bool:
        if self.any:
            return True
        if not header:
            return False
        name = host_name(header)
        return name in self.names or _is_loopback_ip(name) or (self.any_ip and _is_ip(name))


def request_limit(cfg: ServeConfig) -> int:
    """Bytes a request body may have: the largest valid request (every prompt at its cap, each character
    JSON-escaped to 6 bytes) plus 16 KiB for the options; anything bigger is refused unread."""
    return cfg.max_prompts * cfg.max_prompt_chars * 6 + 16 * 1024


class RequestGuard:
    """ASGI middleware: 400 for an unknown Host, 413 for a body over the limit (counted as it arrives)."""

    def __init__(self, app: Callable[..., Awaitable[None]], policy: HostPolicy, max_body: int):
        self.app, self.policy, self.max_body = app, policy, max_body

    async def __call__(self, scope: Scope, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        host = headers.get("host")
        if not self.policy.allows(host):
            shown = (host or "")[:80]
            await _reply(send, 400, f"Host '{shown}' is not allowed: call the server as localhost or 127.0.0.1, "
                                    "or start it with --allow-host NAME")
            return
        length = headers.get("content-length", "")
        if length.isdigit() and int(length) > self.max_body:
            await _reply(send, 413, f"request body of {int(length):,} bytes is over the limit of {self.max_body:,}")
            return
        state = {"received": 0, "replied": False}

        async def counted_receive() -> Message:
            message = await receive()
            if message["type"] == "http.request":
                state["received"] += len(message.get("body", b""))
                if state["received"] > self.max_body and not state["replied"]:
                    state["replied"] = True
                    await _reply(send, 413, f"request body is over the limit of {self.max_body:,} bytes")
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message: Message) -> None:
            if not state["replied"]:  # after a 413 the app's own answer (to a cut-off body) is dropped
                await send(message)

        await self.app(scope, counted_receive, guarded_send)


async def _reply(send: Callable, status: int, detail: str) -> None:
    body = json.dumps({"detail": detail}).encode("utf-8")
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
