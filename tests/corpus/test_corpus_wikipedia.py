"""The Wikipedia corpus builder against a fake MediaWiki API on 127.0.0.1 (tests/fake_wiki.py)."""

from __future__ import annotations

import json

import pytest
from fake_wiki import FakeWiki, serve

from gpt2tune.corpus import build_wikipedia_corpus
from gpt2tune.corpus.wikipedia import order_links
from gpt2tune.errors import UserError

EXPECTED = [
    "Japan (Japanese: 日本, Nippon or Nihon) is an island country in East Asia.",
    "It is located in the Pacific Ocean.",
    "Tokyo is the capital and the largest city of the country.",
    "People have lived on these islands for over thirty thousand years.",
    "The Yayoi period began around 300 BC.",
    "Mt. Fuji last erupted in 1707.",
    "The Tokugawa shogunate ruled Japan from Edo for more than 250 years.",
    "Traders sailed there from Honshu every summer.",
    "Osaka is a large port city on the island of Honshu.",
    "Osaka is famous for its food and its castle.",
    "Sapporo is the largest city on the northern island of Hokkaido.",
    "The Yayoi period followed the Jōmon period in Japan.",
    "Kyoto was the capital of Japan for more than a thousand years.",
    "Kyoto has many temples and gardens.",
    "Tokyo is the capital of Japan.",
    "It has a population of about 14 million people.",
]


class FakeTime:
    """A clock that only moves when slept on; records every wait asked for."""

    def __init__(self) -> None:
        self.now = 0.0
        self.waits: list[float] = []

    def sleep(self, seconds: float) -> None:
        self.waits.append(seconds)
        self.now += seconds

    def clock(self) -> float:
        return self.now


@pytest.fixture()
def wiki():
    w = FakeWiki(faults={"Kyoto": [(429, {"Retry-After": "3"}, None)], "Osaka": [(500, {}, None)]})
    server, url = serve(w)
    w.url = url
    yield w
    server.shutdown()
    server.server_close()


def run(wiki, tmp_path, name="out.txt", time=None, **options):
    time = time or FakeTime()
    opts = dict(topic="Japan", out=str(tmp_path / name), api_url=wiki.url, category=["Cities in Japan"],
                max_pages=20, rate=4.0, backoff=0.5, cache_dir=str(tmp_path / "cache"), progress=False)
    opts.update(options)
    return build_wikipedia_corpus(sleep=time.sleep, clock=time.clock, **opts)


def test_sentences_pages_and_manifest(wiki, tmp_path):
    result = run(wiki, tmp_path)
    assert (tmp_path / "out.txt").read_text(encoding="utf-8").splitlines() == EXPECTED
    manifest = json.loads((tmp_path / "out.txt.manifest.json").read_text(encoding="utf-8"))
    assert manifest == result.manifest
    pages = manifest["pages"]
    # BFS: topic, category members, then the topic's links, prose-mentioned ones first (Nippon, Yayoi period)
    assert [p["title"] for p in pages] == ["Japan", "Osaka", "Sapporo", "Yayoi period", "Kyoto", "Tokyo"]
    assert [p["sentences_kept"] for p in pages] == [8, 2, 1, 1, 2, 2]  # Yayoi period repeats a Japan sentence
    assert [p["revision_id"] for p in pages] == [1001, 1004, 1005, 1006, 1003, 1002]
    assert [p["depth"] for p in pages] == [0, 1, 1, 1, 1, 1]
    assert pages[0]["url"] == "https://wiki.test/wiki/Japan"
    assert pages[5]["requested_as"] == "Tokio"  # a redirect, followed
    assert all(p["fetched_at"].endswith("Z") for p in pages)
    assert manifest["skipped"] == [{"title": "Nippon", "reason": "redirect to Japan, already taken"},
                                   {"title": "Atlantis", "reason": "missing"}]
    totals = manifest["totals"]
    assert totals["pages"] == 6 and totals["sentences_kept"] == 16 and totals["sentences_split"] == 19
    assert totals["dropped"]["too_short"] == 1 and totals["dropped"]["stub"] == 1
    assert totals["dropped"]["duplicate"] == 1
    assert totals["http_requests"] == 14 and totals["cache_hits"] == 0
    assert manifest["license"] == "CC BY-SA 4.0"
    assert "Wikipedia contributors" in manifest["attribution"]


