"""The gateway inside a real platform (`tideserve up` on PostgreSQL) and as separate `tideserve gateway`
replicas reading its store: keys with services and expiry, rate limits shared through the real Redis,
prompt-length pools, revision pins, the priority queue, scaling from zero."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from tests.controlplane.conftest import Databases, Platform, _cleanup, free_port
from tests.gateway.conftest import GatewayProc

REDIS = "redis://127.0.0.1:6379/0"
SHORT = {"model": "main", "prompt": "Hi", "max_tokens": 1}
LONG_PROMPT = "This sentence is here to make the prompt long enough for the long pool. " * 8


def service(name: str, replicas: int = 1, **routing: Any) -> dict[str, Any]:
    return {
        "metadata": {"name": name},
        "spec": {
            "model": "smollm2-135m-instruct",
            "replicas": replicas,
            "resources": {"cpu": 0.5, "memory": "1Gi", "gpus": 0},
            "parameters": {"maxModelLen": 1024, "maxBatchSize": 8},
            "routing": routing,
        },
    }


@pytest.fixture(scope="module")
def platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    dbs = Databases("postgresql")
    p = Platform(tmp_path_factory.mktemp("home"), free_port(), dbs.new())
    p.start("--no-default", "--redis-url", REDIS)
    try:
        with p.client() as c:
            main = service("main", replicas=2, promptLength={"thresholdTokens": 100, "longReplicas": 1})
            assert c.post("/api/v1/services", json=main).status_code == 201
            solo = service("solo", maxInflightPerInstance=1, queue={"maxSize": 2, "timeoutSeconds": 60})
            assert c.post("/api/v1/services", json=solo).status_code == 201
        p.wait_service("main", timeout=180)
        p.wait_service("solo", timeout=180)
        yield p
    finally:
        _cleanup(p)
        dbs.drop_all()


def make_key(p: Platform, **fields: Any) -> str:
    name = f"k-{uuid.uuid4().hex[:8]}"
    with p.client() as c:
        r = c.post("/api/v1/keys", json={"name": name, "scope": "inference", **fields})
    assert r.status_code == 201, r.text
    return r.json()["key"]


def post(p: Platform, body: dict[str, Any], key: str | None = None, **headers: str) -> httpx.Response:
    with p.client(key) as c:
        return c.post("/v1/completions", json=body, headers=headers)


def test_prompt_length_pools(platform: Platform) -> None:
    # The pool is the instance last by id, so every gateway replica agrees on it.
    short_id, long_id = sorted(i["id"] for i in platform.wait_service("main")["instances"])
    long_body = {**SHORT, "prompt": LONG_PROMPT}

    def seen(body: dict[str, Any]) -> str:
        return post(platform, body).headers["x-tideserve-instance"]

    # The API may report both instances Running up to one table refresh before the gateway routes to
    # both; until then the lone instance it knows serves every prompt.
    deadline = time.monotonic() + 15
    while (seen(SHORT), seen(long_body)) != (short_id, long_id):
        assert time.monotonic() < deadline, "the gateway never split the pools"
        time.sleep(0.2)
    assert {seen(SHORT) for _ in range(6)} == {short_id}
    assert {seen(long_body) for _ in range(6)} == {long_id}


def test_model_version_pin(platform: Platform) -> None:
    pinned = post(platform, SHORT, **{"X-Model-Version": "v1"})
    assert pinned.status_code == 200 and pinned.headers["x-tideserve-revision"] == "1"
    missing = post(platform, SHORT, **{"X-Model-Version": "7"})
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "model_version_not_found"
    bad = post(platform, SHORT, **{"X-Model-Version": "latest!"})
    assert bad.status_code == 400 and "X-Model-Version" in bad.json()["error"]["message"]
    priority = post(platform, SHORT, **{"X-Priority": "urgent"})
    assert priority.status_code == 400 and priority.json()["error"]["code"] == "invalid_priority"


def test_key_allowed_services_and_models_list(platform: Platform) -> None:
    key = make_key(platform, services=["solo"])
    with platform.client(key) as c:
        assert [m["id"] for m in c.get("/v1/models").json()["data"]] == ["solo"]
        denied = c.post("/v1/completions", json=SHORT)
        allowed = c.post("/v1/completions", json={**SHORT, "model": "solo"})
    assert denied.status_code == 403 and denied.json()["error"]["code"] == "service_not_allowed"
    assert allowed.status_code == 200
    client = openai.OpenAI(base_url=platform.url + "/v1", api_key=key, max_retries=0)
    with pytest.raises(openai.PermissionDeniedError):
        client.completions.create(**SHORT)


def test_expired_and_revoked_keys(platform: Platform) -> None:
    expiring = make_key(platform, expiresIn="3s")
    fresh = post(platform, SHORT, expiring)
    assert fresh.status_code == 200, fresh.text
    time.sleep(3.2)
    expired = post(platform, SHORT, expiring)
    assert expired.status_code == 401 and expired.json()["error"]["code"] == "key_expired"
    name = f"k-{uuid.uuid4().hex[:8]}"
    with platform.client() as c:
        secret = c.post("/api/v1/keys", json={"name": name}).json()["key"]
        assert post(platform, SHORT, secret).status_code == 200
        assert c.delete(f"/api/v1/keys/{name}").status_code == 204
    time.sleep(1.5)  # one refresh of every gateway's key copy
    assert post(platform, SHORT, secret).status_code == 401


def test_key_request_limit_with_headers(platform: Platform) -> None:
    key = make_key(platform, requestsPerMinute=2)
    first, second, third = (post(platform, SHORT, key) for _ in range(3))
    assert first.status_code == second.status_code == 200
    assert second.headers["x-ratelimit-remaining-requests"] == "0"
    assert third.status_code == 429 and int(third.headers["retry-after"]) >= 1
    assert third.json()["error"]["code"] == "rate_limit_exceeded"
    with pytest.raises(openai.RateLimitError):
        openai.OpenAI(base_url=platform.url + "/v1", api_key=key, max_retries=0).completions.create(**SHORT)


def test_key_token_and_concurrency_limits(platform: Platform) -> None:
    small = make_key(platform, tokensPerMinute=100)
    # Charged at admission as prompt + max_tokens: 200 tokens can never fit a 100-token minute.
    too_big = post(platform, {**SHORT, "max_tokens": 200}, small)
    assert too_big.status_code == 429 and "tokens" in too_big.json()["error"]["message"]
    assert post(platform, {**SHORT, "max_tokens": 20}, small).status_code == 200

    one = make_key(platform, maxConcurrent=1)

    async def two_at_once() -> list[int]:
        async with httpx.AsyncClient(
            base_url=platform.url, headers={"Authorization": f"Bearer {one}"}, timeout=60, trust_env=False
        ) as c:
            body = {**SHORT, "max_tokens": 40, "ignore_eos": True}
            slow = asyncio.create_task(c.post("/v1/completions", json=body))
            await asyncio.sleep(0.3)
            fast = await c.post("/v1/completions", json=SHORT)
            return [(await slow).status_code, fast.status_code]

    assert asyncio.run(two_at_once()) == [200, 429]


def test_token_charge_is_corrected_by_actual_usage(platform: Platform) -> None:
    """Admission charges prompt + max_tokens; a reply that stops early gives the rest back."""
    key = make_key(platform, tokensPerMinute=600)
    early = {**SHORT, "prompt": "Say yes or no.", "max_tokens": 250, "stop": [" ", "\n", "."]}
    first = post(platform, early, key)
    assert first.status_code == 200 and first.json()["usage"]["completion_tokens"] < 20
    second = post(platform, {**SHORT, "max_tokens": 250}, key)
    # Without the correction: 600 - 2 x ~255 = ~90 left; with it, the first costs only what it used.
    assert second.status_code == 200 and int(second.headers["x-ratelimit-remaining-tokens"]) > 250


def test_two_gateway_replicas_share_one_limit_through_redis(platform: Platform, tmp_path: Any) -> None:
    key = make_key(platform, requestsPerMinute=5)
    env = {"TIDESERVE_HOME": str(platform.home), "TIDESERVE_DATABASE_URL": platform.db_url or ""}
    replicas = [
        GatewayProc(free_port(), tmp_path / f"gw{i}.log", ["--redis-url", REDIS], env) for i in range(2)
    ]
    try:
        for g in replicas:
            g.start()
        statuses = []
        for i in range(12):
            with replicas[i % 2].client(key) as c:
                statuses.append(c.post("/v1/completions", json=SHORT).status_code)
        assert statuses.count(200) == 5 and statuses.count(429) == 7
        # Both replicas served and both refused: the budget is one, not one each.
        assert {s for i, s in enumerate(statuses) if i % 2 == 0} == {200, 429}
        assert {s for i, s in enumerate(statuses) if i % 2 == 1} >= {429}
    finally:
        for g in replicas:
            g.stop()


def test_service_rate_limit_applies_in_place(platform: Platform) -> None:
    """A routing change edits the service in place (no rollout) and the gateway applies it."""
    limited = service(
        "solo", maxInflightPerInstance=1, queue={"maxSize": 2, "timeoutSeconds": 60},
        rateLimit={"requestsPerMinute": 1},
    )  # fmt: skip
    with platform.client() as c:
        r = c.put("/api/v1/services/solo", json=limited)
        assert r.status_code == 200 and r.json()["result"] == "updated"
        time.sleep(1.0)
        statuses = [c.post("/v1/completions", json={**SHORT, "model": "solo"}).status_code for _ in range(2)]
        restored = service("solo", maxInflightPerInstance=1, queue={"maxSize": 2, "timeoutSeconds": 60})
        assert c.put("/api/v1/services/solo", json=restored).status_code == 200
    assert statuses == [200, 429]
    time.sleep(1.0)


def test_priority_queue_and_its_bound(platform: Platform) -> None:
    """One slot (maxInflightPerInstance=1): a high-priority request queued after a low one is served
    first; a request beyond the queue's size is refused at once with Retry-After."""
    high = make_key(platform, priority="high")
    order: list[str] = []

    async def run() -> list[int]:
        async with httpx.AsyncClient(base_url=platform.url, timeout=120, trust_env=False) as c:

            async def send(name: str, key: str, max_tokens: int, **headers: str) -> int:
                body = {"model": "solo", "prompt": "Go", "max_tokens": max_tokens, "ignore_eos": True}
                r = await c.post(
                    "/v1/completions", json=body, headers={"Authorization": f"Bearer {key}", **headers}
                )
                order.append(name)
                return r.status_code

            holder = asyncio.create_task(send("holder", platform.key, 250))
            await asyncio.sleep(0.5)
            low = asyncio.create_task(send("low", platform.key, 2, **{"X-Priority": "low"}))
            await asyncio.sleep(0.3)
            urgent = asyncio.create_task(send("high", high, 2))
            await asyncio.sleep(0.3)
            overflow = await send("overflow", platform.key, 2)
            return [overflow, *await asyncio.gather(holder, low, urgent)]

    statuses = asyncio.run(run())
    assert statuses == [503, 200, 200, 200]
    assert order == ["overflow", "holder", "high", "low"]


