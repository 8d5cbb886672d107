"""The server for real: uvicorn on loopback under 32 concurrent clients, and the page in headless Chromium."""

from __future__ import annotations

import json
import os
import shutil
import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
uvicorn = pytest.importorskip("uvicorn")
import httpx  # noqa: E402

from gpt2tune.model.builtin import make_gpt2
from gpt2tune.serve import ServeConfig, create_app
from gpt2tune.serve.run import bind

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--disable-quic", "--no-first-run"]
KEYWORDS = ["Tokyo", "Osaka is the", "Kyoto"]
KEY = "live-test-key-0123"
AUTH = {"Authorization": f"Bearer {KEY}"}


def loss_plot(path: Path, rows: list[dict]) -> None:
    """Draw a loss plot like the report module's loss.png (a 1x1 PNG if matplotlib is missing)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        from test_serve import tiny_png

        path.write_bytes(tiny_png())
        return
    fig, ax = plt.subplots(figsize=(5, 3), dpi=80)
    ax.plot([r["step"] for r in rows], [r["val_loss"] for r in rows], marker="o", label="val loss")
    ax.set_xlabel("step")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_model):
    """uvicorn on 127.0.0.1 (a free port, API key on) serving a run directory's tiny model and a different base."""
    root = tmp_path_factory.mktemp("live")
    run = root / "run"
    shutil.copytree(tiny_model, run / "best")
    (run / "config.yaml").write_text("keywords:\n" + "".join(f"- {k}\n" for k in KEYWORDS), encoding="utf-8")
    rows = [{"epoch": e, "step": 25 * e, "train_loss": None if e == 0 else 7.0 - e, "val_loss": 10.9 - 1.5 * e,
             "val_ppl": 2.718 ** (10.9 - 1.5 * e), "best": True, "event": "start" if e == 0 else "epoch"}
            for e in range(4)]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    (run / "samples.jsonl").write_text(json.dumps({"epoch": 3, "step": 75, "keyword": "Tokyo",
                                                   "text": "Tokyo is a city.", "ended": True}) + "\n")
    loss_plot(run / "loss.png", rows)
    base = make_gpt2(root / "base", "tiny", n_positions=256, seed=1)
    app = create_app(run, base, ServeConfig(max_queue=256), api_key=KEY)
    sock = bind("127.0.0.1", 0)
    srv = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=srv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not srv.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    srv.should_exit = True
    thread.join(10)
    sock.close()


def body(i: int, model: str = "tuned") -> dict:
    return {"prompts": [KEYWORDS[i % 3]], "n": 1, "max_new_tokens": 4, "seed": i % 7, "model": model}


def test_load_32_clients_x_5_requests(server):
    clients, per_client = 32, 5
    latencies: list[float] = []
    errors: list[str] = []

    def client(c: int) -> None:
        with httpx.Client(base_url=server, timeout=120, headers=AUTH) as http:
            for k in range(per_client):
                start = time.perf_counter()
                try:
                    r = http.post("/v1/generate", json=body(c * per_client + k, "base" if k % 2 else "tuned"))
                    if r.status_code != 200 or len(r.json()["samples"]) != 1:
                        errors.append(f"{r.status_code}: {r.text[:200]}")
                except httpx.HTTPError as e:
                    errors.append(repr(e))
                latencies.append(time.perf_counter() - start)

    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(client, range(clients)))
    wall = time.perf_counter() - start
    q = statistics.quantiles(latencies, n=100, method="inclusive")
    print(f"\nload test: {clients} clients x {per_client} requests = {len(latencies)} requests, "
          f"{len(errors)} errors, p50 {q[49] * 1000:.0f} ms, p99 {q[98] * 1000:.0f} ms, "
          f"max {max(latencies) * 1000:.0f} ms, {len(latencies) / wall:.1f} req/s, wall {wall:.1f} s")
    assert errors == [] and len(latencies) == clients * per_client
    assert httpx.get(f"{server}/health").json()["queued"] == 0


def test_same_seed_same_samples_under_concurrency(server):
    cases = [body(i, m) for i in range(4) for m in ("tuned", "base")]
    with httpx.Client(base_url=server, timeout=120, headers=AUTH) as http:
        alone = [http.post("/v1/generate", json=b).json()["samples"] for b in cases]
    assert len({json.dumps(s) for s in alone}) == len(cases)  # every case has samples of its own

    def call(i: int) -> tuple[int, list]:
        b = cases[i % len(cases)]
        with httpx.Client(base_url=server, timeout=120, headers=AUTH) as http:
            return i, http.post("/v1/generate", json=b).json()["samples"]

    with ThreadPoolExecutor(32) as pool:
        crowded = list(pool.map(call, range(32)))
    for i, samples in crowded:
        assert samples == alone[i % len(cases)], f"request {i} got another request's samples"


def test_playground_in_headless_chromium(server, tmp_path):
    if not Path(CHROMIUM).is_file():
        pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install chromium, or run .ci/install-browser.sh)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")
    shot = os.environ.get("GPT2TUNE_SCREENSHOT")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 1000})
            console_errors: list[str] = []
            page.on("console", lambda m: console_errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: console_errors.append(str(e)))
            page.goto(server + "/")
            # the server wants a key: the page asks for it, then loads the run with it
            page.wait_for_selector("#api-key", state="visible")
            page.wait_for_function("document.getElementById('error').textContent.includes('needs an API key')")
            page.fill("#api-key", KEY)
            page.dispatch_event("#api-key", "change")
            # the run's keywords, metrics table and loss plot come from /v1/run
            page.wait_for_selector("#keywords .chip")
            assert page.locator("#keywords .chip").all_inner_texts() == KEYWORDS
            assert page.locator("#run-metrics tr").count() == 1 + 4
            assert "10.900" in page.inner_text("#run-summary") and "6.400" in page.inner_text("#run-summary")
            page.wait_for_function("document.getElementById('run-plot').naturalWidth > 0")

            page.fill("#prompt", "Tokyo is the")
            page.fill("#n", "2")
            page.fill("#max_new_tokens", "10")
            page.fill("#seed", "21")
            page.click("#generate")
            page.wait_for_selector("#out-tuned .sample >> nth=1")
            page.wait_for_selector("#out-base .sample >> nth=1")
            page.wait_for_function("!document.getElementById('generate').disabled")
            tuned = page.locator("#out-tuned .sample > div:first-child").all_text_contents()
            base = page.locator("#out-base .sample > div:first-child").all_text_contents()
            if shot:
                page.screenshot(path=shot, full_page=True)
            assert "seed 21" in page.inner_text("#status")
            assert not page.is_visible("#error")
        finally:
            browser.close()
    assert len(tuned) == 2 and len(base) == 2
    assert all(t.startswith("Tokyo is the") for t in tuned + base)
    # what the page shows is what the API gives for the same request
    for model, shown in (("tuned", tuned), ("base", base)):
        api = httpx.post(f"{server}/v1/generate", json={"prompts": ["Tokyo is the"], "n": 2, "max_new_tokens": 10,
                                                         "seed": 21, "model": model, "temperature": 1.0,
                                                         "top_k": 30, "top_p": 0.9, "repetition_penalty": 1.0},
                         headers=AUTH)
        assert [s["text"] for s in api.json()["samples"]] == shown
    assert tuned != base
    # the only console error allowed is the first, keyless /v1/models call's 401
    assert [e for e in console_errors if "401" not in e] == [] and len(console_errors) <= 1
