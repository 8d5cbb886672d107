"""Topic corpora for fine-tuning: Wikipedia pages or a user's own files -> one clean sentence per line."""

from typing import Any

from gpt2tune.corpus.options import CleanConfig, WikipediaConfig

_API = ("build_wikipedia_corpus", "clean_files", "CorpusResult")


def __getattr__(name: str) -> Any:
    # httpx, pysbd, bs4 and markdown-it (the `corpus` extra) load only when the API is used, so the CLI
    # and the rest of gpt2tune work without them.
    if name in _API:
        from gpt2tune.corpus import build

        return getattr(build, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [*_API, "CleanConfig", "WikipediaConfig"]
