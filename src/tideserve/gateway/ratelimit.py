"""Rate limits per key and per service: requests/min, tokens/min, concurrent requests.

A request is admitted against several scopes at once (typically its key and its service), all or
nothing: a request denied by its service must not use up its key's budget. Tokens are charged at
admission as prompt tokens + max_tokens (the most it can cost) and corrected with `charge(delta)`
once the actual usage is known; a bucket may go negative so that under-estimates are paid back by
later waiting instead of being forgiven.

Two backends share one async interface: `LocalLimiter` (one process) and `RedisLimiter` (N gateway
replicas sharing one Redis). The Redis one uses `redis.asyncio` because the gateway serves from an
event loop that a blocking client would stall.
"""

from __future__ import annotations

import math
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

from redis.asyncio import Redis
from redis.commands.core import AsyncScript

LimitKind = Literal["requests", "tokens", "concurrency"]

# A concurrency denial frees up when some request ends, which no bucket can predict.
_CONCURRENCY_RETRY_S = 1.0


@dataclass
class TokenBucket:
    """Holds up to `capacity`, refills continuously at `refill_per_s`, starts full."""

    capacity: float
    refill_per_s: float
    level: float = field(init=False)
    updated_at: float | None = None

    def __post_init__(self) -> None:
        self.level = self.capacity

    def _refill(self, now: float) -> None:
        if self.updated_at is not None:
            # A clock that steps back must not drain the bucket.
            elapsed = max(0.0, now - self.updated_at)
            self.level = min(self.capacity, self.level + elapsed * self.refill_per_s)
        self.updated_at = now if self.updated_at is None else max(self.updated_at, now)

    def wait_time(self, amount: float, now: float) -> float:
        """Seconds until `amount` can be taken: 0 if now, inf if it exceeds the capacity."""
        self._refill(now)
        if amount > self.capacity:
            return math.inf
        return max(0.0, (amount - self.level) / self.refill_per_s)

    def try_take(self, amount: float, now: float) -> tuple[bool, float]:
        wait = self.wait_time(amount, now)
        if wait > 0:
            return False, wait
        self.level -= amount
        return True, 0.0

    def adjust(self, delta: float, now: float) -> None:
        """Take `delta` more (or give back `-delta`) without a check: usage already happened."""
        self._refill(now)
        self.level = min(self.capacity, self.level - delta)


@dataclass(frozen=True)
class Limits:
    """None means unlimited; to block a key, revoke it rather than set a limit of 0."""

    requests_per_min: int | None = None
    tokens_per_min: int | None = None
    max_concurrent: int | None = None

    def __post_init__(self) -> None:
        for value in (self.requests_per_min, self.tokens_per_min, self.max_concurrent):
            if value is not None and value <= 0:
                raise ValueError("limits must be positive (or None for unlimited)")


@dataclass(frozen=True)
class LimitScope:
    """A named budget, e.g. `key:<key id>` or `service:<name>`."""

    name: str
    limits: Limits


@dataclass(frozen=True)
class LimitUsage:
    """One bucket's state after a check, for the `x-ratelimit-*` headers."""

    limit: int
    remaining: int
    reset_s: float


