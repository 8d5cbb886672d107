"""Hypothesis at the edges of every option: a value is either refused with a UserError by its config's validate(),
or it works (sampling with it runs, seeding with it works). Nothing in between (no traceback, no NaN samples)."""

from __future__ import annotations

import dataclasses
import math
import types
import typing

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gpt2tune.config import INT_MAX, SEED_MAX, BenchConfig, SamplingConfig, TrainConfig, build
from gpt2tune.corpus.options import CleanConfig, WikipediaConfig
from gpt2tune.errors import UserError
from gpt2tune.evaluate.options import CompareConfig, EvaluateConfig
from gpt2tune.serve.options import ServeConfig

EDGE_INTS = st.sampled_from([-(2**64), -(2**63), -1, 0, 1, 2, 3, 8, 255, SEED_MAX, SEED_MAX + 1, 2**40, INT_MAX,
                             INT_MAX + 1, 2**64, 10**30])
EDGE_FLOATS = st.one_of(st.sampled_from([0.0, -0.0, 1e-300, 5e-324, 1e-3, 0.01, 0.5, 1.0, 2.0, 100.0, 100.1, 1e300,
                                         math.inf, -math.inf, math.nan, -1.0]),
                        st.floats(allow_nan=True, allow_infinity=True))
EDGE_TEXT = st.one_of(st.text(max_size=8), st.sampled_from(["", "\ud800", "a\udcffb", "ok"]))


def _field_type(cls: type, f: dataclasses.Field) -> type:
    tp = typing.get_type_hints(cls)[f.name]
    if isinstance(tp, types.UnionType) or typing.get_origin(tp) is typing.Union:
        tp = [a for a in typing.get_args(tp) if a is not type(None)][0]
    return tp


def edge_values(cls: type) -> st.SearchStrategy[dict]:
    """A few of cls's int, float and str fields set to edge values."""
    strategies = {}
    for f in dataclasses.fields(cls):
        tp = _field_type(cls, f)
        if tp is int:
            strategies[f.name] = EDGE_INTS
        elif tp is float:
            strategies[f.name] = EDGE_FLOATS
        elif tp is str:
            strategies[f.name] = EDGE_TEXT
    names = sorted(strategies)
    return st.lists(st.sampled_from(names), min_size=1, max_size=4, unique=True).flatmap(
        lambda chosen: st.fixed_dictionaries({n: strategies[n] for n in chosen}))


REQUIRED = {TrainConfig: {"data": "x.txt"}, CleanConfig: {"out": "o.txt"}, WikipediaConfig: {"out": "o.txt",
            "topic": "Japan"}, CompareConfig: {"base": "b", "tuned": "t", "out": "o"}}


@pytest.mark.parametrize("cls", [TrainConfig, SamplingConfig, BenchConfig, EvaluateConfig, CompareConfig,
                                 CleanConfig, WikipediaConfig, ServeConfig])
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_every_config_refuses_or_accepts_cleanly(cls, data):
    values = data.draw(edge_values(cls))
    try:
        cfg = build(cls, REQUIRED.get(cls, {}), values)
    except UserError as e:
        assert "\n" not in str(e) and len(str(e)) < 400  # one short line
        return
    for f in dataclasses.fields(cfg):  # what is accepted is usable: 64-bit, finite, encodable
        v = getattr(cfg, f.name)
        if isinstance(v, int) and not isinstance(v, bool):
            assert abs(v) <= INT_MAX
        if isinstance(v, float):
            assert math.isfinite(v)
        if isinstance(v, str):
            v.encode("utf-8")
    if hasattr(cfg, "seed"):
        assert 0 <= cfg.seed <= SEED_MAX
        import numpy as np
        import torch

        np.random.seed(cfg.seed)
        torch.manual_seed(cfg.seed)


@pytest.fixture(scope="module")
def loaded(tiny_model):
    from gpt2tune.model import load as modeling

    return modeling.load(str(tiny_model))


SAMPLING_EDGES = {"top_k": EDGE_INTS, "top_p": EDGE_FLOATS, "temperature": EDGE_FLOATS,
                  "repetition_penalty": EDGE_FLOATS, "seed": EDGE_INTS, "n": st.sampled_from([-1, 0, 1, 2, 10_001, 2**64]),
                  "max_new_tokens": st.sampled_from([-1, 0, 1, 3, 2**40, 2**64])}


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(options=st.lists(st.sampled_from(sorted(SAMPLING_EDGES)), min_size=1, max_size=2, unique=True).flatmap(
    lambda chosen: st.fixed_dictionaries({k: SAMPLING_EDGES[k] for k in chosen})))
def test_accepted_sampling_options_sample(loaded, options):
    from gpt2tune.model.sample import sample

    model, tokenizer = loaded
    try:
        cfg = build(SamplingConfig, {"n": 1, "max_new_tokens": 3, "precision": "fp32"}, options)
        samples = sample(model, tokenizer, ["Tokyo is"], cfg)
    except UserError:
        return
    assert len(samples) == cfg.n
    assert all(s.new_tokens <= cfg.max_new_tokens and s.text.startswith("Tokyo is") for s in samples)
