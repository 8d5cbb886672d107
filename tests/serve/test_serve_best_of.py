"""The server's best_of and about fields: the same picks as the Python API, caps and refusals as 422."""

from __future__ import annotations

import pytest

fastapi = pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from gpt2tune.config import SamplingConfig  # noqa: E402
from gpt2tune.evaluate.best_of import best_of  # noqa: E402
from gpt2tune.serve import ServeConfig, create_app  # noqa: E402
from gpt2tune.serve.holder import ModelHolder  # noqa: E402

LOCAL = "http://127.0.0.1"


@pytest.fixture(scope="module")
def tuned(tiny_model) -> ModelHolder:
    return ModelHolder.load("tuned", tiny_model)


@pytest.fixture(scope="module")
def client(tuned):
    with TestClient(create_app(tuned, None, ServeConfig(max_n=8, max_new_tokens=20)), base_url=LOCAL) as c:
        yield c


def test_best_of_returns_the_checked_picks_and_their_counts(client, tuned):
    body = {"prompts": ["Kyoto is the"], "n": 2, "best_of": 3, "seed": 7, "max_new_tokens": 6}
    r = client.post("/v1/generate", json=body)
    assert r.status_code == 200, r.text
    out = r.json()
    direct = best_of(tuned.model, tuned.tokenizer, ["Kyoto is the"],
                     SamplingConfig(n=2, best_of=3, seed=7, max_new_tokens=6))
    assert [s["text"] for s in out["samples"]] == [p.sample.text for p in direct.picks]
    assert [s["failed"] for s in out["samples"]] == [p.failed for p in direct.picks]
    assert out["best_of"]["drawn"] == 6 and out["best_of"]["kept"] == 2
    assert out["best_of"]["copy_checked"] is False  # a bare model directory: no training sentences to check
    assert client.post("/v1/generate", json=body).json()["samples"] == out["samples"]


def test_best_of_over_the_cap_and_about_without_titles_are_422(client):
    r = client.post("/v1/generate", json={"prompts": ["Osaka"], "n": 3, "best_of": 3})
    assert r.status_code == 422 and "n x best_of is 9, above this server's max_n of 8" in r.json()["message"]
    r = client.post("/v1/generate", json={"prompts": ["Osaka"], "about": "Osaka"})
    assert r.status_code == 422
    assert "--about needs a run trained with --condition title; the tuned model was not" in r.json()["message"]
