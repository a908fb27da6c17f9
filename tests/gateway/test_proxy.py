"""`tideserve gateway --upstream` in front of two real built-in engine servers: the OpenAI surface,
bad input, balancing policies, disconnects, idempotent replay and resume, the circuit breaker."""

from __future__ import annotations

import asyncio
import itertools
import json
import time
import uuid
from collections import Counter
from typing import Any

import httpx
import openai
import pytest

from tests.gateway.conftest import KEY, Engine, GatewayProc, upstream_args

CHAT = {"model": "chat", "messages": [{"role": "user", "content": "Name a color."}], "max_tokens": 8}


@pytest.fixture(scope="module")
def gw(engines: list[Engine], make_gateway: Any) -> GatewayProc:
    return make_gateway(*upstream_args(engines, "least_requests", "--request-timeout", "1"))


def sse_events(lines: list[str]) -> list[dict[str, Any]]:
    return [json.loads(line[6:]) for line in lines if line.startswith("data: {")]


# --- the OpenAI surface -------------------------------------------------------------------------------


def test_openai_client_sync_and_streaming(gw: GatewayProc) -> None:
    client = openai.OpenAI(base_url=gw.url + "/v1", api_key=KEY, max_retries=0)
    assert [m.id for m in client.models.list()] == ["chat"]
    reply = client.chat.completions.create(**CHAT)
    assert reply.choices[0].message.content
    assert reply.usage is not None and reply.usage.completion_tokens <= 8
    stream = client.completions.create(
        model="chat", prompt="The sky is", max_tokens=6, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    assert "".join(c.choices[0].text for c in chunks if c.choices)
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 6


async def _async_calls(url: str) -> tuple[str, str]:
    client = openai.AsyncOpenAI(base_url=url + "/v1", api_key=KEY, max_retries=0)
    reply = await client.chat.completions.create(**CHAT)
    stream = await client.chat.completions.create(**CHAT, stream=True)
    parts = [c.choices[0].delta.content or "" async for c in stream if c.choices]
    await client.close()
    return reply.choices[0].message.content or "", "".join(parts)


def test_openai_client_async_and_stream(gw: GatewayProc) -> None:
    whole, streamed = asyncio.run(_async_calls(gw.url))
    assert whole and streamed


def test_openai_client_errors_are_mapped(gw: GatewayProc) -> None:
    good = openai.OpenAI(base_url=gw.url + "/v1", api_key=KEY, max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=gw.url + "/v1", api_key="wrong", max_retries=0).chat.completions.create(**CHAT)
    with pytest.raises(openai.NotFoundError) as missing:
        good.chat.completions.create(**{**CHAT, "model": "nope"})
    assert missing.value.code == "model_not_found"
    with pytest.raises(openai.BadRequestError) as bad:
        good.chat.completions.create(**{**CHAT, "max_tokens": -1})
    assert bad.value.param == "max_tokens"


def test_request_id_is_echoed_or_generated(gw: GatewayProc) -> None:
    with gw.client() as c:
        given = c.post("/v1/chat/completions", json=CHAT, headers={"X-Request-Id": "trace-42"})
        made = c.post("/v1/chat/completions", json=CHAT)
    assert given.headers["x-request-id"] == "trace-42"
    assert len(made.headers["x-request-id"]) == 32
    assert gw.access_log('"request_id":"trace-42"')


def test_access_log_line_names_the_key_never_the_secret(gw: GatewayProc) -> None:
    with gw.client() as c:
        rid = c.post("/v1/chat/completions", json=CHAT, headers={"X-Session-Id": "s-1"}).headers[
            "x-request-id"
        ]
    line = json.loads(gw.access_log(rid)[0])
    assert line["key"] == "key-1" and line["session_id"] == "s-1" and line["status"] == 200
    assert line["service"] == "chat" and line["instance"].startswith("chat-")
    assert line["prompt_tokens"] > 0 and line["completion_tokens"] > 0 and line["e2e_s"] > 0
    assert KEY not in gw.log.read_text()


def test_gateway_metrics_per_service(gw: GatewayProc) -> None:
    before = gw.metric("tideserve_gateway_ttft_seconds_count", service="chat")
    with gw.client() as c, c.stream("POST", "/v1/chat/completions", json={**CHAT, "stream": True}) as r:
        assert r.status_code == 200
        list(r.iter_lines())
    assert gw.metric("tideserve_gateway_ttft_seconds_count", service="chat") == before + 1
    assert gw.metric("tideserve_gateway_requests_total", service="chat", status="200") >= 1
    assert gw.metric("tideserve_gateway_completion_tokens_total", service="chat") > 0


# --- bad input ------------------------------------------------------------------------------------------

BAD = [
    ("invalid json", "/v1/chat/completions", b"{not json", 400, "invalid_json", None),
    ("array body", "/v1/chat/completions", b"[1, 2]", 400, "invalid_json", None),
    ("missing model", "/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}]}, 400,
     "missing_model", "model"),
    ("unknown model", "/v1/chat/completions", {**CHAT, "model": "gpt-9"}, 404, "model_not_found", "model"),
    ("stream not bool", "/v1/chat/completions", {**CHAT, "stream": "yes"}, 400, "invalid_type", "stream"),
    ("max_tokens zero", "/v1/chat/completions", {**CHAT, "max_tokens": 0}, 400, "invalid_value",
     "max_tokens"),
    ("messages string", "/v1/chat/completions", {**CHAT, "messages": "hi"}, 400, "invalid_type", "messages"),
    ("no prompt", "/v1/completions", {"model": "chat"}, 400, "invalid_type", "prompt"),
    ("no input", "/v1/embeddings", {"model": "chat"}, 400, "missing_input", "input"),
    ("embeddings unsupported", "/v1/embeddings", {"model": "chat", "input": "x"}, 404, "unsupported_endpoint",
     "model"),
]  # fmt: skip


@pytest.mark.parametrize(("name", "path", "body", "status", "code", "param"), BAD, ids=[b[0] for b in BAD])
def test_bad_input_is_an_openai_4xx(
    gw: GatewayProc, name: str, path: str, body: Any, status: int, code: str, param: str | None
) -> None:
    with gw.client() as c:
        r = c.post(path, content=body) if isinstance(body, bytes) else c.post(path, json=body)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert error["code"] == code and error["param"] == param and error["message"]


def test_limits_of_the_request_itself(gw: GatewayProc) -> None:
    with gw.client() as c:
        huge = c.post("/v1/completions", json={"model": "chat", "prompt": "x" * (17 << 20)})
        over = c.post("/v1/completions", json={"model": "chat", "prompt": "hello " * 3000, "max_tokens": 4})
        wrong_method = c.get("/v1/chat/completions")
        unknown_path = c.post("/v1/nothing", json={})
        fine = c.post("/v1/chat/completions", json=CHAT)
    assert huge.status_code == 413 and huge.json()["error"]["code"] == "request_too_large"
    # The engine knows the context length; its 400 passes through unchanged.
    assert over.status_code == 400 and "context" in over.json()["error"]["message"]
    assert wrong_method.status_code == 405 and unknown_path.status_code == 404
    assert fine.status_code == 200  # and the gateway keeps serving


def test_missing_or_bad_keys(gw: GatewayProc) -> None:
    with httpx.Client(base_url=gw.url, trust_env=False) as c:
        none = c.post("/v1/chat/completions", json=CHAT)
        basic = c.post("/v1/chat/completions", json=CHAT, headers={"Authorization": "Basic abc"})
        wrong = c.post("/v1/chat/completions", json=CHAT, headers={"Authorization": "Bearer nope"})
        models = c.get("/v1/models")
    for r in (none, basic, wrong, models):
        assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"


# --- policies --------------------------------------------------------------------------------------------


def _instances(
    gw: GatewayProc, bodies: list[dict[str, Any]], headers: list[dict[str, str]] | None = None
) -> list[str]:
    out = []
    with gw.client() as c:
        for i, body in enumerate(bodies):
            r = c.post("/v1/completions", json=body, headers=(headers or [{}] * len(bodies))[i])
            assert r.status_code == 200, r.text
            out.append(r.headers["x-tideserve-instance"])
    return out


def test_round_robin_alternates(engines: list[Engine], make_gateway: Any) -> None:
    g = make_gateway(*upstream_args(engines, "round_robin"))
    body = {"model": "chat", "prompt": "Hi", "max_tokens": 1}
    seen = _instances(g, [body] * 6)
    assert all(a != b for a, b in itertools.pairwise(seen)) and len(set(seen)) == 2


def test_session_affinity_and_fallback(engines: list[Engine], make_gateway: Any) -> None:
    g = make_gateway(*upstream_args(engines, "session"))
    body = {"model": "chat", "prompt": "Hi", "max_tokens": 1}
    sessions = [f"user-{i}" for i in range(8)]
    first = _instances(g, [body] * 8, [{"X-Session-Id": s} for s in sessions])
    again = _instances(g, [body] * 8, [{"X-Session-Id": s} for s in sessions])
    assert first == again and len(set(first)) == 2  # sticky, and sessions spread over both
    # The OpenAI `user` field is a session key too.
    by_user = _instances(g, [{**body, "user": "alice"}] * 3)
    assert len(set(by_user)) == 1


def test_prefix_aware_keeps_a_shared_prefix_on_one_instance(engines: list[Engine], make_gateway: Any) -> None:
    g = make_gateway(*upstream_args(engines, "prefix_aware"))
    system_a = "You are a helpful assistant for the ACME support desk. " * 12
    system_b = "Tu es un assistant qui répond en français, poliment et brièvement. " * 10
    bodies = [
        {"model": "chat", "prompt": (system_a if i % 2 else system_b) + f"Question {i}?", "max_tokens": 1}
        for i in range(12)
    ]
    seen = _instances(g, bodies)
    a = Counter(seen[1::2])
    b = Counter(seen[0::2])
    # Each prefix stays where it is cached, and a new prefix goes to the instance caching less.
    assert a.most_common(1)[0][1] == 6 and b.most_common(1)[0][1] == 6
    assert len(set(seen)) == 2


def test_least_kv_reads_engine_state(engines: list[Engine], make_gateway: Any) -> None:
    """A long stream keeps one engine busy; once its /metrics has been scraped, new requests go to the
    idle one."""
    g = make_gateway(*upstream_args(engines, "least_kv"))
    long_body = {"model": "chat", "prompt": "Count to a thousand.", "max_tokens": 400, "stream": True,
                 "ignore_eos": True}  # fmt: skip
    with g.client() as c, c.stream("POST", "/v1/completions", json=long_body) as r:
        busy = r.headers["x-tideserve-instance"]
        lines = r.iter_lines()
        next(lines)
        time.sleep(1.2)  # two scrapes
        seen = _instances(g, [{"model": "chat", "prompt": "Hi", "max_tokens": 1}] * 4)
    assert busy not in seen


# --- disconnects, timeouts and exact in-flight counts ------------------------------------------------------


def _wait_for(predicate: Any, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError("condition not met in time")


def test_client_disconnect_aborts_the_upstream_request(gw: GatewayProc, engines: list[Engine]) -> None:
    generated_before = sum(e.metric("vllm:generation_tokens_total") for e in engines)
    body = {"model": "chat", "prompt": "Tell a long story.", "max_tokens": 900, "stream": True,
            "ignore_eos": True}  # fmt: skip
    with gw.client() as c, c.stream("POST", "/v1/completions", json=body) as r:
        assert r.status_code == 200
        lines = r.iter_lines()
        for _ in range(6):
            next(lines)
    # 900 tokens take far longer than this: the engine stopped because the gateway closed upstream.
    _wait_for(lambda: sum(e.metric("vllm:num_requests_running") for e in engines) == 0, timeout=8)
    _wait_for(lambda: gw.metric("tideserve_gateway_inflight", service="chat") == 0)
    generated = sum(e.metric("vllm:generation_tokens_total") for e in engines) - generated_before
    assert generated < 900


def test_in_flight_counts_stay_exact_on_every_path(gw: GatewayProc) -> None:
    async def mixed() -> list[int]:
        async with httpx.AsyncClient(
            base_url=gw.url, headers={"Authorization": f"Bearer {KEY}"}, timeout=30, trust_env=False
        ) as c:

            async def ok() -> int:
                return (await c.post("/v1/chat/completions", json=CHAT)).status_code

            async def engine_400() -> int:
                body = {"model": "chat", "prompt": "x", "max_tokens": 4, "temperature": -3}
                return (await c.post("/v1/completions", json=body)).status_code

            async def timeout() -> int:  # --request-timeout 1: a long non-streamed answer cannot make it
                body = {"model": "chat", "prompt": "Count.", "max_tokens": 600, "ignore_eos": True}
                return (await c.post("/v1/completions", json=body)).status_code

            async def dropped() -> int:
                body = {**CHAT, "stream": True, "max_tokens": 300}
                async with c.stream("POST", "/v1/chat/completions", json=body) as r:
                    async for _ in r.aiter_lines():
                        break
                return 499

            return await asyncio.gather(ok(), engine_400(), timeout(), dropped(), ok(), dropped())

    statuses = asyncio.run(mixed())
    assert statuses[0] == 200 and statuses[1] == 400 and statuses[2] == 504
    _wait_for(lambda: gw.metric("tideserve_gateway_inflight", service="chat") == 0)


# --- idempotency --------------------------------------------------------------------------------------------


def test_idempotent_request_returns_the_stored_result(gw: GatewayProc, engines: list[Engine]) -> None:
    key = {"Idempotency-Key": uuid.uuid4().hex}
    body = {"model": "chat", "prompt": "Once upon a time", "max_tokens": 12, "temperature": 1.0}
    before = sum(e.metric("vllm:e2e_request_latency_seconds_count") for e in engines)
    with gw.client() as c:
        first = c.post("/v1/completions", json=body, headers=key)
        second = c.post("/v1/completions", json=body, headers=key)
        reused = c.post("/v1/completions", json={**body, "max_tokens": 3}, headers=key)
    assert first.status_code == second.status_code == 200
    assert first.json() == second.json()  # same id, same sampled text
    assert sum(e.metric("vllm:e2e_request_latency_seconds_count") for e in engines) == before + 1
    assert reused.status_code == 422 and reused.json()["error"]["code"] == "idempotency_key_reused"


def test_interrupted_stream_resumes_by_idempotency_key(gw: GatewayProc, engines: list[Engine]) -> None:
    key = {"Idempotency-Key": uuid.uuid4().hex}
    body = {"model": "chat", "prompt": "List the planets:", "max_tokens": 60, "stream": True,
            "ignore_eos": True, "temperature": 1.0}  # fmt: skip
    before = sum(e.metric("vllm:e2e_request_latency_seconds_count") for e in engines)
    with gw.client() as c:
        with c.stream("POST", "/v1/completions", json=body, headers=key) as r:
            lines = r.iter_lines()
            partial = [next(lines) for _ in range(10)]  # then the connection breaks
        with c.stream("POST", "/v1/completions", json=body, headers=key) as r:
            assert r.status_code == 200
            resumed = list(r.iter_lines())
    head, whole = sse_events(partial), sse_events(resumed)
    # The whole generation (a token that ends mid-character shares its event with the next one).
    assert whole[-1]["choices"][0]["finish_reason"] == "length" and "data: [DONE]" in resumed
    assert whole[: len(head)] == head  # the same stream, not a new generation
    assert len({e["id"] for e in whole}) == 1
    _wait_for(lambda: sum(e.metric("vllm:e2e_request_latency_seconds_count") for e in engines) >= before + 1)
    time.sleep(0.5)
    assert sum(e.metric("vllm:e2e_request_latency_seconds_count") for e in engines) == before + 1


# --- circuit breaker (last: it kills and restarts an engine) ------------------------------------------


def test_breaker_opens_on_a_killed_instance_and_closes_after_it_returns(
    engines: list[Engine], make_gateway: Any
) -> None:
    """Session affinity falls back while its instance is down and comes back with it."""
    g = make_gateway(*upstream_args(engines, "session", "--breaker-failures", "2", "--breaker-cooldown", "1"))
    body = {"model": "chat", "prompt": "Hi", "max_tokens": 1}
    sessions = [{"X-Session-Id": f"user-{i}"} for i in range(12)]
    homes = dict(
        zip([s["X-Session-Id"] for s in sessions], _instances(g, [body] * 12, sessions), strict=True)
    )
    on_victim = [{"X-Session-Id": s} for s, home in homes.items() if home == "chat-1"]
    assert on_victim
    engines[1].kill()
    try:
        served = _instances(g, [body] * 8, (on_victim * 8)[:8])
        # Each failed connection moved on to the live instance; then the breaker kept them away.
        assert served == ["chat-0"] * 8
        assert g.metric("tideserve_gateway_breaker_state", instance="chat-1") == 1
        assert g.metric("tideserve_gateway_retries_total", service="chat") >= 2
    finally:
        engines[1].start()
    time.sleep(1.2)  # cooldown: the next request to it is a half-open probe
    assert _instances(g, [body] * 3, on_victim[:1] * 3) == ["chat-1"] * 3
    assert g.metric("tideserve_gateway_breaker_state", instance="chat-1") == 0
