import asyncio
import math
import multiprocessing
import time
import uuid
from collections.abc import Callable, Coroutine, Iterator
from typing import Any

import pytest
import redis
from redis.asyncio import Redis

from tideserve.gateway.ratelimit import (
    Limits,
    LimitScope,
    LimitUsage,
    LocalLimiter,
    RateLimitResult,
    RedisLimiter,
    TokenBucket,
)

REDIS_URL = "redis://127.0.0.1:6379/0"


# --- TokenBucket ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("takes", "expected"),
    [
        # (amount, now) -> (ok, retry_after); capacity 10, refill 2/s, starts full.
        ([(10, 0)], [(True, 0)]),
        ([(11, 0)], [(False, math.inf)]),
        ([(6, 0), (6, 0)], [(True, 0), (False, 1.0)]),
        ([(6, 0), (6, 1)], [(True, 0), (True, 0)]),
        ([(10, 0), (1, 0.25)], [(True, 0), (False, 0.25)]),
        # Refill stops at capacity however long the bucket sat idle.
        ([(10, 0), (10, 100), (1, 100)], [(True, 0), (True, 0), (False, 0.5)]),
        # A clock stepping back neither refills nor drains.
        ([(5, 10), (5, 5), (1, 5)], [(True, 0), (True, 0), (False, 0.5)]),
    ],
)
def test_bucket_try_take(takes: list[tuple[float, float]], expected: list[tuple[bool, float]]) -> None:
    bucket = TokenBucket(capacity=10, refill_per_s=2)
    got = [bucket.try_take(amount, now) for amount, now in takes]
    assert got == [(ok, pytest.approx(wait)) for ok, wait in expected]


@pytest.mark.parametrize(
    ("delta", "level"),
    [
        (-3, 5),  # refund
        (-100, 10),  # a refund never fills past capacity
        (4, -2),  # charging more than was there leaves a debt
    ],
)
def test_bucket_adjust(delta: float, level: float) -> None:
    bucket = TokenBucket(capacity=10, refill_per_s=2)
    bucket.try_take(8, 0)
    bucket.adjust(delta, 0)
    assert bucket.level == pytest.approx(level)


def test_bucket_debt_is_paid_by_waiting() -> None:
    bucket = TokenBucket(capacity=10, refill_per_s=2)
    bucket.try_take(10, 0)
    bucket.adjust(4, 0)
    assert bucket.try_take(1, 0) == (False, pytest.approx(2.5))


# --- Limiters: the same behaviour from both backends ----------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def prefix() -> str:
    return f"test:rl:{uuid.uuid4().hex}:"


@pytest.fixture(autouse=True)
def cleanup(prefix: str) -> Iterator[None]:
    yield
    client = redis.Redis.from_url(REDIS_URL)
    keys = list(client.scan_iter(match=f"{prefix}*"))
    if keys:
        client.delete(*keys)
    client.close()


LimiterCall = Callable[[Callable[[Any], Coroutine[Any, Any, None]]], None]


@pytest.fixture(params=["local", "redis"])
def with_limiter(request: pytest.FixtureRequest, prefix: str) -> LimiterCall:
    """Runs a test body with a fresh limiter of either backend inside one event loop."""

    def call(body: Callable[[Any], Coroutine[Any, Any, None]]) -> None:
        async def main() -> None:
            if request.param == "local":
                await body(LocalLimiter(clock=FakeClock()))
                return
            client = Redis.from_url(REDIS_URL)
            try:
                await body(RedisLimiter(client, prefix=prefix))
            finally:
                await client.aclose()

        asyncio.run(main())

    return call


def test_requests_per_min(with_limiter: LimiterCall) -> None:
    scope = [LimitScope("key:a", Limits(requests_per_min=3))]

    async def body(limiter: Any) -> None:
        results = [await limiter.acquire(scope, tokens=0) for _ in range(4)]
        assert [r.allowed for r in results] == [True, True, True, False]
        assert [r.requests.remaining for r in results] == [2, 1, 0, 0]
        denied = results[-1]
        assert denied.denied_by == "requests" and denied.denied_scope == "key:a"
        # 3/min refills one request every 20 s.
        assert denied.retry_after_s == pytest.approx(20, abs=0.5)
        assert denied.tokens is None

    with_limiter(body)


