"""`gpt2tune serve` options: every field is a CLI flag and a config-file key."""

from __future__ import annotations

from dataclasses import dataclass

from gpt2tune.config import check, check_device, check_fields, check_threads, device_opt, opt, threads_opt


@dataclass
class ServeConfig:
    """Where to listen, who may call, and the caps every request must stay within."""

    base: str | None = opt(None, "base model to compare against (hub id, HF directory, run directory or .gguf)")
    host: str = opt("127.0.0.1", "interface to bind (127.0.0.1 = this machine only)")
    port: int = opt(8000, "TCP port")
    allow_host: list[str] = opt([], "also answer requests whose Host header names one of these (comma-separated; "
                                    "* = any; default: only localhost, 127.0.0.1, [::1] and --host)")
    api_key: str | None = opt(None, "require 'Authorization: Bearer KEY' on the API (the page asks for it)")
    max_prompts: int = opt(8, "prompts per request at most")
    max_prompt_chars: int = opt(1000, "characters per prompt at most")
    max_n: int = opt(8, "samples per prompt at most")
    max_new_tokens: int = opt(256, "new tokens per sample at most")
    max_queue: int = opt(64, "requests waiting for the model at most; more get 503 (server busy)")
    threads: int | None = threads_opt()
    device: str = device_opt()

    def validate(self) -> None:
        check_fields(self)
        check(0 <= self.port <= 65535, f"port must be in 0..65535, got {self.port}")
        check(bool(self.host), "host must not be empty")
        check(all(h.strip() for h in self.allow_host), "allow-host names must not be empty")
        check(self.api_key is None or len(self.api_key) >= 8, "api-key must be at least 8 characters")
        check_device(self.device)
        check_threads(self.threads)
        for name in ("max_prompts", "max_prompt_chars", "max_n", "max_new_tokens", "max_queue"):
            check(getattr(self, name) >= 1, f"{name.replace('_', '-')} must be at least 1")
