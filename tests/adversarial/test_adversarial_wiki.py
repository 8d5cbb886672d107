"""A misbehaving MediaWiki API on 127.0.0.1: every fault ends in one line naming the URL, in bounded time."""

from __future__ import annotations

import gzip
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from attack import one_line_error, run_cli

PAGE = {"title": "Japan", "extract": "Japan is an island country in East Asia. Tokyo is its capital city.",
        "lastrevid": 1}


def _answer(mode: str, count: int) -> object:
    """The JSON body a mode answers with."""
    return {
        "continue_new": {"query": {"pages": [PAGE]}, "continue": {"excontinue": str(count), "continue": "||"}},
        "continue_same": {"query": {"pages": [PAGE]}, "continue": {"excontinue": "1", "continue": "||"}},
        "list": [PAGE],
        "string": "Japan",
        "no_title": {"query": {"pages": [{"pageid": 1, "extract": "Japan is a country."}]}},
        "string_continue": {"query": {"pages": [PAGE]}, "continue": "more"},
        "numeric_extract": {"query": {"pages": [{**PAGE, "extract": 12345}]}},
        "pages_string": {"query": {"pages": "Japan"}},
        "error_string": {"error": "something broke"},
    }[mode]


class BadWiki(BaseHTTPRequestHandler):
    """Answers per the server's `mode`; counts requests."""

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        server = self.server
        server.requests += 1
        mode = server.mode
        if mode == "redirect_loop":
            self._head(302, {"Location": self.path, "Content-Length": "0"})
        elif mode == "redirect_ftp":
            self._head(302, {"Location": "ftp://127.0.0.1/w/api.php", "Content-Length": "0"})
        elif mode == "bad_gzip":
            body = b"\x1f\x8b this is not gzip at all"
            self._head(200, {"Content-Encoding": "gzip", "Content-Length": str(len(body)),
                             "Content-Type": "application/json"})
            self.wfile.write(body)
        elif mode == "drip_body":
            body = gzip.compress(b" " * 100)  # whatever: it never arrives in full
            self._head(200, {"Content-Length": str(len(body) + 1000), "Content-Type": "application/json"})
            self._drip(b"{" + b" " * 1000)
        elif mode == "drip_headers":
            self._drip(b"HTTP/1.1 200 OK\r\nX-Slow: " + b"a" * 1000)
        else:
            body = json.dumps(_answer(mode, server.requests)).encode()
            self._head(200, {"Content-Type": "application/json", "Content-Length": str(len(body))})
            self.wfile.write(body)

    def _head(self, status: int, headers: dict[str, str]) -> None:
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.end_headers()

    def _drip(self, data: bytes) -> None:
        """One byte every 0.2 s (for up to 60 s): never slow enough for a per-read timeout to fire."""
        self.wfile.flush()
        for byte in data[:300]:
            try:
                self.connection.sendall(bytes([byte]))
            except OSError:
                return
            time.sleep(0.2)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture()
def bad_wiki():
    server = ThreadingHTTPServer(("127.0.0.1", 0), BadWiki)
    server.daemon_threads = True
    server.mode, server.requests = "", 0
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    server.url = f"http://127.0.0.1:{server.server_address[1]}/w/api.php"
    yield server
    server.shutdown()
    server.server_close()


def corpus(capsys, tmp_path, url: str, *flags: str) -> tuple[int, str]:
    out = tmp_path / "out.txt"
    rc, _, err = run_cli(capsys, "corpus", "wikipedia", "Japan", "--api-url", url, "--out", out, "--no-cache",
                         "--retries", "0", "--rate", "1000", "--depth", "0", *flags)
    assert not out.exists() and not (tmp_path / "out.txt.manifest.json").exists()
    return rc, err


@pytest.mark.parametrize("mode, message", [
    ("continue_same", "answered the same `continue` twice"),
    ("continue_new", "still answered `continue` after 100 rounds"),
])
def test_endless_continue_is_bounded(bad_wiki, capsys, tmp_path, mode, message):
    bad_wiki.mode = mode
    rc, err = corpus(capsys, tmp_path, bad_wiki.url)
    one_line_error(rc, err, bad_wiki.url, message)
    assert bad_wiki.requests == (2 if mode == "continue_same" else 100)


@pytest.mark.parametrize("mode", ["drip_body", "drip_headers"])
def test_timeout_is_a_deadline_for_the_whole_request(bad_wiki, capsys, tmp_path, mode):
    # a byte every 0.2 s never trips a 1 s read timeout; the drip would last 60 s, the deadline stops it at 1 s
    bad_wiki.mode = mode
    start = time.monotonic()
    rc, err = corpus(capsys, tmp_path, bad_wiki.url, "--timeout", "1")
    elapsed = time.monotonic() - start
    one_line_error(rc, err, bad_wiki.url, "ReadTimeout")
    assert elapsed < 15, f"the request was read for {elapsed:.1f} s"  # a bound on a hang, not a speed


@pytest.mark.parametrize("mode, message", [
    ("redirect_loop", "TooManyRedirects"),
    ("redirect_ftp", "UnsupportedProtocol"),
    ("bad_gzip", "DecodingError"),
    ("list", "answered something other than a MediaWiki JSON object (list)"),
    ("string", "answered something other than a MediaWiki JSON object (str)"),
    ("no_title", "query.pages[].title is NoneType"),
    ("string_continue", "continue is str"),
    ("numeric_extract", "query.pages[].extract is int 12345"),
    ("pages_string", "query.pages is str"),
    ("error_string", "MediaWiki API error"),
])
def test_misbehaving_api_is_one_line_naming_the_url(bad_wiki, capsys, tmp_path, mode, message):
    bad_wiki.mode = mode
    rc, err = corpus(capsys, tmp_path, bad_wiki.url)
    one_line_error(rc, err, bad_wiki.url, message)


@pytest.mark.parametrize("url", ["http://[::1", "http://", "ftp://127.0.0.1/w/api.php", "http://exa mple.org/",
                                 "http://127.0.0.1:99999/w/api.php"])
def test_invalid_api_url_is_one_line(capsys, tmp_path, url):
    rc, err = corpus(capsys, tmp_path, url)
    one_line_error(rc, err, "api-url must be an http(s) URL")


def test_a_cache_entry_of_the_wrong_shape_is_fetched_again(tmp_path):
    from fake_wiki import FakeWiki, serve

    from gpt2tune.corpus.wikipedia import WikiClient

    wiki = FakeWiki()
    server, url = serve(wiki)
    try:
        client = WikiClient(url, "test", rate=1000, cache_dir=tmp_path)
        assert client.page("Kyoto").title == "Kyoto"
        (entry,) = tmp_path.rglob("*.json")
        entry.write_text(json.dumps({"data": ["not", "an", "object"], "fetched_at": 5}))
        client = WikiClient(url, "test", rate=1000, cache_dir=tmp_path)
        assert client.page("Kyoto").title == "Kyoto" and client.cache_hits == 0 and len(wiki.log) == 2
    finally:
        server.shutdown()
        server.server_close()
