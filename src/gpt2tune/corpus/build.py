"""The corpus API: build a sentence file from Wikipedia pages or from a user's own files."""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

from tqdm import tqdm

from gpt2tune.config import build
from gpt2tune.corpus.clean import SentenceCleaner, wiki_paragraphs
from gpt2tune.corpus.files import read_paragraphs
from gpt2tune.corpus.options import VERSION, CleanConfig, WikipediaConfig
from gpt2tune.corpus.output import check_writable, wikipedia_attribution, write_corpus
from gpt2tune.corpus.wikipedia import WikiClient, crawl, default_cache_dir, now_iso
from gpt2tune.errors import UserError
from gpt2tune.files import check_makeable, make_dir


@dataclass
class CorpusResult:
    """What a corpus build wrote."""

    out: Path
    manifest_path: Path
    sentences: list[str]
    manifest: dict[str, Any]


def _config(cls: type, config: Any, options: dict[str, Any]) -> Any:
    return build(cls, dataclasses.asdict(config) if config is not None else {}, options)


def build_wikipedia_corpus(config: WikipediaConfig | None = None, *, progress: bool | None = None,
                           sleep: Callable[[float], None] = time.sleep,
                           clock: Callable[[], float] = time.monotonic, **options: Any) -> CorpusResult:
    """Fetch a topic's Wikipedia pages and write their clean sentences plus a manifest.

    Pass a WikipediaConfig or its fields as keyword arguments; `progress` None shows a bar on a terminal.
    """
    cfg: WikipediaConfig = _config(WikipediaConfig, config, options)
    check_writable(cfg.out, cfg.overwrite)
    api_url = cfg.endpoint()
    cache_dir = (Path(cfg.cache_dir).expanduser() if cfg.cache_dir else default_cache_dir()) if cfg.cache else None
    if cache_dir is not None:
        _make_cache_dir(cache_dir)
    client = WikiClient(api_url, cfg.user_agent, rate=cfg.rate, maxlag=cfg.maxlag, retries=cfg.retries,
                        backoff=cfg.backoff, timeout=cfg.timeout, cache_dir=cache_dir, sleep=sleep, clock=clock)
    cleaner = SentenceCleaner(cfg.min_words, cfg.max_words, cfg.lang)
    sentences: list[str] = []
    titles: list[str] = []
    pages: list[dict[str, Any]] = []
    skipped: list[dict[str, Any]] = []
    bar = tqdm(total=cfg.max_pages, unit="page", desc=cfg.topic[:30],
               disable=(None if progress is None else not progress))
    try:
        for page, depth in crawl(client, cfg.topic, cfg.category, cfg.depth, cfg.max_pages, skipped):
            kept = cleaner.clean(wiki_paragraphs(page.text))
            sentences.extend(kept)
            titles.extend([page.title] * len(kept))
            entry = {"title": page.title, "url": page.url, "revision_id": page.revision_id,
                     "fetched_at": page.fetched_at, "depth": depth, "sentences_kept": len(kept)}
            if page.requested != page.title:
                entry["requested_as"] = page.requested
            pages.append(entry)
            bar.update(1)
            bar.set_postfix(sentences=len(sentences), refresh=False)
    finally:
        bar.close()
        client.close()
    if not sentences:
        raise UserError(f"no sentences kept from {len(pages)} page(s); nothing written to {cfg.out}")
    manifest = {
        **_manifest_head("wikipedia", cfg),
        "api_url": api_url,
        "topic": cfg.topic,
        "categories": cfg.category,
        "pages": pages,
        "skipped": skipped,
        "totals": {"pages": len(pages), **cleaner.stats.as_dict(),
                   "http_requests": client.requests, "cache_hits": client.cache_hits},
        **wikipedia_attribution(api_url),
    }
    path = write_corpus(cfg.out, sentences, manifest, titles)
    return CorpusResult(Path(cfg.out), path, sentences, manifest)


def _make_cache_dir(path: Path) -> None:
    """Make the cache directory before any request; one line naming --cache-dir when it can't be used."""
    try:
        make_dir(path, "--cache-dir")
        check_makeable(path, "--cache-dir")  # exists now: is it writable?
    except UserError as e:
        raise UserError(f"{e}; give another --cache-dir or pass --no-cache") from None


def _manifest_head(source: str, cfg) -> dict[str, Any]:
    """The manifest keys every corpus command writes: tool, source, time, and the options that shaped it."""
    return {"tool": f"gpt2tune {VERSION}", "source": source, "created": now_iso(),
            "options": {k: v for k, v in dataclasses.asdict(cfg).items() if k not in ("out", "overwrite")}}


def clean_files(files: Iterable[str | Path], config: CleanConfig | None = None, *,
                progress: bool | None = None, **options: Any) -> CorpusResult:
    """Clean a user's .txt, .md and .html files into one sentence file plus a manifest."""
    cfg: CleanConfig = _config(CleanConfig, config, options)
    paths = [Path(f) for f in files]
    if not paths:
        raise UserError("no input files given")
    check_writable(cfg.out, cfg.overwrite)
    out = Path(cfg.out).resolve()
    if any(p.resolve() == out for p in paths):
        raise UserError(f"--out {cfg.out} is also an input file; write to a new file")
    read = [(p, read_paragraphs(p)) for p in paths]  # every file checked before any work
    cleaner = SentenceCleaner(cfg.min_words, cfg.max_words, cfg.lang)
    sentences: list[str] = []
    titles: list[str] = []
    entries = []
    for path, paragraphs in read:
        bar = tqdm(paragraphs, unit=" paragraphs", desc=path.name[:30],
                   disable=(None if progress is None else not progress))
        kept = cleaner.clean(bar)
        sentences.extend(kept)
        titles.extend([path.stem] * len(kept))
        entries.append({"path": str(path), "paragraphs": len(paragraphs), "sentences_kept": len(kept)})
    if not sentences:
        raise UserError(f"no sentences kept from {len(paths)} file(s); nothing written to {cfg.out}")
    manifest = {
        **_manifest_head("files", cfg),
        "files": entries,
        "totals": {"files": len(entries), **cleaner.stats.as_dict()},
    }
    path = write_corpus(cfg.out, sentences, manifest, titles)
    return CorpusResult(Path(cfg.out), path, sentences, manifest)