def test_no_text_from_non_prose_sections(wiki, tmp_path):
    text = "\n".join(run(wiki, tmp_path).sentences)
    for leftover in ("Kodansha", "ISBN", "Outline of Japan", "Oxford", "Official site", "note", "[1]", "lit."):
        assert leftover not in text


def test_requests_are_polite_and_follow_continue(wiki, tmp_path):
    run(wiki, tmp_path)
    assert all(r["path"] == "/w/api.php" for r in wiki.log)
    assert all(r["user_agent"].startswith("gpt2tune/") for r in wiki.log)
    assert all(r["params"]["maxlag"] == "5" for r in wiki.log)
    links = [r["params"] for r in wiki.log if r["params"].get("prop") == "links"]
    assert [p.get("plcontinue") for p in links] == [None, "1|0|2", "1|0|4"]  # 6 links, 2 per round
    assert all(p["plnamespace"] == "0" and p["pllimit"] == "max" for p in links)
    extract = next(r["params"] for r in wiki.log if r["params"].get("titles") == "Japan")
    assert extract["prop"] == "extracts|info" and extract["explaintext"] == "1"
    assert extract["exsectionformat"] == "wiki" and extract["redirects"] == "1"
    titles = [r["params"].get("titles") for r in wiki.log]
    assert titles.count("Kyoto") == 2 and titles.count("Osaka") == 2  # one retry each


def test_backoff_honours_retry_after_and_rate(wiki, tmp_path):
    time = FakeTime()
    run(wiki, tmp_path, time=time)
    # 429 -> its Retry-After (3 s); 500 -> the first backoff (0.5 s); every other gap is the 1/rate spacing
    assert [w for w in time.waits if w != 0.25] == [0.5, 3.0]
    assert time.waits.count(0.25) == len(wiki.log) - 1 - 2


def test_second_run_is_served_from_cache(wiki, tmp_path):
    first = run(wiki, tmp_path, "a.txt")
    sent = len(wiki.log)
    second = run(wiki, tmp_path, "b.txt")
    assert len(wiki.log) == sent  # zero requests
    assert second.sentences == first.sentences
    assert second.manifest["totals"]["http_requests"] == 0
    assert second.manifest["totals"]["cache_hits"] == 12  # 14 requests, 2 of them retries
    assert [p["fetched_at"] for p in second.manifest["pages"]] == [p["fetched_at"] for p in first.manifest["pages"]]


def test_interrupted_run_resumes_from_cache(wiki, tmp_path):
    def asked(log):
        return [(r["params"].get("titles") or r["params"]["cmtitle"], r["params"].get("prop")) for r in log]

    run(wiki, tmp_path, "a.txt", max_pages=2)  # stands in for a run stopped after two pages
    before = asked(wiki.log)
    assert before == [("Japan", "extracts|info"), ("Category:Cities in Japan", None),
                      ("Osaka", "extracts|info"), ("Osaka", "extracts|info")]
    result = run(wiki, tmp_path, "b.txt")
    after = asked(wiki.log[len(before):])
    assert not set(before) & set(after)  # nothing fetched twice
    assert ("Japan", "links") in after and ("Sapporo", "extracts|info") in after
    assert result.sentences == EXPECTED


def test_max_pages_and_depth(wiki, tmp_path):
    result = run(wiki, tmp_path, max_pages=3)
    assert [p["title"] for p in result.manifest["pages"]] == ["Japan", "Osaka", "Sapporo"]
    # the category already filled the queue: the topic's links were never asked for
    assert not any(r["params"].get("prop") == "links" for r in wiki.log)
    result = run(wiki, tmp_path, "d0.txt", depth=0, category=[])
    assert [p["title"] for p in result.manifest["pages"]] == ["Japan"]


