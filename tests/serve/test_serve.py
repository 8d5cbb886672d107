"""The serve API on a tiny model: generate, OpenAI completions, limits (422), auth, run info, the page, the queue."""

from __future__ import annotations

import asyncio
import json
import shutil
import socket
import struct
import threading
import zlib
from pathlib import Path

import pytest

fastapi = pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

LOCAL = "http://127.0.0.1"  # the server answers loopback Host names only

from gpt2tune.cli import main
from gpt2tune.config import SamplingConfig
from gpt2tune.errors import UserError
from gpt2tune.model.builtin import make_gpt2
from gpt2tune.model.sample import sample
from gpt2tune.serve import ServeConfig, create_app
from gpt2tune.serve.holder import Busy, ModelHolder, Worker, find_run_dir
from gpt2tune.serve.run import bind

KEY = "s3cret-key-for-tests"


def tiny_png() -> bytes:
    """A valid 1x1 PNG (a stand-in for the report module's loss.png)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\x00\xff\x00\x00")) + chunk(b"IEND", b""))


def make_run_dir(root: Path, model_dir: Path, loss_png: bytes | None = None) -> Path:
    """A training run directory as train.py writes it (best/ holds the model)."""
    run = root / "run"
    shutil.copytree(model_dir, run / "best")
    (run / "config.yaml").write_text("model: tiny\nkeywords:\n- Tokyo\n- Osaka is the\n", encoding="utf-8")
    rows = [{"epoch": 0, "step": 0, "train_loss": None, "val_loss": 10.8, "val_ppl": 49000.0, "best": True,
             "event": "start"},
            {"epoch": 1, "step": 20, "train_loss": 6.1, "val_loss": 5.9, "val_ppl": 365.0, "best": True,
             "event": "epoch"}]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"torn', encoding="utf-8")
    samples = [{"epoch": 0, "step": 0, "keyword": "Tokyo", "text": "Tokyo old", "ended": False},
               {"epoch": 1, "step": 20, "keyword": "Tokyo", "text": "Tokyo new", "ended": True},
               {"epoch": 1, "step": 20, "keyword": "Osaka is the", "text": "Osaka is the newest", "ended": True}]
    (run / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in samples), encoding="utf-8")
    if loss_png is not None:
        (run / "loss.png").write_bytes(loss_png)
    return run


@pytest.fixture(scope="module")
def tuned(tiny_model) -> ModelHolder:
    return ModelHolder.load("tuned", tiny_model)


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> ModelHolder:
    d = make_gpt2(tmp_path_factory.mktemp("base") / "model", "tiny", n_positions=256, seed=1)
    return ModelHolder.load("base", d)


@pytest.fixture(scope="module")
def client(tuned, base) -> TestClient:
    cfg = ServeConfig(max_prompts=3, max_n=4, max_new_tokens=20, max_prompt_chars=2000)
    with TestClient(create_app(tuned, base, cfg), base_url=LOCAL) as c:
        yield c


def gen(client: TestClient, **body):
    body.setdefault("max_new_tokens", 6)
    return client.post("/v1/generate", json=body)


def test_generate_gives_n_samples_per_prompt_in_prompt_order(client):
    r = gen(client, prompts=["Tokyo is", "Osaka"], n=3, seed=5)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"] == "tuned" and body["seed"] == 5
    assert [s["prompt"] for s in body["samples"]] == ["Tokyo is"] * 3 + ["Osaka"] * 3
    for s in body["samples"]:
        assert s["text"].startswith(s["prompt"])
        assert 0 <= s["new_tokens"] <= 6
        assert s["ended"] == (s["new_tokens"] < 6)
    assert len({s["text"] for s in body["samples"]}) > 1


def test_api_samples_equal_direct_sampling_and_follow_the_seed(client, tuned):
    body = gen(client, prompts=["Kyoto"], n=2, seed=11, top_k=10, top_p=0.8, temperature=0.9).json()
    direct = sample(tuned.model, tuned.tokenizer, ["Kyoto"],
                    SamplingConfig(n=2, top_k=10, top_p=0.8, temperature=0.9, max_new_tokens=6, seed=11))
    assert [s["text"] for s in body["samples"]] == [s.text for s in direct]
    again = gen(client, prompts=["Kyoto"], n=2, seed=11, top_k=10, top_p=0.8, temperature=0.9).json()
    assert again["samples"] == body["samples"]
    other = gen(client, prompts=["Kyoto"], n=2, seed=12, top_k=10, top_p=0.8, temperature=0.9).json()
    assert other["samples"] != body["samples"]


def test_without_a_seed_the_response_names_the_one_used(client):
    first = gen(client, prompts=["Nara"], n=2).json()
    replay = gen(client, prompts=["Nara"], n=2, seed=first["seed"]).json()
    assert replay["samples"] == first["samples"]


def test_base_and_tuned_are_different_models(client):
    t = gen(client, prompts=["Kobe"], seed=1, temperature=0).json()
    b = gen(client, prompts=["Kobe"], seed=1, temperature=0, model="base").json()
    assert b["model"] == "base"
    assert t["samples"][0]["text"] != b["samples"][0]["text"]


def test_stop_cuts_the_sample(client):
    full = gen(client, prompts=["Tokyo"], seed=3, max_new_tokens=12).json()["samples"][0]["text"]
    cont = full[len("Tokyo"):]
    stop = cont.strip()[:2]
    cut = gen(client, prompts=["Tokyo"], seed=3, max_new_tokens=12, stop=stop).json()["samples"][0]["text"]
    assert cut == full[: full.index(stop, len("Tokyo"))].rstrip()


@pytest.mark.parametrize("body, where, words", [
    ({"prompts": ["a"], "n": 5}, "n", "less than or equal to 4"),
    ({"prompts": ["a"], "max_new_tokens": 21}, "max_new_tokens", "less than or equal to 20"),
    ({"prompts": ["a", "b", "c", "d"]}, "prompts", "at most 3"),
    ({"prompts": ["a" * 2001]}, "prompts.0", "at most 2000 characters"),
    ({"prompts": []}, "prompts", "at least 1"),
    ({"prompts": [""]}, "prompts.0", "at least 1 character"),
    ({"prompts": "Tokyo"}, "prompts", "valid list"),
    ({"prompts": ["a"], "top_p": 0}, "top_p", "greater than 0"),
    ({"prompts": ["a"], "temperature": -1}, "temperature", "greater than or equal to 0"),
    ({"prompts": ["a"], "seed": -1}, "seed", "greater than or equal to 0"),
    ({"prompts": ["a"], "temprature": 1}, "temprature", "Extra inputs are not permitted"),
    ({"prompts": ["a"], "model": "/etc/passwd"}, "model", "'tuned' or 'base'"),
])
def test_invalid_requests_are_422_with_a_clear_message(client, body, where, words):
    r = client.post("/v1/generate", json=body)
    assert r.status_code == 422
    assert any(".".join(map(str, d["loc"][1:])) == where and words in d["msg"] for d in r.json()["detail"]), r.text
    assert r.json()["message"].startswith(where + ":")


def test_whitespace_prompt_and_context_overflow_are_422(client):
    r = gen(client, prompts=["   "])
    assert r.status_code == 422 and "prompts must not be empty" in r.json()["message"]
    r = gen(client, prompts=["Tokyo " * 300], max_new_tokens=20)  # ~300 tokens > the tiny model's 256
    assert r.status_code == 422
    assert "exceeds the tuned model's context of 256 tokens" in r.json()["message"]


def test_greedy_with_several_samples_is_422(client):
    r = gen(client, prompts=["a"], temperature=0, n=2)
    assert r.status_code == 422 and "temperature 0 (greedy) gives one sample per prompt" in r.json()["message"]
    r = client.post("/v1/completions", json={"prompt": "a", "temperature": 0, "n": 2})
    assert r.status_code == 422 and "greedy" in r.json()["message"]
    greedy = [gen(client, prompts=["a"], temperature=0, seed=s).json()["samples"] for s in (1, 2)]
    assert greedy[0] == greedy[1]  # greedy ignores the seed


def test_base_is_422_when_no_base_is_loaded(tuned):
    with TestClient(create_app(tuned), base_url=LOCAL) as c:
        r = gen(c, prompts=["a"], model="base")
        assert r.status_code == 422 and "no base model loaded" in r.json()["message"]
        assert c.get("/health").json()["models"] == ["tuned"]


def test_completions_have_the_openai_shape(client, tuned):
    r = client.post("/v1/completions", json={"model": "tuned", "prompt": ["Tokyo is", "Osaka"], "max_tokens": 5,
                                              "n": 2, "seed": 7, "presence_penalty": 0})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "text_completion" and body["id"].startswith("cmpl-")
    assert body["model"] == "tuned" and isinstance(body["created"], int)
    assert [c["index"] for c in body["choices"]] == [0, 1, 2, 3]
    for c in body["choices"]:
        assert set(c) == {"text", "index", "logprobs", "finish_reason"}
        assert c["logprobs"] is None and c["finish_reason"] in ("stop", "length")
        assert not c["text"].startswith("Tokyo is") and not c["text"].startswith("Osaka")
    u = body["usage"]
    assert u["prompt_tokens"] == sum(1 + len(tuned.tokenizer(p)["input_ids"]) for p in ("Tokyo is", "Osaka"))
    assert u["total_tokens"] == u["prompt_tokens"] + u["completion_tokens"]
    assert 0 < u["completion_tokens"] <= 4 * 5


def test_completion_text_is_the_generate_continuation(client, tuned):
    prompt = "Kyoto is"
    c = client.post("/v1/completions", json={"model": "base", "prompt": prompt, "max_tokens": 6, "seed": 9,
                                             "temperature": 0.8, "top_p": 0.95, "echo": True}).json()
    g = gen(client, prompts=[prompt], model="base", seed=9, temperature=0.8, top_p=0.95, top_k=0).json()
    assert c["choices"][0]["text"] == g["samples"][0]["text"]
    assert c["choices"][0]["finish_reason"] == ("stop" if g["samples"][0]["ended"] else "length")
    assert c["usage"]["prompt_tokens"] == 1 + len(tuned.tokenizer(prompt)["input_ids"])
    assert c["usage"]["completion_tokens"] == g["samples"][0]["new_tokens"]


def test_completion_stop_sequences_cut_and_say_stop(client):
    body = {"model": "tuned", "prompt": "Tokyo", "max_tokens": 12, "seed": 4, "temperature": 0.7}
    full = client.post("/v1/completions", json=body).json()["choices"][0]["text"]
    stop = full.strip()[1:3]
    cut = client.post("/v1/completions", json={**body, "stop": ["zzzz-never", stop]}).json()["choices"][0]
    assert cut["text"] == full[: full.index(stop)]
    assert cut["finish_reason"] == "stop"


@pytest.mark.parametrize("extra, words", [
    ({"stream": True}, "streaming is not supported"),
    ({"logprobs": 2}, "logprobs are not supported"),
    ({"stop": ["a", "b", "c", "d", "e"]}, "up to 4"),
    ({"model": "gpt-4"}, "unknown model 'gpt-4'"),
    ({"max_tokens": 21}, "less than or equal to 20"),
    ({"temperature": 3}, "less than or equal to 2"),
])
def test_completions_reject_what_they_cannot_do(client, extra, words):
    r = client.post("/v1/completions", json={"model": "tuned", "prompt": "Tokyo", **extra})
    assert r.status_code == 422 and words in r.json()["message"], r.text


def test_health_models_and_openapi(client):
    h = client.get("/health").json()
    assert h["status"] == "ok" and h["models"] == ["tuned", "base"] and h["auth"] is False
    assert h["limits"]["max_n"] == 4
    m = client.get("/v1/models").json()
    assert m["object"] == "list" and [x["id"] for x in m["data"]] == ["tuned", "base"]
    assert all(x["object"] == "model" and x["context"] == 256 for x in m["data"])
    spec = client.get("/openapi.json").json()
    assert {"/v1/generate", "/v1/completions", "/v1/models", "/health", "/v1/run"} <= set(spec["paths"])
    props = spec["components"]["schemas"]["GenerateRequest"]["properties"]
    assert props["n"]["maximum"] == 4 and props["max_new_tokens"]["maximum"] == 20


def test_page_is_served_at_root(client):
    r = client.get("/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert 'id="generate"' in r.text and "/v1/generate" in r.text


def test_api_key_guards_the_api_but_not_health_or_page(tuned):
    with TestClient(create_app(tuned, api_key=KEY), base_url=LOCAL) as c:
        assert c.get("/health").json()["auth"] is True
        assert c.get("/").status_code == 200
        for method, path, body in [("get", "/v1/models", None), ("get", "/v1/run", None),
                                   ("post", "/v1/generate", {"prompts": ["a"], "max_new_tokens": 2}),
                                   ("post", "/v1/completions", {"prompt": "a", "max_tokens": 2})]:
            for headers in ({}, {"Authorization": "Bearer wrong-key-123"}, {"Authorization": KEY}):
                r = c.request(method, path, json=body, headers=headers)
                assert r.status_code == 401, (path, headers, r.text)
                assert r.headers["www-authenticate"] == "Bearer"
        ok = {"Authorization": f"Bearer {KEY}"}
        assert c.get("/v1/models", headers=ok).status_code == 200
        assert c.post("/v1/generate", json={"prompts": ["a"], "max_new_tokens": 2}, headers=ok).status_code == 200
        assert c.get("/v1/run", headers=ok).status_code == 404  # authorised, and the model has no run


def test_run_info_from_a_run_directory(tmp_path, tiny_model):
    run = make_run_dir(tmp_path, tiny_model, loss_png=tiny_png())
    assert find_run_dir(run) == run and find_run_dir(run / "best") == run and find_run_dir(tiny_model) is None
    for path in (run, run / "best"):
        with TestClient(create_app(path), base_url=LOCAL) as c:
            info = c.get("/v1/run").json()
            assert info["run"] == "run" and info["keywords"] == ["Tokyo", "Osaka is the"]
            assert [m["val_loss"] for m in info["metrics"]] == [10.8, 5.9]  # the torn last line is skipped
            assert [s["text"] for s in info["samples"]] == ["Tokyo new", "Osaka is the newest"]
            assert info["loss_png"] == "/v1/run/loss.png" and info["report_html"] is None
            png = c.get(info["loss_png"])
            assert png.headers["content-type"] == "image/png" and png.content == tiny_png()
            assert c.get("/v1/run/report.html").status_code == 404


def test_run_without_plot_and_model_without_run(tmp_path, tiny_model):
    run = make_run_dir(tmp_path, tiny_model)
    (run / "report.html").write_text("<h1>report</h1>", encoding="utf-8")
    with TestClient(create_app(run), base_url=LOCAL) as c:
        info = c.get("/v1/run").json()
        assert info["loss_png"] is None and info["report_html"] == "/v1/run/report.html"
        assert c.get("/v1/run/report.html").text == "<h1>report</h1>"
        assert c.get("/v1/run/loss.png").status_code == 404
    with TestClient(create_app(tiny_model), base_url=LOCAL) as c:
        r = c.get("/v1/run")
        assert r.status_code == 404 and "not loaded from a run directory" in r.json()["detail"]


def test_worker_refuses_beyond_its_queue_and_runs_one_at_a_time():
    release = threading.Event()
    running, peak = [0], [0]

    def job() -> int:
        running[0] += 1
        peak[0] = max(peak[0], running[0])
        release.wait(5)
        running[0] -= 1
        return 1

    async def scenario() -> tuple[list, str]:
        worker = Worker(max_queue=3)
        tasks = [asyncio.ensure_future(worker.run(job)) for _ in range(3)]
        await asyncio.sleep(0.05)
        try:
            await worker.run(job)
            refused = ""
        except Busy as e:
            refused = str(e)
        release.set()
        done = await asyncio.gather(*tasks)
        assert worker.pending == 0
        worker.close()
        return done, refused

    done, refused = asyncio.run(scenario())
    assert done == [1, 1, 1] and "3 requests already queued" in refused and peak[0] == 1


def test_busy_is_503(tuned):
    app = create_app(tuned, config=ServeConfig(max_queue=1))
    app.state.worker._pending = 1  # as if one request were waiting
    with TestClient(app, base_url=LOCAL) as c:
        r = c.post("/v1/generate", json={"prompts": ["a"], "max_new_tokens": 2})
        assert r.status_code == 503 and "server busy" in r.json()["detail"] and r.headers["retry-after"] == "1"


def test_config_rejects_bad_limits_and_key():
    with pytest.raises(UserError, match="max-n must be at least 1"):
        ServeConfig(max_n=0).validate()
    with pytest.raises(UserError, match="api-key must be at least 8"):
        ServeConfig(api_key="short").validate()
    with pytest.raises(UserError, match="threads must be at least 1"):
        ServeConfig(threads=0).validate()


def test_cli_serve_says_when_the_port_is_taken(tiny_model, capsys):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        with pytest.raises(UserError, match=f"cannot listen on 127.0.0.1:{port}"):
            bind("127.0.0.1", port)
        assert main(["serve", str(tiny_model), "--port", str(port)]) == 1
    err = capsys.readouterr().err
    assert err.strip().splitlines()[-1].startswith(f"gpt2tune: error: cannot listen on 127.0.0.1:{port}")
    assert main(["serve", str(tiny_model / "nope"), "--port", "0"]) == 1
    assert f"gpt2tune: error: no such run or model: {tiny_model / 'nope'}" in capsys.readouterr().err
