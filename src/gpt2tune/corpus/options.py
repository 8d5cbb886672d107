"""Options of `gpt2tune corpus …` as dataclasses: every field is a CLI flag and a config-file key."""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from urllib.parse import urlsplit

from gpt2tune.config import check, check_fields, opt


def _version(package: str, fallback: str) -> str:
    try:
        return version(package)
    except PackageNotFoundError:  # a bare checkout on PYTHONPATH, or the corpus extra not installed
        return fallback


VERSION = _version("gpt2tune", "0.1.0")
MIN_RATE = 0.01  # requests per second: slower, a crawl of 300 pages would take days
MAX_TIMEOUT = 3600.0  # seconds for one request: a MediaWiki answer takes about one

# Wikimedia's User-Agent policy asks for "<client>/<version> (<contact>) <library>/<version>".
DEFAULT_USER_AGENT = (f"gpt2tune/{VERSION} (topic corpus builder for fine-tuning; "
                      f"add your contact with --user-agent) httpx/{_version('httpx', '0')}")


def is_http_url(url: str) -> bool:
    """True for an http(s) URL with a host (and a valid port, if any), without spaces or control characters."""
    if any(c.isspace() or ord(c) < 32 for c in url):
        return False
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 (raises ValueError for a port out of range)
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(parts.hostname)


@dataclass
class CleanConfig:
    """Options of `gpt2tune corpus clean`: text -> one cleaned sentence per line."""

    out: str = opt("", "sentence file to write: one sentence per line, or with a .jsonl name one {text, title} "
                       "object per line (a manifest goes to <out>.manifest.json)", required=True)
    min_words: int = opt(5, "drop sentences with fewer words than this")
    max_words: int = opt(60, "drop sentences with more words than this")
    lang: str = opt("en", "language code: sentence-splitting rules (and which Wikipedia, for `wikipedia`)")
    overwrite: bool = opt(False, "replace --out and its manifest if they exist")

    def validate(self) -> None:
        check_fields(self)
        check(bool(self.out), "no output file: give --out FILE")
        check(self.min_words >= 1, f"min-words must be at least 1, got {self.min_words}")
        check(self.max_words >= self.min_words,
              f"max-words ({self.max_words}) must be at least min-words ({self.min_words})")
        check(re.fullmatch(r"[a-z]{2,3}(-[a-z0-9]+)*", self.lang) is not None,
              f"lang must be a Wikipedia language code such as en, ja or zh-yue, got {self.lang!r}")


@dataclass
class WikipediaConfig(CleanConfig):
    """Options of `gpt2tune corpus wikipedia`: fetch a topic's pages, clean them into sentences."""

    topic: str = opt("", "title of the topic page (the command's TOPIC argument)", required=True)
    api_url: str | None = opt(None, "MediaWiki Action API endpoint (default: https://<lang>.wikipedia.org/w/api.php)")
    depth: int = opt(1, "follow links this many steps from the topic page (0 = topic and --category pages only)")
    category: list[str] = opt([], "include the article members of this category (repeatable)")
    max_pages: int = opt(300, "stop after this many pages")
    rate: float = opt(1.0, "at most this many API requests per second")
    user_agent: str = opt(DEFAULT_USER_AGENT, "User-Agent header (Wikimedia asks for a tool name and a contact)")
    maxlag: int = opt(5, "maxlag parameter: the API asks us to wait when its replicas lag more seconds than this")
    retries: int = opt(5, "retries of a request after a 429, 5xx, maxlag or network error")
    backoff: float = opt(1.0, "seconds before the first retry, doubled on each retry (a Retry-After header wins)")
    timeout: float = opt(30.0, "seconds before a request times out")
    cache: bool = opt(True, "keep every API answer on disk so re-runs and interrupted runs fetch nothing twice")
    cache_dir: str | None = opt(None, "cache directory (default: ~/.cache/gpt2tune/wikipedia, or under $XDG_CACHE_HOME)")

    def validate(self) -> None:
        super().validate()
        check(bool(self.topic.strip()), "no topic: give the title of a Wikipedia page")
        check(self.depth >= 0, f"depth must be >= 0, got {self.depth}")
        check(self.max_pages >= 1, f"max-pages must be at least 1, got {self.max_pages}")
        check(self.rate >= MIN_RATE, f"rate must be at least {MIN_RATE} (a request every {1 / MIN_RATE:g} s), "
                                     f"got {self.rate:g}")
        check(bool(self.user_agent.strip()), "user-agent must not be empty")
        check(self.maxlag >= 0, "maxlag must be >= 0")
        check(self.retries >= 0, "retries must be >= 0")
        check(self.backoff >= 0, "backoff must be >= 0")
        check(0 < self.timeout <= MAX_TIMEOUT, f"timeout must be more than 0 and at most {MAX_TIMEOUT:g} seconds, "
                                               f"got {self.timeout:g}")
        check(self.api_url is None or is_http_url(self.api_url),
              f"api-url must be an http(s) URL with a host, such as https://en.wikipedia.org/w/api.php, "
              f"got {(self.api_url or '')[:100]!r}")
        check(all(c.strip() for c in self.category), "category names must not be empty")

    def endpoint(self) -> str:
        """The API URL: --api-url, or the Action API of --lang's Wikipedia."""
        return self.api_url or f"https://{self.lang}.wikipedia.org/w/api.php"
