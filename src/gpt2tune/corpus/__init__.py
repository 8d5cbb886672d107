"""Topic corpora for fine-tuning: Wikipedia pages or a user's own files -> one clean sentence per line."""

from .build import CorpusResult, build_wikipedia_corpus, clean_files
from .options import CleanConfig, WikipediaConfig

__all__ = ["build_wikipedia_corpus", "clean_files", "CorpusResult", "CleanConfig", "WikipediaConfig"]
