"""The server under attack: foreign Host names, huge bodies, edge values. Each gets a short 4xx JSON answer, and the
server keeps serving."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from gpt2tune.config import SEED_MAX
from gpt2tune.serve import ServeConfig, create_app
from gpt2tune.serve.guard import host_name, request_limit
from gpt2tune.serve.holder import ModelHolder

LOCAL = "http://127.0.0.1"


@pytest.fixture(scope="module")
def tuned(tiny_model) -> ModelHolder:
    return ModelHolder.load("tuned", tiny_model)


@pytest.fixture(scope="module")
def client(tuned):
    with TestClient(create_app(tuned, config=ServeConfig()), base_url=LOCAL) as c:
        yield c


def still_serving(client: TestClient) -> None:
    r = client.post("/v1/generate", json={"prompts": ["Tokyo is"], "max_new_tokens": 2, "seed": 1})
    assert r.status_code == 200, r.text


@pytest.mark.parametrize("header, name", [("localhost:8000", "localhost"), ("[::1]:8000", "::1"), ("::1", "::1"),
                                          ("127.0.0.1", "127.0.0.1"), ("Example.ORG.", "example.org"),
                                          ("example.org:80", "example.org")])
def test_host_name(header, name):
    assert host_name(header) == name


@pytest.mark.parametrize("host", ["localhost:8000", "127.0.0.1:8000", "[::1]:8000", "localhost", "127.0.0.2"])
def test_loopback_host_names_are_answered(client, host):
    assert client.get("/v1/models", headers={"host": host}).status_code == 200


@pytest.mark.parametrize("host", ["attacker.example", "attacker.example:8000", "localhost.attacker.example",
                                  "192.168.1.20:8000", ""])
def test_foreign_host_names_are_refused(client, host):
    # DNS rebinding: a page of attacker.example whose name now resolves to 127.0.0.1 sends Host: attacker.example
    for method, path in (("get", "/v1/run"), ("get", "/v1/models"), ("post", "/v1/generate")):
        r = getattr(client, method)(path, headers={"host": host}, **({"json": {"prompts": ["x"]}}
                                                                     if method == "post" else {}))
        assert r.status_code == 400, r.text
        assert "is not allowed" in r.json()["detail"] and "--allow-host" in r.json()["detail"]
    still_serving(client)


def test_host_option_and_allow_host_add_names(tuned):
    app = create_app(tuned, config=ServeConfig(host="my-box.lan", allow_host=["tuner.example"]))
    with TestClient(app, base_url=LOCAL) as c:
        for host in ("my-box.lan:8000", "tuner.example", "localhost"):
            assert c.get("/health", headers={"host": host}).status_code == 200
        assert c.get("/health", headers={"host": "other.example"}).status_code == 400
    with TestClient(create_app(tuned, config=ServeConfig(host="0.0.0.0")), base_url=LOCAL) as c:
        assert c.get("/health", headers={"host": "192.168.1.20:8000"}).status_code == 200  # an IP can't be rebound
        assert c.get("/health", headers={"host": "attacker.example"}).status_code == 400
    with TestClient(create_app(tuned, config=ServeConfig(allow_host=["*"])), base_url=LOCAL) as c:
        assert c.get("/health", headers={"host": "anything.example"}).status_code == 200


def test_models_list_shows_no_absolute_path(client, tiny_model):
    card = client.get("/v1/models").json()["data"][0]
    assert card["source"] == tiny_model.name
    assert str(tiny_model.parent) not in json.dumps(client.get("/v1/models").json())


def test_three_megabytes_of_unknown_keys_get_a_small_413(client):
    body = json.dumps({"prompts": ["Tokyo"], **{f"k{i:07d}": 1 for i in range(250_000)}})
    assert len(body) > 3_000_000
    r = client.post("/v1/generate", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 413 and len(r.content) < 300, r.text[:300]
    # the same without a Content-Length (chunked): counted as it arrives, refused as soon as it is over
    chunks = (body[i:i + 65536].encode() for i in range(0, len(body), 65536))
    r = client.post("/v1/generate", content=chunks, headers={"content-type": "application/json"})
    assert r.status_code == 413 and len(r.content) < 300, r.text[:300]
    still_serving(client)


def test_many_unknown_keys_under_the_limit_get_a_short_422(client):
    limit = request_limit(ServeConfig())
    keys = {("x" * 5000) + f"{i:04d}": 1 for i in range(limit // 5020)}
    body = json.dumps({"prompts": ["Tokyo"], **keys})
    assert len(body) < limit
    r = client.post("/v1/generate", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 422
    assert len(r.content) < 5000, len(r.content)  # 10 errors at most, each key cut to 60 characters
    assert len(r.json()["detail"]) == 10 and "more" in r.json()["message"]


@pytest.mark.parametrize("field, value, message", [
    ("temperature", 1e-300, "temperature must be 0 (greedy) or in"),
    ("repetition_penalty", 1e-300, "repetition-penalty must be in"),
    ("seed", SEED_MAX + 1, "less than or equal to"),
    ("seed", -1, "greater than or equal to 0"),
    ("n", 10**30, "less than or equal to"),
    ("prompts", ["\ud800 Tokyo"], "valid string"),  # pydantic refuses a lone surrogate itself
])
def test_edge_values_are_422_not_500(client, field, value, message):
    body = {"prompts": ["Tokyo"], "max_new_tokens": 2, field: value}
    r = client.post("/v1/generate", content=json.dumps(body), headers={"content-type": "application/json"})
    assert r.status_code == 422, r.text
    assert message in r.json()["message"]
    still_serving(client)


def test_openai_completions_edge_temperature_is_422(client):
    r = client.post("/v1/completions", json={"prompt": "Tokyo", "max_tokens": 2, "temperature": 1e-300})
    assert r.status_code == 422 and "temperature must be 0 (greedy) or in" in r.json()["message"]


def test_an_unexpected_failure_is_a_json_500_and_the_server_goes_on(tuned, monkeypatch):
    with TestClient(create_app(tuned), base_url=LOCAL, raise_server_exceptions=False) as c:
        monkeypatch.setattr(ModelHolder, "pick", lambda *a: (_ for _ in ()).throw(RuntimeError("boom")))
        r = c.post("/v1/generate", json={"prompts": ["Tokyo"], "max_new_tokens": 2})
        assert r.status_code == 500 and r.json()["detail"] == "internal error: RuntimeError: boom"
        monkeypatch.undo()
        still_serving(c)