def test_scale_from_zero_holds_requests_until_ready(platform: Platform) -> None:
    with platform.client() as c:
        r = c.post("/api/v1/services", json=service("zero", replicas=0, queue={"timeoutSeconds": 1}))
        assert r.status_code == 201
        time.sleep(1.0)
        refused = c.post("/v1/completions", json={**SHORT, "model": "zero"})
        assert refused.status_code == 503 and refused.headers["retry-after"]
        assert "no instance is ready" in refused.json()["error"]["message"]
        patient = {"timeoutSeconds": 120}
        assert c.put("/api/v1/services/zero", json=service("zero", 0, queue=patient)).status_code == 200
        time.sleep(1.0)
        result: dict[str, Any] = {}

        def waiting_request() -> None:
            with platform.client() as w:
                result["r"] = w.post("/v1/completions", json={**SHORT, "model": "zero"})

        t = threading.Thread(target=waiting_request)
        t.start()
        time.sleep(1.0)
        assert c.put("/api/v1/services/zero", json=service("zero", 1, queue=patient)).status_code == 200
        t.join(150)
    assert result["r"].status_code == 200
    rid = result["r"].headers["x-request-id"]
    deadline = time.monotonic() + 5  # access-log lines are written in batches
    while not (queued := [line for line in platform.log.read_text().splitlines() if rid in line]):
        assert time.monotonic() < deadline, "no access-log line for the request"
        time.sleep(0.1)
    assert '"queued_s":' in queued[0] and '"queued_s":0.0' not in queued[0]


def test_gateway_metrics_on_the_platform_port(platform: Platform) -> None:
    text = httpx.get(platform.url + "/metrics", timeout=5, trust_env=False).text
    assert 'tideserve_gateway_requests_total{key="admin",model="smollm2-135m-instruct",service="main"' in text
    assert "tideserve_gateway_e2e_seconds_bucket" in text and "tideserve_gateway_queued" in text