def test_big_category_is_listed_only_as_far_as_needed(wiki, tmp_path):
    wiki.categories["Category:Cities in Japan"] = ["Osaka", "Sapporo", "Kyoto", "Tokyo", "Nagoya"]
    result = run(wiki, tmp_path, max_pages=3)
    assert [p["title"] for p in result.manifest["pages"]] == ["Japan", "Osaka", "Sapporo"]
    rounds = [r["params"].get("cmcontinue") for r in wiki.log if r["params"].get("list") == "categorymembers"]
    assert rounds == [None, "page|2"]  # 2 members a round: 4 >= 3 pages, the third round is never asked for
    result = run(wiki, tmp_path, "all.txt", depth=0)
    assert [p["title"] for p in result.manifest["pages"]] == ["Japan", "Osaka", "Sapporo", "Kyoto", "Tokyo"]
    assert {"title": "Nagoya", "reason": "missing"} in result.manifest["skipped"]


def test_maxlag_error_waits_then_succeeds(wiki, tmp_path):
    lagged = {"error": {"code": "maxlag", "info": "Waiting for a database server: 7 seconds lagged"}}
    wiki.faults["Japan"] = [(200, {"Retry-After": "5"}, lagged)]
    time = FakeTime()
    result = run(wiki, tmp_path, time=time, depth=0, category=[])
    assert time.waits[0] == 5.0
    assert result.sentences == EXPECTED[:8]


def test_gives_up_after_retries_with_exponential_backoff(wiki, tmp_path):
    wiki.faults["Japan"] = [(503, {}, None)] * 4
    time = FakeTime()
    with pytest.raises(UserError, match=r"giving up .* after 4 tries \(HTTP 503\)"):
        run(wiki, tmp_path, time=time, retries=3, rate=1000.0)
    assert [w for w in time.waits if w > 0.01] == [0.5, 1.0, 2.0]
    assert not (tmp_path / "out.txt").exists()


def test_network_errors_are_retried_then_reported(tmp_path):
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    time = FakeTime()
    with pytest.raises(UserError, match=r"after 3 tries \(ConnectError"):
        build_wikipedia_corpus(topic="Japan", out=str(tmp_path / "o.txt"),
                               api_url=f"http://127.0.0.1:{port}/w/api.php", retries=2, backoff=0.5, rate=1000.0,
                               cache=False, sleep=time.sleep, clock=time.clock, progress=False)
    assert [w for w in time.waits if w > 0.01] == [0.5, 1.0]


def test_retry_after_header_forms():
    import httpx

    from gpt2tune.corpus.wikipedia import retry_after

    def header(value):
        return retry_after(httpx.Response(429, headers={"Retry-After": value} if value else {}))

    assert header("7") == 7.0 and header(None) is None and header("soon") is None
    assert header("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0  # a date in the past: no wait


def test_missing_topic_is_a_user_error(wiki, tmp_path):
    with pytest.raises(UserError, match="no page 'Atlantis'"):
        run(wiki, tmp_path, topic="Atlantis")


def test_api_error_and_non_api_url_are_user_errors(wiki, tmp_path):
    wiki.faults["Japan"] = [(200, {}, {"error": {"code": "readonly", "info": "The wiki is in read-only mode"}})]
    with pytest.raises(UserError, match="read-only mode"):
        run(wiki, tmp_path)
    with pytest.raises(UserError, match="HTTP 404"):
        run(wiki, tmp_path, api_url=wiki.url.replace("/w/api.php", "") + "/nothing-here", cache=False)


def test_refuses_to_overwrite(wiki, tmp_path):
    (tmp_path / "out.txt").write_text("mine\n")
    with pytest.raises(UserError, match="exists; pass --overwrite"):
        run(wiki, tmp_path)
    assert (tmp_path / "out.txt").read_text() == "mine\n" and wiki.log == []
    run(wiki, tmp_path, overwrite=True)
    assert (tmp_path / "out.txt").read_text(encoding="utf-8").splitlines() == EXPECTED


def test_order_links_puts_prose_mentions_first():
    text = "Kyoto and Osaka are cities. Nara is older than Kyoto."
    assert order_links(["Aomori", "Kyoto", "Nara", "Osaka", "Zama"], text) == ["Kyoto", "Osaka", "Nara",
                                                                                "Aomori", "Zama"]