@dataclass(frozen=True)
class RateLimitResult:
    allowed: bool
    denied_by: LimitKind | None = None
    denied_scope: str | None = None
    retry_after_s: float = 0.0
    # The scope closest to exhaustion, per kind: that is the budget a client must pace itself to.
    requests: LimitUsage | None = None
    tokens: LimitUsage | None = None
    # Identifies the concurrency slots this admission holds; pass it to `release`.
    lease: str = ""

    def headers(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for kind, usage in (("requests", self.requests), ("tokens", self.tokens)):
            if usage is not None:
                out[f"x-ratelimit-limit-{kind}"] = str(usage.limit)
                out[f"x-ratelimit-remaining-{kind}"] = str(usage.remaining)
                out[f"x-ratelimit-reset-{kind}"] = _duration(usage.reset_s)
        # An infinite wait (a request larger than the whole token budget) has no honest Retry-After.
        if not self.allowed and math.isfinite(self.retry_after_s):
            # HTTP allows only whole seconds; rounding down would invite a retry that fails again.
            out["retry-after"] = str(max(1, math.ceil(self.retry_after_s)))
        return out


def _duration(seconds: float) -> str:
    """OpenAI's style: `1s`, `6m0s`, `250ms`."""
    if seconds < 1:
        return f"{round(seconds * 1000)}ms"
    minutes, secs = divmod(seconds, 60)
    secs_text = f"{secs:.3f}".rstrip("0").rstrip(".")
    return f"{int(minutes)}m{secs_text}s" if minutes else f"{secs_text}s"


@dataclass(frozen=True)
class _Check:
    """One limit's verdict inside one scope; both backends produce these, `_combine` reads them."""

    scope: str
    kind: LimitKind
    wait_s: float
    usage: LimitUsage | None


def _combine(checks: Sequence[_Check], lease: str) -> RateLimitResult:
    denials = [c for c in checks if c.wait_s > 0]
    requests = _tightest(c.usage for c in checks if c.kind == "requests")
    tokens = _tightest(c.usage for c in checks if c.kind == "tokens")
    if not denials:
        return RateLimitResult(allowed=True, requests=requests, tokens=tokens, lease=lease)
    # The request fits only once every denying limit has room, so the longest wait is the honest one.
    worst = max(denials, key=lambda c: c.wait_s)
    return RateLimitResult(
        allowed=False,
        denied_by=worst.kind,
        denied_scope=worst.scope,
        retry_after_s=worst.wait_s,
        requests=requests,
        tokens=tokens,
    )


def _tightest(usages: Iterable[LimitUsage | None]) -> LimitUsage | None:
    present = [u for u in usages if u is not None]
    return min(present, key=lambda u: u.remaining, default=None)


class Limiter(Protocol):
    async def acquire(self, scopes: Sequence[LimitScope], tokens: int) -> RateLimitResult:
        """Admit one request costing `tokens` against all scopes, or none. When allowed, the
        request holds a concurrency slot in each scope until `release`."""
        ...

    async def charge(self, scopes: Sequence[LimitScope], delta: int) -> None:
        """Correct the token charge once usage is known: negative `delta` refunds."""
        ...

    async def release(self, scopes: Sequence[LimitScope], lease: str) -> None: ...


@dataclass
class _LocalScope:
    limits: Limits
    requests: TokenBucket | None
    tokens: TokenBucket | None
    in_flight: int = 0


@dataclass
class LocalLimiter:
    """In-process limits; `clock` is injectable so tests control time."""

    clock: Callable[[], float] = time.monotonic
    _scopes: dict[str, _LocalScope] = field(default_factory=dict)

    def _scope(self, scope: LimitScope) -> _LocalScope:
        state = self._scopes.get(scope.name)
        # Limits edited on a key take effect at once; the fresh buckets start full.
        if state is None or state.limits != scope.limits:
            limits = scope.limits
            state = _LocalScope(
                limits=limits,
                requests=_per_min_bucket(limits.requests_per_min),
                tokens=_per_min_bucket(limits.tokens_per_min),
                in_flight=state.in_flight if state else 0,
            )
            self._scopes[scope.name] = state
        return state

    async def acquire(self, scopes: Sequence[LimitScope], tokens: int) -> RateLimitResult:
        now = self.clock()
        states = [(s, self._scope(s)) for s in scopes]
        checks: list[_Check] = []
        for scope, state in states:
            buckets: tuple[tuple[LimitKind, TokenBucket | None, int], ...] = (
                ("requests", state.requests, 1),
                ("tokens", state.tokens, tokens),
            )
            for kind, bucket, cost in buckets:
                if bucket is not None:
                    wait = bucket.wait_time(cost, now)
                    # Reported as it will be once admitted, as OpenAI does; the Redis script agrees.
                    left = bucket.level - (cost if wait == 0 else 0)
                    reset = (bucket.capacity - left) / bucket.refill_per_s
                    usage = LimitUsage(int(bucket.capacity), max(0, math.floor(left)), reset)
                    checks.append(_Check(scope.name, kind, wait, usage))
            cap = scope.limits.max_concurrent
            if cap is not None:
                wait = 0.0 if state.in_flight < cap else _CONCURRENCY_RETRY_S
                checks.append(_Check(scope.name, "concurrency", wait, None))
        result = _combine(checks, lease=uuid.uuid4().hex)
        if result.allowed:
            for _, state in states:
                if state.requests is not None:
                    state.requests.try_take(1, now)
                if state.tokens is not None:
                    state.tokens.try_take(tokens, now)
                state.in_flight += 1
        return result

    async def charge(self, scopes: Sequence[LimitScope], delta: int) -> None:
        now = self.clock()
        for scope in scopes:
            bucket = self._scope(scope).tokens
            if bucket is not None:
                bucket.adjust(delta, now)

    async def release(self, scopes: Sequence[LimitScope], lease: str) -> None:
        for scope in scopes:
            state = self._scope(scope)
            state.in_flight = max(0, state.in_flight - 1)


def _per_min_bucket(per_min: int | None) -> TokenBucket | None:
    return None if per_min is None else TokenBucket(capacity=per_min, refill_per_s=per_min / 60)


# Shared by the scripts: bucket state lives in a hash {l: level, t: server time of last update}.
# Numbers cross the Lua boundary as strings because Redis truncates Lua numbers to integers.
_LUA_PRELUDE = """
local now_t = redis.call('TIME')
local now = tonumber(now_t[1]) + tonumber(now_t[2]) / 1e6
local function level(key, cap, rate)
  local h = redis.call('HMGET', key, 'l', 't')
  local l, t = tonumber(h[1]), tonumber(h[2])
  if l == nil then return cap end
  return math.min(cap, l + math.max(0, now - t) * rate)
end
local function store(key, l, cap, rate)
  redis.call('HSET', key, 'l', string.format('%.17g', l), 't', string.format('%.17g', now))
  -- Once refilled the bucket equals a missing one, so let Redis drop it then.
  redis.call('PEXPIRE', key, math.ceil((cap - l) / rate * 1000) + 1000)
end
local function fmt(x) return string.format('%.17g', x) end
"""

# KEYS: per scope (requests bucket, tokens bucket, concurrency zset).
# ARGV: cost, lease, lease_ttl_s, then per scope (rpm, tpm, max_concurrent), -1 meaning unlimited.
# Returns: allowed flag, then per scope and kind (requests, tokens, concurrency): wait_s, limit,
# remaining, reset_s.
_ACQUIRE = (
    _LUA_PRELUDE
    + """
local cost = tonumber(ARGV[1])
local lease = ARGV[2]
local lease_ttl = tonumber(ARGV[3])
local n = #KEYS / 3
local out = {}
local ok = true
local levels = {}
for i = 0, n - 1 do
  local rpm = tonumber(ARGV[4 + i * 3])
  local tpm = tonumber(ARGV[5 + i * 3])
  local conc = tonumber(ARGV[6 + i * 3])
  for j, spec in ipairs({{rpm, 1}, {tpm, cost}}) do
    local cap, amount = spec[1], spec[2]
    if cap < 0 then
      table.insert(out, '-1'); table.insert(out, '0'); table.insert(out, '0'); table.insert(out, '0')
    else
      local rate = cap / 60
      local l = level(KEYS[i * 3 + j], cap, rate)
      levels[i * 3 + j] = l
      local wait = 0
      if amount > cap then wait = math.huge elseif amount > l then wait = (amount - l) / rate end
      if wait > 0 then ok = false else l = l - amount end
      table.insert(out, fmt(wait)); table.insert(out, fmt(cap))
      table.insert(out, fmt(math.max(0, math.floor(l)))); table.insert(out, fmt((cap - l) / rate))
    end
  end
  local zkey = KEYS[i * 3 + 3]
  if conc < 0 then
    table.insert(out, '-1')
  else
    -- Leases of crashed replicas expire instead of holding slots forever.
    redis.call('ZREMRANGEBYSCORE', zkey, '-inf', now)
    local wait = 0
    if redis.call('ZCARD', zkey) >= conc then wait = 1; ok = false end
    table.insert(out, fmt(wait))
  end
  table.insert(out, '0'); table.insert(out, '0'); table.insert(out, '0')
end
if ok then
  for i = 0, n - 1 do
    for j, cap in ipairs({tonumber(ARGV[4 + i * 3]), tonumber(ARGV[5 + i * 3])}) do
      if cap >= 0 then
        local amount = 1
        if j == 2 then amount = cost end
        store(KEYS[i * 3 + j], levels[i * 3 + j] - amount, cap, cap / 60)
      end
    end
    if tonumber(ARGV[6 + i * 3]) >= 0 then
      redis.call('ZADD', KEYS[i * 3 + 3], now + lease_ttl, lease)
      redis.call('EXPIRE', KEYS[i * 3 + 3], lease_ttl + 1)
    end
  end
end
table.insert(out, 1, ok and '1' or '0')
return out
"""
)

# KEYS: tokens buckets. ARGV: delta, then per key its tokens/min.
_CHARGE = (
    _LUA_PRELUDE
    + """
local delta = tonumber(ARGV[1])
for i, key in ipairs(KEYS) do
  local cap = tonumber(ARGV[1 + i])
  local rate = cap / 60
  store(key, math.min(cap, level(key, cap, rate) - delta), cap, rate)
end
return 1
"""
)


@dataclass
class RedisLimiter:
    """Limits shared by every gateway replica through one Redis (not Redis Cluster: one admission
    touches the keys of several scopes, which a cluster would spread over slots).

    Each call is one Lua script, so a check and its take cannot interleave with another replica's;
    the time comes from the Redis server so replicas with skewed clocks still agree.
    """

    client: Redis
    prefix: str = "tideserve:rl:"
    # Longer than any request may run: it only bounds how long a crashed replica's slots linger.
    lease_ttl_s: int = 3600
    _acquire: AsyncScript = field(init=False)
    _charge: AsyncScript = field(init=False)

    def __post_init__(self) -> None:
        # register_script runs EVALSHA and loads the script only when Redis answers NOSCRIPT.
        self._acquire = self.client.register_script(_ACQUIRE)
        self._charge = self.client.register_script(_CHARGE)

    def _key(self, scope: str, kind: str) -> str:
        return f"{self.prefix}{scope}:{kind}"

    async def acquire(self, scopes: Sequence[LimitScope], tokens: int) -> RateLimitResult:
        lease = uuid.uuid4().hex
        keys: list[str] = []
        args: list[str | int] = [tokens, lease, self.lease_ttl_s]
        for scope in scopes:
            keys += [self._key(scope.name, k) for k in ("requests", "tokens", "concurrency")]
            limits = scope.limits
            args += [_or_unlimited(limits.requests_per_min), _or_unlimited(limits.tokens_per_min)]
            args.append(_or_unlimited(limits.max_concurrent))
        reply = await self._acquire(keys=keys, args=args)
        checks: list[_Check] = []
        kinds: tuple[LimitKind, ...] = ("requests", "tokens", "concurrency")
        values = [float(v) for v in reply[1:]]
        for i, scope in enumerate(scopes):
            for j, kind in enumerate(kinds):
                wait, limit, remaining, reset = values[(i * 3 + j) * 4 : (i * 3 + j) * 4 + 4]
                if wait < 0:
                    continue
                wait_s = _CONCURRENCY_RETRY_S if kind == "concurrency" and wait > 0 else wait
                usage = None if kind == "concurrency" else LimitUsage(int(limit), int(remaining), reset)
                checks.append(_Check(scope.name, kind, wait_s, usage))
        return _combine(checks, lease=lease if reply[0] in (b"1", "1") else "")

    async def charge(self, scopes: Sequence[LimitScope], delta: int) -> None:
        limited = [s for s in scopes if s.limits.tokens_per_min is not None]
        if limited:
            keys = [self._key(s.name, "tokens") for s in limited]
            await self._charge(keys=keys, args=[delta, *(s.limits.tokens_per_min for s in limited)])

    async def release(self, scopes: Sequence[LimitScope], lease: str) -> None:
        if not lease:
            return
        async with self.client.pipeline(transaction=False) as pipe:
            for scope in scopes:
                if scope.limits.max_concurrent is not None:
                    pipe.zrem(self._key(scope.name, "concurrency"), lease)
            await pipe.execute()


def _or_unlimited(value: int | None) -> int:
    return -1 if value is None else value


def limiter_for(redis_url: str | None) -> Limiter:
    """Redis when a URL is given (replicas share limits), else this process's own buckets."""
    if not redis_url:
        return LocalLimiter()
    return RedisLimiter(Redis.from_url(redis_url))
