"""A polite MediaWiki Action API client (rate limit, retries, maxlag, disk cache) and a breadth-first crawl."""

from __future__ import annotations

import email.utils
import hashlib
import json
import os
import sys
import time
from collections import deque
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterator
from urllib.parse import quote, urlsplit, urlunsplit

import httpx

from gpt2tune.corpus.http import deadline_client, get_bytes
from gpt2tune.errors import UserError

RETRY_STATUS = {429, 500, 502, 503, 504}
MAX_ROUNDS = 100  # `continue` rounds of one query: 50,000 links of a page at 500 a round
MAX_BACKOFF = 60.0  # seconds between retries of our own choosing
MAX_SERVER_WAIT = 120.0  # seconds; a Retry-After header that asks for longer gets this (and a line saying so)


def _short(value: Any, limit: int = 120) -> str:
    """A value from a server, cut short for an error line."""
    text = " ".join(str(value).split())
    return text if len(text) <= limit else text[:limit] + "..."


def default_cache_dir() -> Path:
    """$XDG_CACHE_HOME/gpt2tune/wikipedia (or ~/.cache/gpt2tune/wikipedia)."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "gpt2tune" / "wikipedia"


def now_iso() -> str:
    """The current UTC time as ISO 8601, to the second."""
    return datetime.now(timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def retry_after(response: httpx.Response) -> float | None:
    """Seconds a Retry-After header asks us to wait (delta-seconds or HTTP date), or None."""
    value = response.headers.get("Retry-After")
    if not value:
        return None
    try:
        return max(0.0, float(value))  # "inf" too: the caller caps it; "nan" is 0
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    try:
        return max(0.0, (when - datetime.now(timezone.utc)).total_seconds())
    except TypeError:  # a date without a time zone
        return None


@dataclass
class Page:
    """One fetched article."""

    title: str  # canonical title, after redirects
    requested: str  # the title we asked for
    text: str  # plain-text extract with `== Section ==` headings
    revision_id: int | None
    url: str
    fetched_at: str


class WikiClient:
    """GET requests to one MediaWiki Action API: throttled, retried with backoff, cached on disk."""

    def __init__(self, api_url: str, user_agent: str, *, rate: float = 1.0, maxlag: int = 5, retries: int = 5,
                 backoff: float = 1.0, timeout: float = 30.0, cache_dir: Path | None = None,
                 sleep: Callable[[float], None] = time.sleep, clock: Callable[[], float] = time.monotonic):
        self.api_url = api_url
        self.http, self.deadline = deadline_client(user_agent, timeout)
        self.timeout = timeout
        self.interval = 1.0 / rate
        self.maxlag = maxlag
        self.retries = retries
        self.backoff = backoff
        self.cache_dir = cache_dir
        self.sleep = sleep
        self.clock = clock
        self.last_request: float | None = None
        self.requests = 0  # HTTP requests sent (retries included)
        self.cache_hits = 0

    def close(self) -> None:
        self.http.close()

    def _cache_path(self, params: dict[str, str]) -> Path | None:
        if self.cache_dir is None:
            return None
        key = json.dumps([self.api_url, sorted(params.items())], ensure_ascii=False)
        digest = hashlib.sha256(key.encode("utf-8")).hexdigest()
        return self.cache_dir / digest[:2] / f"{digest}.json"

    def _throttle(self) -> None:
        if self.last_request is not None:
            wait = self.last_request + self.interval - self.clock()
            if wait > 0:
                self.sleep(wait)
        self.last_request = self.clock()

    def get(self, params: dict[str, Any]) -> tuple[dict, str]:
        """One API call -> (JSON answer, UTC time it was fetched); served from the cache when there."""
        params = {"format": "json", "formatversion": "2", **{k: str(v) for k, v in params.items()}}
        path = self._cache_path(params)
        if path is not None and path.is_file():
            try:
                entry = json.loads(path.read_text(encoding="utf-8"))
            except (ValueError, RecursionError):
                entry = None  # a damaged entry is fetched again
            if isinstance(entry, dict) and isinstance(entry.get("data"), dict) and \
                    isinstance(entry.get("fetched_at"), str):
                self.cache_hits += 1
                return entry["data"], entry["fetched_at"]
        data = self._fetch(params)
        fetched_at = now_iso()
        if path is not None:
            self._store(path, {"url": self.api_url, "params": params, "fetched_at": fetched_at, "data": data})
        return data, fetched_at

    def _store(self, path: Path, entry: dict) -> None:
        """Write a cache entry atomically (an interrupted run never leaves half an entry); a full disk is one line."""
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_text(json.dumps(entry, ensure_ascii=False), encoding="utf-8")
            os.replace(tmp, path)
        except OSError as e:
            tmp.unlink(missing_ok=True)
            raise UserError(f"could not write the Wikipedia cache in {self.cache_dir} ({e.strerror or e}); free some "
                            "space, give another --cache-dir or pass --no-cache") from None

    def _server_wait(self, asked: float | None, backoff: float) -> float:
        """Seconds to wait before a retry: what the server asked for, at most MAX_SERVER_WAIT (said on stderr)."""
        if asked is None:
            return backoff
        if asked > MAX_SERVER_WAIT:
            print(f"gpt2tune: {self.api_url} asked to wait {asked:g} s (Retry-After); waiting {MAX_SERVER_WAIT:g} s, "
                  "the most gpt2tune waits for a server", file=sys.stderr, flush=True)
            return MAX_SERVER_WAIT
        return asked

    def _fetch(self, params: dict[str, str]) -> dict:
        for attempt in range(self.retries + 1):
            self._throttle()
            self.requests += 1
            wait: float | None = None
            try:
                response, body = get_bytes(self.http, self.deadline, self.api_url,
                                           {**params, "maxlag": str(self.maxlag)}, self.timeout)
            except (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError) as e:
                problem = f"{type(e).__name__}: {e}"
            except (httpx.HTTPError, httpx.InvalidURL) as e:
                # redirect loops, redirects to other protocols, bad gzip, an unusable URL: retrying won't help
                raise UserError(f"request to {self.api_url} failed: {type(e).__name__}: {_short(e)}") from None
            else:
                if response.status_code in RETRY_STATUS:
                    problem, wait = f"HTTP {response.status_code}", retry_after(response)
                elif response.status_code >= 400:
                    raise UserError(f"{self.api_url} answered HTTP {response.status_code}; is it a MediaWiki "
                                    "API endpoint (…/w/api.php)?")
                else:
                    data = self._answer(body)
                    error = data.get("error")
                    if isinstance(error, dict) and error.get("code") == "maxlag":
                        problem, wait = "server lagging (maxlag)", retry_after(response)
                    elif error:
                        code, info = (error.get("code"), error.get("info", "")) if isinstance(error, dict) else \
                            ("error", error)
                        raise UserError(f"MediaWiki API error from {self.api_url}: {_short(code)}: {_short(info)}")
                    else:
                        return data
            if attempt == self.retries:
                break
            self.sleep(self._server_wait(wait, min(self.backoff * 2 ** attempt, MAX_BACKOFF)))
        raise UserError(f"giving up on {self.api_url} after {self.retries + 1} tries ({problem}); "
                        "run again later: answers already fetched are cached")

    def _answer(self, body: bytes) -> dict:
        """A response body as a JSON object, or a UserError naming the URL."""
        try:
            data = json.loads(body)
        except ValueError:
            raise UserError(f"{self.api_url} did not answer JSON; is it a MediaWiki API endpoint "
                            "(…/w/api.php)?") from None
        except RecursionError:
            raise self.too_deep() from None
        try:  # JSON's \ud800 escapes decode to lone surrogates, which no file can hold (milliseconds a page)
            json.dumps(data, ensure_ascii=False).encode("utf-8")
        except RecursionError:
            raise self.too_deep() from None
        except UnicodeEncodeError as e:
            raise UserError(f"{self.api_url} answered text that is not valid Unicode (a lone surrogate "
                            f"{ascii(e.object[e.start:e.end])[1:-1]}); not kept") from None
        if not isinstance(data, dict):
            raise UserError(f"{self.api_url} answered something other than a MediaWiki JSON object "
                            f"({type(data).__name__})")
        return data

    def too_deep(self) -> UserError:
        return UserError(f"{self.api_url} answered JSON nested too deep to read; it is not a MediaWiki answer")

    def query(self, params: dict[str, Any]) -> Iterator[tuple[dict, str]]:
        """Answers of an action=query call, following `continue` until the result is complete.

        At most MAX_ROUNDS answers, and never the same `continue` twice: an API that always says "continue"
        gets a clear error instead of a crawl that never ends.
        """
        cont: dict[str, Any] = {}
        seen: set[str] = set()
        for _ in range(MAX_ROUNDS):
            data, fetched_at = self.get({"action": "query", **params, **cont})
            yield data, fetched_at
            if "continue" not in data:
                return
            cont = data["continue"]
            if not isinstance(cont, dict) or not all(isinstance(v, (str, int)) for v in cont.values()):
                raise self.shape_error("continue", cont, "an object of strings")
            key = json.dumps(cont, sort_keys=True)
            if key in seen:
                raise UserError(f"{self.api_url} answered the same `continue` twice ({_short(key)}); the API is "
                                "looping")
            seen.add(key)
        raise UserError(f"{self.api_url} still answered `continue` after {MAX_ROUNDS} rounds of one query "
                        f"({_short(params)}); stopping")

    def shape_error(self, what: str, value: Any, expected: str) -> UserError:
        """A UserError for an answer of the wrong shape, naming the URL and the field."""
        return UserError(f"{self.api_url} answered JSON of an unexpected shape: {what} is "
                         f"{type(value).__name__} {_short(json.dumps(value, ensure_ascii=False, default=str))}, "
                         f"expected {expected}")

    def items(self, data: dict, key: str) -> list[dict]:
        """data["query"][key] as a list of objects (absent: empty)."""
        query = data.get("query", {})
        if not isinstance(query, dict):
            raise self.shape_error("query", query, "an object")
        items = query.get(key, [])
        if not isinstance(items, list) or not all(isinstance(x, dict) for x in items):
            raise self.shape_error(f"query.{key}", items, "a list of objects")
        return items

    def titles(self, entries: list[dict], what: str) -> list[str]:
        """The `title` of each entry (each must have a string one)."""
        for entry in entries:
            if not isinstance(entry.get("title"), str):
                raise self.shape_error(f"{what}[].title", entry.get("title"), "a string")
        return [entry["title"] for entry in entries]

    def page(self, title: str) -> Page | str:
        """The article `title` (redirects followed), or a reason it is absent ('missing', 'invalid')."""
        merged: dict[str, Any] = {}
        fetched_at = ""
        for data, fetched_at in self.query({"prop": "extracts|info", "inprop": "url", "explaintext": 1,
                                            "exsectionformat": "wiki", "redirects": 1, "titles": title}):
            for entry in self.items(data, "pages"):
                merged.update({k: v for k, v in entry.items() if v not in (None, "")})
        if not merged or merged.get("missing"):
            return "missing"
        if merged.get("invalid"):
            return "invalid"
        name = self.titles([merged], "query.pages")[0]
        for key, kind, expected in (("extract", str, "a string"), ("canonicalurl", str, "a string"),
                                    ("fullurl", str, "a string"), ("lastrevid", int, "an integer")):
            if key in merged and (not isinstance(merged[key], kind) or isinstance(merged[key], bool)):
                raise self.shape_error(f"query.pages[].{key}", merged[key], expected)
        return Page(title=name, requested=title, text=merged.get("extract", ""),
                    revision_id=merged.get("lastrevid"),
                    url=merged.get("canonicalurl") or merged.get("fullurl") or self.article_url(name),
                    fetched_at=fetched_at)

    def links(self, title: str) -> list[str]:
        """Titles of the articles (namespace 0) that page `title` links to, in the API's order."""
        out: list[str] = []
        for data, _ in self.query({"prop": "links", "plnamespace": 0, "pllimit": "max", "titles": title}):
            for entry in self.items(data, "pages"):
                links = entry.get("links", [])
                if not isinstance(links, list) or not all(isinstance(x, dict) for x in links):
                    raise self.shape_error("query.pages[].links", links, "a list of objects")
                out.extend(self.titles(links, "query.pages[].links"))
        return out

    def category_members(self, category: str, limit: int | None = None) -> list[str]:
        """Titles of the articles (namespace 0) in a category ('Category:' prefix optional), up to `limit`."""
        name = category if category.casefold().startswith("category:") else f"Category:{category}"
        out: list[str] = []
        for data, _ in self.query({"list": "categorymembers", "cmtitle": name, "cmnamespace": 0,
                                   "cmlimit": "max"}):
            out.extend(self.titles(self.items(data, "categorymembers"), "query.categorymembers"))
            if limit is not None and len(out) >= limit:
                break  # a big category need not be listed to the end
        return out[:limit]

    def article_url(self, title: str) -> str:
        """/wiki/<Title> on the API's host (when the API gives no URL)."""
        parts = urlsplit(self.api_url)
        path = quote(title.replace(" ", "_"), safe="/:()'!,*")
        return urlunsplit((parts.scheme, parts.netloc, f"/wiki/{path}", "", ""))