def test_tokens_per_min_and_correction(with_limiter: LimiterCall) -> None:
    scope = [LimitScope("key:t", Limits(tokens_per_min=1000))]

    async def body(limiter: Any) -> None:
        # Admission charges prompt + max_tokens; the request then used 100 tokens fewer.
        first = await limiter.acquire(scope, tokens=700)
        assert first.allowed and first.tokens.remaining == 300
        assert not (await limiter.acquire(scope, tokens=400)).allowed
        await limiter.charge(scope, -100)
        second = await limiter.acquire(scope, tokens=400)
        assert second.allowed and second.tokens.remaining == pytest.approx(0, abs=1)
        # Usage above the estimate is charged afterwards and leaves a debt to wait out.
        await limiter.charge(scope, 300)
        denied = await limiter.acquire(scope, tokens=1)
        assert denied.denied_by == "tokens"
        assert denied.retry_after_s == pytest.approx(301 * 60 / 1000, abs=0.5)
        # Larger than the whole budget: no wait will ever let it through.
        too_big = await limiter.acquire(scope, tokens=1001)
        assert not too_big.allowed and too_big.retry_after_s == math.inf

    with_limiter(body)


def test_concurrency_acquire_release(with_limiter: LimiterCall) -> None:
    scope = [LimitScope("svc:c", Limits(max_concurrent=2))]

    async def body(limiter: Any) -> None:
        a = await limiter.acquire(scope, tokens=10)
        b = await limiter.acquire(scope, tokens=10)
        c = await limiter.acquire(scope, tokens=10)
        assert (a.allowed, b.allowed, c.allowed) == (True, True, False)
        assert c.denied_by == "concurrency" and c.retry_after_s > 0
        await limiter.release(scope, a.lease)
        d = await limiter.acquire(scope, tokens=10)
        assert d.allowed
        await limiter.release(scope, b.lease)
        await limiter.release(scope, d.lease)
        assert all([(await limiter.acquire(scope, tokens=10)).allowed for _ in range(2)])

    with_limiter(body)


def test_scopes_are_all_or_nothing(with_limiter: LimiterCall) -> None:
    key = LimitScope("key:k", Limits(requests_per_min=10, max_concurrent=5))
    service = LimitScope("service:s", Limits(requests_per_min=1))

    async def body(limiter: Any) -> None:
        assert (await limiter.acquire([key, service], tokens=0)).allowed
        denied = await limiter.acquire([key, service], tokens=0)
        assert denied.denied_scope == "service:s"
        # The service's denial did not spend the key's budget or hold one of its slots.
        only_key = await limiter.acquire([key], tokens=0)
        assert only_key.requests.remaining == 8
        # Headers report the budget closest to exhaustion.
        assert denied.requests == LimitUsage(limit=1, remaining=0, reset_s=pytest.approx(60, abs=0.5))

    with_limiter(body)


def test_unlimited_scope_always_admits(with_limiter: LimiterCall) -> None:
    async def body(limiter: Any) -> None:
        for _ in range(50):
            result = await limiter.acquire([LimitScope("key:free", Limits())], tokens=10**6)
            assert result.allowed and result.requests is None and result.tokens is None

    with_limiter(body)


def test_local_refills_with_time() -> None:
    clock = FakeClock()
    limiter = LocalLimiter(clock=clock)
    scope = [LimitScope("key:r", Limits(requests_per_min=60))]

    async def body() -> None:
        for _ in range(60):
            assert (await limiter.acquire(scope, tokens=0)).allowed
        assert not (await limiter.acquire(scope, tokens=0)).allowed
        clock.now += 1
        assert (await limiter.acquire(scope, tokens=0)).allowed

    asyncio.run(body())


def test_limits_must_be_positive() -> None:
    with pytest.raises(ValueError):
        Limits(requests_per_min=0)


# --- Redis specifics ------------------------------------------------------------------------------


def test_redis_keys_expire_when_idle(prefix: str) -> None:
    async def body() -> None:
        client = Redis.from_url(REDIS_URL)
        try:
            limiter = RedisLimiter(client, prefix=prefix)
            scope = [
                LimitScope("key:ttl", Limits(requests_per_min=60, tokens_per_min=6000, max_concurrent=1))
            ]
            result = await limiter.acquire(scope, tokens=600)
            assert result.allowed
            # A bucket is dropped once it would be full again: 1 request at 1/s, 600 tokens at 100/s.
            for kind, most in [("requests", 2000), ("tokens", 7000)]:
                ttl = await client.pttl(f"{prefix}key:ttl:{kind}")
                assert 0 < ttl <= most
            assert await client.ttl(f"{prefix}key:ttl:concurrency") > 0
            await limiter.release(scope, result.lease)
            assert await client.zcard(f"{prefix}key:ttl:concurrency") == 0
        finally:
            await client.aclose()

    asyncio.run(body())


