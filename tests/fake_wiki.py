"""A fake MediaWiki Action API on 127.0.0.1 for offline tests (and for a by-hand demo: run this file).

It answers the three calls the corpus builder makes (page extract + info, page links, category members)
in the shape of the real API with format=json&formatversion=2, splits link lists into `continue` rounds,
follows redirects, reports missing pages, and can fail on purpose (429 with Retry-After, 500, maxlag).
"""

from __future__ import annotations

import json
import sys
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qsl, urlsplit

JAPAN = """Japan (Japanese: 日本, Nippon or Nihon) is an island country in East Asia.[1] It is located in the \
Pacific Ocean. Tokyo is the capital and the largest city of the country.

== History ==
People have lived on these islands for over thirty thousand years.[2][3] The Yayoi period began around 300 BC. \
Mt. Fuji last erupted in 1707. It rains.

=== Edo period ===
The Tokugawa shogunate ruled Japan from Edo for more than 250 years.
The northern island was long called Ezo (蝦夷) lit. Traders sailed there from Honshu every summer.

== See also ==
List of islands of Japan
Outline of Japan

== References ==
Kodansha International, 1989.
Smith, John (2001). Japan: A Short History. Tokyo: Tuttle. ISBN 978-4-8053-1000-0.

=== Citations ===
Brown, Anne (1999). The Islands. Oxford University Press.

== External links ==
Official site of the Government of Japan.
"""

PAGES = {
    "Japan": (1001, JAPAN),
    "Tokyo": (1002, "Tokyo is the capital of Japan.[4] It has a population of about 14 million people.\n\n"
                    "== Notes ==\nThis note is about a source and not about the city itself.\n"),
    "Kyoto": (1003, "Kyoto was the capital of Japan for more than a thousand years. "
                    "Kyoto has many temples and gardens."),
    "Osaka": (1004, "Osaka is a large port city on the island of Honshu. Osaka is famous for its food and its castle."),
    "Sapporo": (1005, "Sapporo is the largest city on the northern island of Hokkaido."),
    "Yayoi period": (1006, "The Yayoi period followed the Jōmon period in Japan. "
                           "Tokyo is the capital and the largest city of the country."),
}
LINKS = {"Japan": ["Atlantis", "Kyoto", "Nippon", "Osaka", "Tokio", "Yayoi period"]}
REDIRECTS = {"Nippon": "Japan", "Tokio": "Tokyo"}
CATEGORIES = {"Category:Cities in Japan": ["Osaka", "Sapporo"]}


@dataclass
class FakeWiki:
    """The wiki's content, the faults to serve, and a log of the requests received."""

    pages: dict[str, tuple[int, str]] = field(default_factory=lambda: dict(PAGES))
    links: dict[str, list[str]] = field(default_factory=lambda: dict(LINKS))
    redirects: dict[str, str] = field(default_factory=lambda: dict(REDIRECTS))
    categories: dict[str, list[str]] = field(default_factory=lambda: dict(CATEGORIES))
    links_per_round: int = 2
    # title -> answers to give before the real one: (status, headers, body or None)
    faults: dict[str, list[tuple[int, dict, dict | None]]] = field(default_factory=dict)
    log: list[dict] = field(default_factory=list)

    def answer(self, params: dict[str, str]) -> tuple[int, dict, dict]:
        if params.get("action") != "query" or params.get("format") != "json" or params.get("formatversion") != "2":
            return 200, {}, {"error": {"code": "badvalue", "info": "unsupported request"}}
        key = params.get("titles") or params.get("cmtitle", "")
        if self.faults.get(key):
            status, headers, body = self.faults[key].pop(0)
            return status, headers, body or {"error": {"code": "internal", "info": "try again"}}
        if params.get("list") == "categorymembers":
            members = self.categories.get(params["cmtitle"], [])
            start = int(params.get("cmcontinue", "page|0").split("|")[1])
            chunk = members[start:start + self.links_per_round]
            body = {"query": {"categorymembers": [{"pageid": 1, "ns": 0, "title": t} for t in chunk]}}
            if start + self.links_per_round < len(members):
                body["continue"] = {"cmcontinue": f"page|{start + self.links_per_round}", "continue": "-||"}
            else:
                body["batchcomplete"] = True
            return 200, {}, body
        title = params["titles"]
        body: dict
        if params.get("prop") == "links":
            links = self.links.get(title, [])
            start = int(params.get("plcontinue", "0|0|0").split("|")[2])
            chunk = links[start:start + self.links_per_round]
            body = {"query": {"pages": [{"pageid": 1, "ns": 0, "title": title,
                                         "links": [{"ns": 0, "title": t} for t in chunk]}]}}
            if start + self.links_per_round < len(links):
                body["continue"] = {"plcontinue": f"1|0|{start + self.links_per_round}", "continue": "||"}
            else:
                body["batchcomplete"] = True
            return 200, {}, body
        query: dict = {}
        if title in self.redirects:
            query["redirects"] = [{"from": title, "to": self.redirects[title]}]
            title = self.redirects[title]
        if title not in self.pages:
            query["pages"] = [{"ns": 0, "title": title, "missing": True}]
        else:
            rev, text = self.pages[title]
            query["pages"] = [{"pageid": rev - 1000, "ns": 0, "title": title, "extract": text,
                               "contentmodel": "wikitext", "lastrevid": rev, "length": len(text),
                               "fullurl": f"https://wiki.test/wiki/{title.replace(' ', '_')}"}]
        return 200, {}, {"batchcomplete": True, "query": query}


def serve(wiki: FakeWiki, port: int = 0) -> tuple[ThreadingHTTPServer, str]:
    """Start serving `wiki` in a thread on 127.0.0.1; returns the server and its API URL."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            url = urlsplit(self.path)
            params = dict(parse_qsl(url.query))
            wiki.log.append({"path": url.path, "params": params, "user_agent": self.headers.get("User-Agent")})
            if url.path == "/w/api.php":
                status, headers, body = wiki.answer(params)
            else:
                status, headers, body = 404, {}, {"detail": "not found"}
            data = json.dumps(body).encode("utf-8")
            self.send_response(status)
            self.send_header("Content-Type", "application/json; charset=utf-8")
            self.send_header("Content-Length", str(len(data)))
            for k, v in headers.items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}/w/api.php"


if __name__ == "__main__":
    demo = FakeWiki(faults={"Kyoto": [(429, {"Retry-After": "1"}, None)], "Osaka": [(500, {}, None)]})
    server, url = serve(demo, int(sys.argv[1]) if len(sys.argv) > 1 else 8765)
    print(f"fake MediaWiki API at {url} (Ctrl-C stops it)", flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        server.shutdown()
