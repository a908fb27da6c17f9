"""The engine as its own process, over real HTTP: API shape, errors, streaming, concurrency,
client disconnects and memory."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator

import httpx
import psutil
import pytest

MODEL = "smollm2-135m-instruct"
KV_GIB = 0.25


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    port = free_port()
    # A file, not a pipe nobody reads: the engine prints a line per request and would block on a full pipe.
    log = tmp_path_factory.mktemp("engine") / "engine.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tideserve.engine",
                "--port",
                str(port),
                "--max-model-len",
                "1024",
                "--kv-cache-memory",
                str(KV_GIB),
                "--max-batch-size",
                "64",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        assert proc.poll() is None, log.read_text()
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                break
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    else:
        proc.kill()
        pytest.fail("engine did not become ready in 120 s")
    yield url, proc
    proc.terminate()
    proc.wait(timeout=20)


def chat(url: str, **body: object) -> httpx.Response:
    body = {"model": MODEL, "messages": [{"role": "user", "content": "Say hi."}], **body}
    return httpx.post(f"{url}/v1/chat/completions", json=body, timeout=60)


def test_models_and_health(engine) -> None:
    url, _ = engine
    assert httpx.get(f"{url}/health").json() == {"status": "ok"}
    models = httpx.get(f"{url}/v1/models").json()
    assert [m["id"] for m in models["data"]] == [MODEL]


def test_chat_completion_shape(engine) -> None:
    url, _ = engine
    r = chat(url, max_tokens=8, temperature=0)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "chat.completion"
    assert body["choices"][0]["message"]["role"] == "assistant"
    assert body["choices"][0]["finish_reason"] in ("stop", "length")
    usage = body["usage"]
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert 1 <= usage["completion_tokens"] <= 8


def test_request_id_is_echoed(engine) -> None:
    url, _ = engine
    r = httpx.post(
        f"{url}/v1/completions",
        headers={"X-Request-Id": "trace-42"},
        json={"model": MODEL, "prompt": "hi", "max_tokens": 1},
    )
    assert r.headers["x-request-id"] == "trace-42"
    assert "trace-42" in r.json()["id"]
    fresh = httpx.post(f"{url}/v1/completions", json={"model": MODEL, "prompt": "hi", "max_tokens": 1})
    assert fresh.headers["x-request-id"] == fresh.json()["id"]


def test_stream_matches_non_stream_and_reports_usage(engine) -> None:
    url, _ = engine
    req = {
        "model": MODEL,
        "prompt": "The three primary colors are",
        "max_tokens": 20,
        "temperature": 0,
        "ignore_eos": True,
    }
    whole = httpx.post(f"{url}/v1/completions", json=req, timeout=60).json()
    text, usage = "", None
    with httpx.stream(
        "POST",
        f"{url}/v1/completions",
        timeout=60,
        json={**req, "stream": True, "stream_options": {"include_usage": True}},
    ) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        lines = [ln for ln in r.iter_lines() if ln.startswith("data: ")]
    assert lines[-1] == "data: [DONE]"
    for ln in lines[:-1]:
        chunk = json.loads(ln[6:])
        if chunk["choices"]:
            text += chunk["choices"][0]["text"]
        if chunk.get("usage"):
            usage = chunk["usage"]
    assert text == whole["choices"][0]["text"]
    assert usage == whole["usage"] and usage["completion_tokens"] == 20


def test_seed_reproducible_and_stop_strings(engine) -> None:
    url, _ = engine
    a = chat(url, max_tokens=24, temperature=1.0, seed=7).json()["choices"][0]["message"]["content"]
    b = chat(url, max_tokens=24, temperature=1.0, seed=7).json()["choices"][0]["message"]["content"]
    assert a == b
    full = httpx.post(
        f"{url}/v1/completions",
        json={
            "model": MODEL,
            "prompt": "1, 2, 3, 4,",
            "max_tokens": 12,
            "temperature": 0,
            "ignore_eos": True,
        },
    ).json()
    text = full["choices"][0]["text"]
    stop = text.strip().split(",")[1].strip()  # a number the model will produce
    r = httpx.post(
        f"{url}/v1/completions",
        json={"model": MODEL, "prompt": "1, 2, 3, 4,", "max_tokens": 12, "temperature": 0, "stop": [stop]},
    ).json()
    assert r["choices"][0]["finish_reason"] == "stop"
    assert r["choices"][0]["text"] == text[: text.index(stop)]


def test_logprobs(engine) -> None:
    url, _ = engine
    body = chat(url, max_tokens=4, temperature=0, logprobs=True, top_logprobs=3).json()
    content = body["choices"][0]["logprobs"]["content"]
    assert len(content) == body["usage"]["completion_tokens"]
    for item in content:
        tops = [t["logprob"] for t in item["top_logprobs"]]
        assert len(tops) == 3 and tops == sorted(tops, reverse=True)
        assert item["logprob"] == pytest.approx(tops[0], abs=1e-5)  # greedy picks the top token


BAD_REQUESTS = [
    (
        "unknown model",
        "/v1/chat/completions",
        {"model": "nope", "messages": [{"role": "user", "content": "x"}]},
        404,
        "model",
    ),
    ("wrong type", "/v1/chat/completions", {"model": MODEL, "messages": "hello"}, 400, "messages"),
    (
        "string number",
        "/v1/completions",
        {"model": MODEL, "prompt": "x", "max_tokens": "5"},
        400,
        "max_tokens",
    ),
    (
        "negative max_tokens",
        "/v1/completions",
        {"model": MODEL, "prompt": "x", "max_tokens": -3},
        400,
        "max_tokens",
    ),
    ("empty messages", "/v1/chat/completions", {"model": MODEL, "messages": []}, 400, "messages"),
    (
        "bad role",
        "/v1/chat/completions",
        {"model": MODEL, "messages": [{"role": "robot", "content": "x"}]},
        400,
        "messages.0.role",
    ),
    (
        "temperature range",
        "/v1/completions",
        {"model": MODEL, "prompt": "x", "temperature": 5},
        400,
        "temperature",
    ),
    ("top_p zero", "/v1/completions", {"model": MODEL, "prompt": "x", "top_p": 0}, 400, "top_p"),
    ("n > 1", "/v1/completions", {"model": MODEL, "prompt": "x", "n": 3}, 400, "n"),
    ("empty prompt", "/v1/completions", {"model": MODEL, "prompt": ""}, 400, "prompt"),
    ("token id out of vocab", "/v1/completions", {"model": MODEL, "prompt": [1, 99999999]}, 400, "prompt"),
    ("over-long prompt", "/v1/completions", {"model": MODEL, "prompt": "hello " * 2000}, 400, "prompt"),
    (
        "max_tokens past context",
        "/v1/completions",
        {"model": MODEL, "prompt": "x", "max_tokens": 5000},
        400,
        "prompt",
    ),
    (
        "stop token id out of vocab",
        "/v1/completions",
        {"model": MODEL, "prompt": "x", "stop_token_ids": [10**7], "min_tokens": 1},
        400,
        "stop_token_ids",
    ),
    ("missing model", "/v1/completions", {"prompt": "x"}, 400, "model"),
    (
        "top_logprobs without logprobs",
        "/v1/chat/completions",
        {"model": MODEL, "messages": [{"role": "user", "content": "x"}], "top_logprobs": 2},
        400,
        None,
    ),
]


@pytest.mark.parametrize(
    ("name", "path", "body", "status", "param"), BAD_REQUESTS, ids=[b[0] for b in BAD_REQUESTS]
)
def test_bad_input_is_a_clear_4xx(engine, name, path, body, status, param) -> None:
    url, _ = engine
    r = httpx.post(f"{url}{path}", json=body, timeout=30)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["message"] and err["type"] == "invalid_request_error"
    assert err["param"] == param
    if name.startswith(("over-long", "max_tokens past")):
        assert err["code"] == "context_length_exceeded"


@pytest.mark.parametrize(
    "raw", [b"{not json", b"", b"[1, 2]", b"null", '{"model": "\xff"}'.encode("latin-1")]
)
def test_malformed_bodies_are_400(engine, raw: bytes) -> None:
    url, _ = engine
    r = httpx.post(f"{url}/v1/completions", content=raw, headers={"content-type": "application/json"})
    assert r.status_code == 400, r.text
    assert r.json()["error"]["type"] == "invalid_request_error"


def test_engine_keeps_serving_after_bad_input(engine) -> None:
    url, proc = engine
    for body in ({"model": MODEL, "messages": []}, {"model": MODEL, "prompt": [1, 10**9]}):
        httpx.post(f"{url}/v1/chat/completions", json=body)
    assert proc.poll() is None
    assert chat(url, max_tokens=2).status_code == 200


async def _stream_one(client: httpx.AsyncClient, url: str, i: int) -> int:
    body = {
        "model": MODEL,
        "prompt": f"Request {i}: count to ten.",
        "max_tokens": 16,
        "temperature": 0,
        "ignore_eos": True,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    tokens = 0
    async with client.stream("POST", f"{url}/v1/completions", json=body) as r:
        assert r.status_code == 200
        async for line in r.aiter_lines():
            if line.startswith("data: {"):
                chunk = json.loads(line[6:])
                if chunk.get("usage"):
                    tokens = chunk["usage"]["completion_tokens"]
    return tokens


def test_200_concurrent_streams_none_lost_memory_bounded(engine) -> None:
    url, proc = engine
    ps = psutil.Process(proc.pid)
    rss_before = ps.memory_info().rss

    async def main() -> list[int]:
        limits = httpx.Limits(max_connections=250, max_keepalive_connections=250)
        async with httpx.AsyncClient(timeout=300, limits=limits) as client:
            return await asyncio.gather(*(_stream_one(client, url, i) for i in range(200)))

    peak = [rss_before]

    async def sample_rss(task: asyncio.Future[list[int]]) -> None:
        while not task.done():
            peak[0] = max(peak[0], ps.memory_info().rss)
            await asyncio.sleep(0.2)

    async def run() -> list[int]:
        task = asyncio.ensure_future(main())
        await asyncio.gather(task, sample_rss(task))
        return task.result()

    counts = asyncio.run(run())
    assert counts == [16] * 200
    # The KV cache is allocated up front; serving 200 streams must not grow memory beyond
    # transient per-step buffers.
    assert peak[0] - rss_before < 300 * 2**20, f"RSS grew by {(peak[0] - rss_before) / 2**20:.0f} MiB"
    metrics = httpx.get(f"{url}/metrics").text
    assert 'vllm:num_requests_running{model_name="smollm2-135m-instruct"} 0.0' in metrics


def test_client_disconnect_aborts_the_request(engine) -> None:
    url, _ = engine
    body = {
        "model": MODEL,
        "prompt": "Tell a very long story.",
        "max_tokens": 900,
        "ignore_eos": True,
        "stream": True,
    }
    with httpx.stream("POST", f"{url}/v1/completions", json=body, timeout=60) as r:
        for line in r.iter_lines():
            if line.startswith("data: {"):
                break  # got the first token; now hang up
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        m = httpx.get(f"{url}/metrics").text
        if 'vllm:num_requests_running{model_name="smollm2-135m-instruct"} 0.0' in m:
            break
        time.sleep(0.1)
    else:
        pytest.fail("the abandoned request kept running")
    gen = [ln for ln in m.splitlines() if ln.startswith("vllm:generation_tokens_total")]
    assert gen and float(gen[0].split()[-1]) < 10_000


def test_metrics_read_into_the_platform_vocabulary(engine) -> None:
    from tideserve.observability.engine_metrics import parse_engine_metrics

    url, _ = engine
    chat(url, max_tokens=2)
    load = parse_engine_metrics(httpx.get(url + "/metrics").text)
    assert load.running == 0 and load.waiting == 0
    assert 0 <= load.kv_usage <= 1
    assert load.prefix_queries > 0 and 0 <= load.prefix_hits <= load.prefix_queries
    # The KV cache's size, published as vLLM does (an info gauge): block count x block size.
    assert load.cache_tokens > 0 and load.cache_tokens % 16 == 0
