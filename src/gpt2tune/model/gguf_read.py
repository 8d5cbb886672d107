"""Reading GGUF files through transformers: one quick parse per load, and GPT-2's context length kept."""

from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Iterator

import numpy as np


def _plain_reader_class():
    import gguf

    class PlainReader(gguf.GGUFReader):
        """gguf's reader over a plain array view of the file: numpy.memmap's per-slice bookkeeping makes
        parsing a 50k-token vocabulary several times slower."""

        @property
        def data(self):
            return self._data

        @data.setter
        def data(self, value):
            self._data = np.asarray(value)

    return PlainReader


def reader(path: str | os.PathLike):
    """gguf's GGUFReader for `path`, parsing the metadata several times faster."""
    return _plain_reader_class()(path)


@contextmanager
def one_parse() -> Iterator[None]:
    """Within this block, transformers parses each GGUF file once (a config, model and tokenizer load would
    parse it three times, at tens of seconds each for a GPT-2 vocabulary on a busy CPU)."""
    import gguf

    original, plain, cache = gguf.GGUFReader, _plain_reader_class(), {}

    def reader(path, mode="r"):
        st = os.stat(path)
        key = (os.path.realpath(path), st.st_size, st.st_mtime_ns, mode)
        if key not in cache:
            cache[key] = plain(path, mode)
        return cache[key]

    gguf.GGUFReader = reader  # transformers imports it from the gguf module at each call
    try:
        yield
    finally:
        gguf.GGUFReader = original


def config(directory: str, gguf_file: str):
    """The model config a GGUF file describes, as transformers reads it; GPT-2's context length fixed.

    transformers maps the file's `gpt2.context_length` to `n_ctx`, which GPT2Config does not use, so a GPT-2
    whose context is not 1024 would not load; the file itself is right (llama.cpp reads it).
    """
    from transformers import AutoConfig

    cfg = AutoConfig.from_pretrained(directory, gguf_file=gguf_file)
    if cfg.model_type == "gpt2" and getattr(cfg, "n_ctx", None):
        cfg.n_positions = cfg.n_ctx
    return cfg