def order_links(links: list[str], text: str) -> list[str]:
    """Links named in the page's prose first, by where they first appear; the rest (navboxes) after."""
    position = {title: text.find(title) for title in links}
    return sorted(links, key=lambda t: (position[t] < 0, position[t]))


def crawl(client: WikiClient, topic: str, categories: list[str], depth: int, max_pages: int,
          skipped: list[dict]) -> Iterator[tuple[Page, int]]:
    """Pages breadth-first: the topic, members of `categories`, then linked pages up to `depth` steps.

    Links of a page are fetched only when the queue runs short of `max_pages`; titles that are missing,
    invalid, or redirects to a page already taken are appended to `skipped`.
    """
    queue: deque[tuple[str, int]] = deque([(topic, 0)])
    queued = {topic}
    expand: deque[tuple[Page, int]] = deque()  # pages whose links are not fetched yet
    taken: set[str] = set()
    categories_done = False
    while len(taken) < max_pages:
        while expand and len(queue) < max_pages - len(taken):
            page, d = expand.popleft()
            for title in order_links(client.links(page.title), page.text):
                if title not in queued:
                    queued.add(title)
                    queue.append((title, d + 1))
        if not queue:
            return
        title, d = queue.popleft()
        page = client.page(title)
        if isinstance(page, str):
            if title == topic:
                raise UserError(f"the wiki at {client.api_url} has no page {topic!r} ({page})")
            skipped.append({"title": title, "reason": page})
        elif page.title in taken:
            reason = f"redirect to {page.title}, already taken" if page.title != title else "already taken"
            skipped.append({"title": title, "reason": reason})
        else:
            taken.add(page.title)
            queued.add(page.title)
            yield page, d
            if d < depth:
                expand.append((page, d))
        if not categories_done and len(taken) < max_pages:
            categories_done = True
            for category in categories:
                members = client.category_members(category, limit=max_pages)
                if not members:
                    skipped.append({"title": category, "reason": "category empty or missing"})
                for member in members:
                    if member not in queued:
                        queued.add(member)
                        queue.append((member, 1))