def test_redis_lease_of_crashed_replica_expires(prefix: str) -> None:
    async def body() -> None:
        client = Redis.from_url(REDIS_URL)
        try:
            scope = [LimitScope("key:crash", Limits(max_concurrent=1))]
            crashed = RedisLimiter(client, prefix=prefix, lease_ttl_s=1)
            assert (await crashed.acquire(scope, tokens=0)).allowed
            survivor = RedisLimiter(client, prefix=prefix)
            assert not (await survivor.acquire(scope, tokens=0)).allowed
            await asyncio.sleep(1.1)
            assert (await survivor.acquire(scope, tokens=0)).allowed
        finally:
            await client.aclose()

    asyncio.run(body())


def test_redis_script_reloaded_after_flush(prefix: str) -> None:
    async def body() -> None:
        client = Redis.from_url(REDIS_URL)
        try:
            limiter = RedisLimiter(client, prefix=prefix)
            scope = [LimitScope("key:flush", Limits(requests_per_min=5))]
            assert (await limiter.acquire(scope, tokens=0)).allowed
            await client.script_flush()
            assert (await limiter.acquire(scope, tokens=0)).requests.remaining == 3
        finally:
            await client.aclose()

    asyncio.run(body())


def _hammer(prefix: str, attempts: int, start: Any, admitted: Any) -> None:
    async def main() -> int:
        client = Redis.from_url(REDIS_URL)
        limiter = RedisLimiter(client, prefix=prefix)
        scope = [LimitScope("key:shared", Limits(requests_per_min=50))]
        await client.ping()
        start.wait()
        count = 0
        for _ in range(attempts):
            count += (await limiter.acquire(scope, tokens=0)).allowed
        await client.aclose()
        return count

    admitted.put(asyncio.run(main()))


def test_redis_processes_share_one_limit(prefix: str) -> None:
    ctx = multiprocessing.get_context("spawn")
    start, admitted = ctx.Event(), ctx.Queue()
    workers = [ctx.Process(target=_hammer, args=(prefix, 40, start, admitted)) for _ in range(4)]
    for worker in workers:
        worker.start()
    # Released together so they really race. 160 attempts usually take far less than the 1.2 s one
    # refill needs; on a loaded machine the bucket may refill a few, and those may be admitted too.
    t0 = time.monotonic()
    start.set()
    counts = [admitted.get(timeout=30) for _ in workers]
    refilled = math.floor((time.monotonic() - t0) * 50 / 60)
    for worker in workers:
        worker.join(timeout=10)
        assert worker.exitcode == 0
    # Each worker tries only 40 times, so reaching 50 needs admissions from several of them.
    assert 50 <= sum(counts) <= 50 + refilled


# --- Headers ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("result", "expected"),
    [
        (RateLimitResult(allowed=True), {}),
        (
            RateLimitResult(
                allowed=True,
                requests=LimitUsage(limit=60, remaining=59, reset_s=1.0),
                tokens=LimitUsage(limit=150000, remaining=149000, reset_s=0.4),
            ),
            {
                "x-ratelimit-limit-requests": "60",
                "x-ratelimit-remaining-requests": "59",
                "x-ratelimit-reset-requests": "1s",
                "x-ratelimit-limit-tokens": "150000",
                "x-ratelimit-remaining-tokens": "149000",
                "x-ratelimit-reset-tokens": "400ms",
            },
        ),
        (
            RateLimitResult(
                allowed=False,
                denied_by="requests",
                retry_after_s=20.2,
                requests=LimitUsage(limit=3, remaining=0, reset_s=60.0),
            ),
            {
                "x-ratelimit-limit-requests": "3",
                "x-ratelimit-remaining-requests": "0",
                "x-ratelimit-reset-requests": "1m0s",
                "retry-after": "21",
            },
        ),
        (RateLimitResult(allowed=False, denied_by="concurrency", retry_after_s=0.2), {"retry-after": "1"}),
        (RateLimitResult(allowed=False, denied_by="tokens", retry_after_s=math.inf), {}),
        (
            RateLimitResult(allowed=True, tokens=LimitUsage(limit=10, remaining=0, reset_s=90.5)),
            {
                "x-ratelimit-limit-tokens": "10",
                "x-ratelimit-remaining-tokens": "0",
                "x-ratelimit-reset-tokens": "1m30.5s",
            },
        ),
    ],
)
def test_headers(result: RateLimitResult, expected: dict[str, str]) -> None:
    assert result.headers() == expected
