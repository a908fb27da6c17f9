"""The OpenAI entry point: key → body checks → service → rate limits → revision, pool and policy →
an instance, streamed through chunk by chunk.

The client side is a `Downstream` (our own server in `tideserve gateway`, ASGI inside `tideserve up`);
the engine side is `upstream.py`'s kept-alive connections. With our server, each streamed chunk goes
from the engine's socket to the client's inside one callback.

Every request that got an instance releases it exactly once (`_Lease`), on every path: success,
engine error, timeout, client disconnect; the in-flight counts that `least_requests`, the queue and
draining rely on stay exact."""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import re
import time
import uuid
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from tideserve.api.auth import PRIORITIES as KEY_PRIORITIES
from tideserve.gateway.balancing import (
    POLICIES,
    EndpointState,
    PolicyState,
    RequestInfo,
    index_capacity,
    session_key_of,
)
from tideserve.gateway.breaker import BreakerConfig, BreakerState, CircuitBreaker, backoff_delay
from tideserve.gateway.downstream import AsgiDownstream, ClientGone, Downstream, Headers, Receive, Scope, Send
from tideserve.gateway.endpoints import Endpoint, EndpointTable, ServiceRoute
from tideserve.gateway.idempotency import IdempotencyStore, Record, request_fingerprint
from tideserve.gateway.keys import KeyCache, KeyInfo
from tideserve.gateway.openai_api import (
    DEFAULT_MAX_TOKENS,
    GatewayError,
    ParsedRequest,
    error_body,
    parse_request,
)
from tideserve.gateway.queueing import WaitQueue
from tideserve.gateway.ratelimit import Limiter, Limits, LimitScope, LocalLimiter
from tideserve.gateway.routing import (
    ENGINE_PRIORITY,
    candidate_tiers,
    estimate_tokens,
    parse_version,
    priority_rank,
)
from tideserve.gateway.server import Request
from tideserve.gateway.telemetry import GatewayMetrics, RequestRecord
from tideserve.gateway.upstream import (
    UpstreamConnection,
    UpstreamError,
    UpstreamPool,
    UpstreamTimeout,
    request_head,
)

MAX_BODY_BYTES = 16 << 20
MAX_ATTEMPTS = 3
CONNECT_TIMEOUT_S = 5.0
UNROUTE_S = 10.0  # how long a draining instance is skipped before the endpoint table must know it
BREAKER_VALUES = {BreakerState.CLOSED: 0, BreakerState.OPEN: 1, BreakerState.HALF_OPEN: 2}
GATEWAY_PATHS = ("/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/models", "/metrics")
_KINDS = {"/v1/chat/completions": "chat", "/v1/completions": "completions", "/v1/embeddings": "embeddings"}
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:/+=-]{1,128}")
# A session id (from a header or the body's `user`) goes on to the engine, for its request log, only
# when it is safe as a header value: visible ASCII, so a `user` field cannot inject header lines.
_SESSION_HEADER = re.compile(r"[!-~]{1,256}")
_JSON = (b"content-type", b"application/json")
# Engine response headers worth passing on; the rest (server, date, framing) are the server's own.
_PASS_HEADERS = {b"content-type", b"cache-control"}
_USAGE = re.compile(rb'"usage":\s*\{')


@dataclass
class _Call:
    """One request on its way through."""

    down: Downstream
    path: str
    headers: dict[str, str]
    record: RequestRecord
    key: KeyInfo | None = None
    response_headers: Headers | None = None

    @property
    def disconnected(self) -> asyncio.Future[None]:
        return self.down.disconnected

    def extra_headers(self) -> Headers:
        return [(b"x-request-id", self.record.request_id.encode()), *(self.response_headers or [])]


@dataclass(frozen=True)
class _Plan:
    """Where a request may go and how it is sent, decided once before the first attempt."""

    route: ServiceRoute
    req: ParsedRequest
    raw: bytes  # the body as sent upstream
    info: RequestInfo
    rank: int  # priority class, 0 = high
    pin: int | None  # X-Model-Version
    prompt_tokens: int  # estimated, for pools and the rate-limit charge


class _Lease:
    """One request held by an instance: released exactly once, however the request ends."""

    def __init__(self, gateway: Gateway, service: str, endpoint: Endpoint) -> None:
        self.gateway, self.service, self.endpoint, self.open = gateway, service, endpoint, True
        gateway.inflight[endpoint.instance_id] += 1
        gateway.metrics.inflight.labels(service).inc()

    def release(self) -> None:
        if self.open:
            self.open = False
            self.gateway.inflight[self.endpoint.instance_id] -= 1
            self.gateway.metrics.inflight.labels(self.service).dec()
            self.gateway.queue(self.service).wake_one()


# An SSE event carrying generated output (text, reasoning or a tool call). Engines send a role-only
# event before they generate, and a finish event after: neither is a token, so the first byte is not
# the first token and the number of events is not the number of tokens.
_OUTPUT = re.compile(rb'"(?:content|reasoning_content|text)"\s*:\s*"[^"]|"tool_calls"\s*:\s*\[')


class _StreamTap:
    """What the gateway notes of a streamed body on its way through: when the first generated output
    came, how many events carried output, and the last two chunks (where the usage event is)."""

    __slots__ = ("first_at", "last", "outputs", "prev", "write")

    def __init__(self, write: Callable[[bytes], None]) -> None:
        self.write = write
        self.first_at: float | None = None
        self.outputs = 0
        self.prev = self.last = b""

    def __call__(self, chunk: bytes) -> None:
        if found := len(_OUTPUT.findall(chunk)):
            if self.first_at is None:
                self.first_at = time.perf_counter()
            self.outputs += found
        self.prev, self.last = self.last, chunk
        self.write(chunk)


class Gateway:
    def __init__(
        self,
        table: EndpointTable,
        keys: KeyCache,
        limiter: Limiter | None = None,
        *,
        metrics: GatewayMetrics | None = None,
        breaker: BreakerConfig | None = None,
        max_body_bytes: int = MAX_BODY_BYTES,
        seed: int | None = None,
    ) -> None:
        self.table, self.keys = table, keys
        self.limiter: Limiter = limiter or LocalLimiter()
        self.metrics = metrics or GatewayMetrics()
        self.breaker_config = breaker or BreakerConfig()
        self.max_body_bytes = max_body_bytes
        self.rng = random.Random(seed)
        self.inflight: dict[str, int] = defaultdict(int)
        self.breakers: dict[str, CircuitBreaker] = {}
        self.policy_states: dict[str, PolicyState] = {}
        self.queues: dict[str, WaitQueue] = {}
        self.idempotency = IdempotencyStore()
        self.pool = UpstreamPool()
        # For the autoscaler: when each service last got a request, and who to tell when one waits
        # (a service scaled to zero starts an instance at once rather than at the next round).
        self.last_request_at: dict[str, float] = {}
        self.on_wait: Callable[[str], None] | None = None
        # Instances the reconciler began draining, until when they are skipped (time.monotonic()).
        self.unrouted: dict[str, float] = {}
        table.listeners.append(self._table_changed)

    # --- lifecycle --------------------------------------------------------------------------------

    def open_requests(self, instance_id: str) -> int:
        return self.inflight.get(instance_id, 0)

    def unroute(self, instance_id: str) -> None:
        """The reconciler (another thread) is draining this instance: choose it no more, from now on
        rather than from the table's next read of the store, up to a second later, during which new
        requests would still reach an instance that is on its way out. The skip expires: by then the
        store says Draining (or, if that write failed, the instance rightly serves again)."""
        now = time.monotonic()
        # Replaced whole, never mutated: the event loop reads it while this thread writes.
        self.unrouted = {i: t for i, t in self.unrouted.items() if t > now} | {instance_id: now + UNROUTE_S}

    async def start(self) -> None:
        await self.keys.start()
        await self.table.start()

    async def close(self) -> None:
        await self.table.close()
        await self.keys.close()
        self.pool.close()

    def queue(self, service: str) -> WaitQueue:
        q = self.queues.get(service)
        if q is None:
            q = self.queues[service] = WaitQueue()
        return q

    def _table_changed(self) -> None:
        live = {e.instance_id for r in self.table.services.values() for e in r.endpoints}
        for instance_id in [i for i in self.breakers if i not in live]:
            del self.breakers[instance_id]  # a restarted instance gets a new id and a fresh breaker
            with contextlib.suppress(KeyError):  # never scraped while it existed
                self.metrics.breaker.remove(instance_id)
        for service in list(self.policy_states):
            route = self.table.route(service)
            if route is None:
                del self.policy_states[service]
            else:
                self.policy_states[service].prune({e.instance_id for e in route.endpoints})
        for q in self.queues.values():
            q.wake_all()

    # --- entry points -----------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """ASGI, for `tideserve up` (which serves the control plane on the same port)."""
        if scope["type"] != "http":
            return
        down = AsgiDownstream(receive, send)
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        try:
            body = await down.read_body(self.max_body_bytes) if scope["method"] == "POST" else b""
            await self.serve(Request(scope["method"], scope["path"], headers, body, True), down)
        except ClientGone:
            pass
        finally:
            down.close()

    async def serve(self, request: Request, down: Downstream) -> None:
        path, method = request.path, request.method
        kind = _KINDS.get(path)
        if kind is not None and method == "POST":
            await self.handle(kind, request, down)
        elif path == "/v1/models" and method == "GET":
            await self.models(request, down)
        elif path == "/metrics" and method == "GET":
            now = time.monotonic()
            for instance_id, breaker in self.breakers.items():
                self.metrics.breaker.labels(instance_id).set(BREAKER_VALUES[breaker.state(now)])
            body = generate_latest(self.metrics.registry)
            await down.respond(200, [(b"content-type", CONTENT_TYPE_LATEST.encode())], body)
        elif path == "/health" and method == "GET":
            await down.respond(200, [_JSON], b'{"status":"ok"}')
        else:
            known = kind is not None or path in ("/v1/models", "/metrics", "/health")
            status, verb = (405, f"{method} is not allowed on {path}") if known else (404, f"no route {path}")
            await down.respond(status, [_JSON], error_body(status, verb, "not_found"))

    async def models(self, request: Request, down: Downstream) -> None:
        try:
            key = await self.keys.authenticate(request.headers.get("authorization"))
        except GatewayError as e:
            await down.respond(e.status, [_JSON], e.body())
            return
        data = [
            {"id": r.name, "object": "model", "created": r.created, "owned_by": "tideserve", "root": r.model}
            for r in sorted(self.table.services.values(), key=lambda r: r.name)
            if key is None or key.allows(r.name)
        ]
        await down.respond(200, [_JSON], json.dumps({"object": "list", "data": data}).encode())

    # --- one request ------------------------------------------------------------------------------

    async def handle(self, kind: str, request: Request, down: Downstream) -> None:
        headers = request.headers
        given = headers.get("x-request-id", "")
        request_id = given if _REQUEST_ID.fullmatch(given) else uuid.uuid4().hex
        record = RequestRecord(request_id, request.path, time.perf_counter())
        call = _Call(down, request.path, headers, record)
        try:
            call.key = await self.keys.authenticate(headers.get("authorization"))
            if request.body is None:
                raise GatewayError(
                    413,
                    f"request body exceeds {self.max_body_bytes >> 20} MiB: send a shorter prompt",
                    "request_too_large",
                )
            req = parse_request(kind, request.body)
            await self._route(call, req, request.body)
        except GatewayError as e:
            record.status, record.error = e.status, e.code
            hdrs = [_JSON, *call.extra_headers(), *((k.encode(), v.encode()) for k, v in e.headers.items())]
            await down.respond(e.status, hdrs, e.body())
        except ClientGone:
            record.status, record.error = 499, "client_disconnected"
        finally:
            record.finish(self.metrics, time.perf_counter())

    async def _route(self, call: _Call, req: ParsedRequest, raw: bytes) -> None:
        rec, key = call.record, call.key
        route = self.table.route(req.model)
        if route is None:
            await self.table.sync()
            route = self.table.route(req.model)
        if route is None:
            raise GatewayError(
                404,
                f"the model {req.model!r} does not exist: list services with GET /v1/models",
                "model_not_found",
                "model",
            )
        if key is not None and not key.allows(route.name):
            raise GatewayError(
                403,
                f"key {key.name!r} may not use service {route.name!r}: ask an admin to add it "
                f"(tideserve keys update {key.name} --service {route.name})",
                "service_not_allowed",
                "model",
            )
        rec.service, rec.model, rec.key = route.name, route.model, key.name if key else ""
        rec.stream = req.stream
        rec.session_id = session_key_of(call.headers, req.body)
        pin = parse_version(call.headers.get("x-model-version"))
        rank = priority_rank(call.headers.get("x-priority"), key.priority if key else "normal")
        rec.priority = KEY_PRIORITIES[rank]

        idem_key = call.headers.get("idempotency-key")
        record: Record | None = None
        if idem_key is not None:
            record, new = self.idempotency.claim(
                key.id if key else 0, idem_key, request_fingerprint(rec.path, raw)
            )
            if not new:
                rec.resumed = True
                await _replay(call, record)
                return

        prompt_tokens = estimate_tokens(req.prompt_text)
        charged = prompt_tokens + (0 if req.kind == "embeddings" else req.max_tokens or DEFAULT_MAX_TOKENS)
        scopes = _limit_scopes(key, route)
        lease_id = ""
        if scopes:
            verdict = await self.limiter.acquire(scopes, charged)
            if not verdict.allowed:
                if idem_key is not None:  # refused before anything ran: a repeat starts anew
                    self.idempotency.discard(key.id if key else 0, idem_key)
                which = "service" if (verdict.denied_scope or "").startswith("service:") else "key"
                owner = route.name if which == "service" else (key.name if key else "")
                per = (
                    "concurrent requests"
                    if verdict.denied_by == "concurrency"
                    else f"{verdict.denied_by}/min"
                )
                raise GatewayError(
                    429,
                    f"rate limit of {which} {owner!r} reached ({per}): retry after the Retry-After header's "
                    "seconds, or ask an admin for a higher limit",
                    "rate_limit_exceeded",
                    headers=verdict.headers(),
                )
            lease_id = verdict.lease
            call.response_headers = [(k.encode(), v.encode()) for k, v in verdict.headers().items()]
        try:
            body = req.body
            if rank != 1 or "priority" in body:  # the key's class wins over a priority in the body
                body = {**body, "priority": ENGINE_PRIORITY[rank]}
                raw = json.dumps(body).encode()
            info = RequestInfo(req.prompt_text, rec.session_id)
            plan = _Plan(route, req, raw, info, rank, pin, prompt_tokens)
            if record is None or idem_key is None:  # both set or neither; this form types
                await self._forward(call, plan, None)
            else:
                await self._forward_recorded(call, plan, record, idem_key)
        finally:
            if scopes:
                used = (rec.prompt_tokens or prompt_tokens) + (rec.completion_tokens or 0)
                if used != charged:
                    await self.limiter.charge(scopes, used - charged)
                await self.limiter.release(scopes, lease_id)

    async def _forward_recorded(self, call: _Call, plan: _Plan, record: Record, idem_key: str) -> None:
        """Idempotent: the upstream response goes into the record, which the client follows like any
        repeat would; if the client leaves, the generation still completes for the next repeat."""

        async def produce() -> None:
            try:
                await self._forward(call, plan, record)
            except (GatewayError, ClientGone) as e:
                if not record.started.is_set():
                    # Nothing was generated: record the refusal for this client, keep no record.
                    self.idempotency.discard(call.key.id if call.key else 0, idem_key)
                    if isinstance(e, GatewayError):
                        extra = [(k.encode(), v.encode()) for k, v in e.headers.items()]
                        record.start(e.status, [_JSON, *call.extra_headers(), *extra])
                        record.append(e.body())
                        call.record.status, call.record.error = e.status, e.code
            finally:
                record.finish()

        producer = asyncio.create_task(produce())
        try:
            await _replay(call, record)
        finally:
            await producer

    # --- choosing an instance ----------------------------------------------------------------------

    def _pick(self, plan: _Plan, tried: set[str]) -> Endpoint | None:
        service, info = plan.route.name, plan.info
        route = self.table.route(service)  # the latest table, not the plan's snapshot
        if route is None:
            return None
        cfg, now = route.config, time.monotonic()
        unrouted = self.unrouted
        state = self.policy_states.get(service)
        if state is None:
            state = self.policy_states[service] = PolicyState()
        policy = POLICIES.get(cfg.policy, POLICIES["prefix_aware"])
        tiers = candidate_tiers(route.endpoints, route.revision, cfg, plan.pin, plan.prompt_tokens, self.rng)
        for tier in tiers:
            by_id: dict[str, Endpoint] = {}
            states: list[EndpointState] = []
            for e in tier:
                inflight = self.inflight[e.instance_id]
                if e.instance_id in tried or (cfg.max_inflight is not None and inflight >= cfg.max_inflight):
                    continue
                if unrouted.get(e.instance_id, 0.0) > now:
                    continue
                breaker = self.breakers.get(e.instance_id)
                if breaker is not None and breaker.state(now) is BreakerState.OPEN:
                    continue
                load = e.load
                by_id[e.instance_id] = e
                states.append(
                    EndpointState(
                        e.instance_id,
                        True,
                        False,
                        inflight,
                        int(load.running) if load else 0,
                        int(load.waiting) if load else 0,
                        load.kv_usage if load else 0.0,
                        e.scraped_at,
                    )
                )
            while states:
                chosen = policy(states, info, state, self.rng, now)
                if chosen is None:
                    break
                breaker = self.breakers.get(chosen)
                if breaker is None or breaker.allow(now):  # half-open: only its probe quota passes
                    state.note(chosen, now)
                    if cfg.policy == "prefix_aware":
                        load = by_id[chosen].load
                        capacity = index_capacity(load.cache_tokens) if load is not None else None
                        state.record(chosen, info.prompt_text, capacity, now)
                    return by_id[chosen]
                states = [s for s in states if s.id != chosen]
        return None

    async def _acquire(self, call: _Call, plan: _Plan, tried: set[str]) -> Endpoint:
        """An instance for the request now, or after waiting in the service's queue."""
        route, rank = plan.route, plan.rank
        name, cfg = route.name, route.config
        self.last_request_at[name] = time.time()
        q = self.queue(name)
        best = q.best_rank()
        # Nobody may overtake a waiter of equal or higher priority.
        if best is None or rank < best:
            chosen = self._pick(plan, tried)
            if chosen is not None:
                return chosen
        deadline = time.monotonic() + cfg.queue_timeout_s
        seq: int | None = None
        while True:
            remaining = deadline - time.monotonic()
            if len(q) >= cfg.queue_size or remaining <= 0:
                raise self._unavailable(route, full=remaining > 0)
            seq, waiter = q.push(rank, seq)
            if self.on_wait is not None:
                self.on_wait(name)
            gauge = self.metrics.queued.labels(name)
            gauge.inc()
            started = time.perf_counter()
            try:
                await asyncio.wait(
                    {waiter, call.disconnected}, timeout=remaining, return_when=asyncio.FIRST_COMPLETED
                )
            finally:
                gauge.dec()
                call.record.queued_s += time.perf_counter() - started
                if not waiter.done():
                    waiter.cancel()
            if call.disconnected.done():
                raise ClientGone
            chosen = self._pick(plan, tried)
            if chosen is not None:
                return chosen

    def _unavailable(self, route: ServiceRoute, full: bool) -> GatewayError:
        now = time.monotonic()
        waits = [
            b.retry_after(now) for e in route.endpoints if (b := self.breakers.get(e.instance_id)) is not None
        ]
        retry = max(1, int(min(waits))) if waits and min(waits) > 0 else 2
        if full:
            why = f"{route.config.queue_size} requests are already waiting"
        elif not route.endpoints:
            why = "no instance is ready yet (starting or scaled to zero)"
        else:
            why = f"no instance could take it within {route.config.queue_timeout_s:g} s"
        return GatewayError(
            503,
            f"service {route.name!r} is unavailable: {why}; retry after {retry} s",
            "service_unavailable",
            headers={"retry-after": str(retry)},
        )

    def _breaker(self, instance_id: str) -> CircuitBreaker:
        b = self.breakers.get(instance_id)
        if b is None:
            b = self.breakers[instance_id] = CircuitBreaker(self.breaker_config)
        return b

    # --- talking to the instance ------------------------------------------------------------------

    async def _forward(self, call: _Call, plan: _Plan, record: Record | None) -> None:
        rec, route, req, raw = call.record, plan.route, plan.req, plan.raw
        extra = [("content-type", "application/json"), ("x-request-id", rec.request_id)]
        if rec.session_id is not None and _SESSION_HEADER.fullmatch(rec.session_id):
            extra.append(("x-session-id", rec.session_id))
        tried: set[str] = set()
        failure = ""
        for attempt in range(MAX_ATTEMPTS):
            if attempt:
                self.metrics.retries.labels(route.name).inc()
                await asyncio.sleep(backoff_delay(attempt - 1, base=0.05, cap=1.0, rng=self.rng))
            endpoint = await self._acquire(call, plan, tried)
            tried.add(endpoint.instance_id)
            lease = _Lease(self, route.name, endpoint)
            rec.attempts, rec.instance, rec.revision = attempt + 1, endpoint.instance_id, endpoint.revision
            breaker = self._breaker(endpoint.instance_id)
            url = urlsplit(endpoint.url)
            origin = (url.hostname or "127.0.0.1", url.port or 80)
            head = request_head("POST", url.netloc, call.path, extra, len(raw))
            # A client that leaves closes the engine connection, which stops the generation and fails
            # whatever awaits it here. A recorded (idempotent) request keeps generating for a repeat.
            bound: list[UpstreamConnection] = []

            def abort(_: object, bound: list[UpstreamConnection] = bound) -> None:
                for c in bound:
                    c.close()

            if record is None:
                call.disconnected.add_done_callback(abort)
            try:
                try:
                    conn = await self.pool.request(
                        origin, head, raw, CONNECT_TIMEOUT_S, route.config.timeout_s, bound.append
                    )
                except UpstreamError as e:
                    if record is None and call.disconnected.done():
                        raise ClientGone from e
                    breaker.on_failure(time.monotonic())
                    if isinstance(e, UpstreamTimeout):
                        raise GatewayError(
                            504,
                            f"instance {endpoint.instance_id} did not answer within "
                            f"{route.config.timeout_s:g} s (routing.requestTimeoutSeconds)",
                            "upstream_timeout",
                        ) from e
                    # Nothing reached the client yet, so another instance may take it.
                    failure = str(e)
                    continue
                if conn.status >= 500 and attempt + 1 < MAX_ATTEMPTS:
                    breaker.on_failure(time.monotonic())
                    failure = f"HTTP {conn.status}"
                    conn.close()
                    continue
                if conn.status == 404 and req.kind == "embeddings":
                    conn.close()
                    breaker.on_success(time.monotonic())
                    raise GatewayError(
                        404,
                        f"service {route.name!r} does not serve embeddings: its engine has no "
                        "/v1/embeddings; deploy an embedding model for them",
                        "unsupported_endpoint",
                        "model",
                    )
                await self._relay(call, conn, req, breaker, record, endpoint)
                return
            finally:
                call.disconnected.remove_done_callback(abort)
                lease.release()
        raise GatewayError(
            502,
            f"service {route.name!r}: {len(tried)} attempt(s) failed ({failure}); retry later",
            "upstream_failed",
            headers={"retry-after": "1"},
        )

    async def _relay(
        self,
        call: _Call,
        conn: UpstreamConnection,
        req: ParsedRequest,
        breaker: CircuitBreaker,
        record: Record | None,
        endpoint: Endpoint,
    ) -> None:
        rec, down = call.record, call.down
        rec.status = conn.status
        headers = [(k.lower(), v) for k, v in conn.headers if k.lower() in _PASS_HEADERS]
        headers += [
            *call.extra_headers(),
            (b"x-tideserve-instance", endpoint.instance_id.encode()),
            (b"x-tideserve-revision", str(endpoint.revision).encode()),
        ]
        ok, started = True, False
        try:
            if not (req.stream and conn.status == 200):
                body = await conn.read_all()
                rec.ttft_s = time.perf_counter() - rec.started
                _usage_into(rec, body, sse=False)
                if record is not None:
                    record.start(conn.status, headers)
                    record.append(body)
                else:
                    await down.respond(conn.status, headers, body)
                return
            if record is not None:
                record.start(conn.status, headers)
                tap = _StreamTap(record.append)
                conn.attach(tap)
                await conn.done
            else:
                await down.start(conn.status, headers)
                started = True
                tap = await self._pipe(call, conn)
            if record is None:
                await down.end()
            rec.ttft_s = None if tap.first_at is None else tap.first_at - rec.started
            if not _usage_into(rec, tap.prev + tap.last, sse=True):
                # No usage event (the client did not ask): each output event carries about one token.
                rec.completion_tokens = tap.outputs
        except UpstreamError as e:
            if record is None and call.disconnected.done():
                raise ClientGone from e  # we closed it: a client leaving says nothing about the engine
            ok = False
            rec.error = "upstream_broke"
            timeout = isinstance(e, UpstreamTimeout)
            error = GatewayError(
                504 if timeout else 502,
                f"instance {endpoint.instance_id} {'went silent' if timeout else 'broke off'} "
                f"mid-response ({e}); retry",
                "upstream_timeout" if timeout else "upstream_failed",
            )
            if started or (record is not None and record.started.is_set()):
                # The event stream already started: end it with an error event, as engines do, so
                # the client learns the answer was cut short rather than seeing it merely stop. The
                # blank lines first close whatever event the engine was cut off in.
                event = b"\n\ndata: " + error.body() + b"\n\ndata: [DONE]\n\n"
                if record is not None:
                    record.append(event)
                else:
                    await down.write(event)
                    await down.end()
            else:
                raise error from e
        finally:
            conn.release()  # closes unless the response ended cleanly: the engine stops generating
            if record is not None:
                record.finish()
            now = time.monotonic()
            if ok and conn.status < 500:
                breaker.on_success(now)
            else:
                breaker.on_failure(now)

    async def _pipe(self, call: _Call, conn: UpstreamConnection) -> _StreamTap:
        """Stream the engine's body to the client until it ends or the client leaves."""
        down = call.down
        if down.write_nowait is not None:
            tap = _StreamTap(down.write_nowait)
            transport = conn.transport
            if transport is not None and hasattr(down, "on_pause"):
                # A slow client holds the engine's connection back instead of growing our buffers.
                down.on_pause, down.on_resume = transport.pause_reading, transport.resume_reading
            try:
                conn.attach(tap)
                down.flush()
                conn.after_read = down.flush
                await conn.done
            finally:
                conn.after_read = None
                if hasattr(down, "on_pause"):
                    down.on_pause = down.on_resume = None
            return tap
        # ASGI: chunks queue up in the callback and a loop awaits each send.
        chunks: list[bytes] = []
        arrived = asyncio.Event()

        def collect(chunk: bytes) -> None:
            chunks.append(chunk)
            arrived.set()

        tap = _StreamTap(collect)
        conn.attach(tap)
        while True:
            if not chunks:
                if conn.done.done():
                    conn.done.result()  # raises UpstreamError when the engine broke off
                    return tap
                waiter = asyncio.ensure_future(arrived.wait())
                await asyncio.wait({waiter, conn.done}, return_when=asyncio.FIRST_COMPLETED)
                waiter.cancel()
                arrived.clear()
                continue
            batch, chunks[:] = b"".join(chunks), []
            await down.write(batch)
            if call.disconnected.done():
                raise ClientGone


# --- helpers ----------------------------------------------------------------------------------------


def _limit_scopes(key: KeyInfo | None, route: ServiceRoute) -> list[LimitScope]:
    scopes = []
    if key is not None and key.limits != _NO_LIMITS:
        scopes.append(LimitScope(f"key:{key.digest[:24]}", key.limits))
    if route.config.limits != _NO_LIMITS:
        # The creation time tells apart a service re-created under the same name (or another store's).
        scopes.append(LimitScope(f"service:{route.name}:{route.created}", route.config.limits))
    return scopes


_NO_LIMITS = Limits()


def _usage_into(rec: RequestRecord, data: bytes, sse: bool) -> bool:
    """Token counts from a JSON body's `usage`, or from the last SSE event that carries one."""
    try:
        if not sse:
            usage = json.loads(data).get("usage")
        else:
            last = None
            for last in _USAGE.finditer(data):  # noqa: B007 - the last match is the one wanted
                pass
            if last is None:
                return False
            start = data.rfind(b"data:", 0, last.start())
            end = data.find(b"\n", last.end())
            usage = json.loads(data[start + 5 : end if end >= 0 else len(data)])["usage"]
        rec.prompt_tokens = int(usage["prompt_tokens"])
        rec.completion_tokens = int(usage.get("completion_tokens") or 0)
    except (ValueError, KeyError, TypeError, AttributeError):
        return False
    return True


async def _replay(call: _Call, record: Record) -> None:
    """Send a recorded response: what was generated so far at once, then the rest as it comes."""
    await _first(record.started.wait(), call.disconnected)
    rec, down = call.record, call.down
    rec.status = record.status
    if record.done:
        await down.respond(record.status, record.headers, b"".join(record.chunks))
        return
    await down.start(record.status, record.headers)
    follow = record.follow()
    try:
        while True:
            chunk = await _first(anext(follow), call.disconnected)
            if rec.ttft_s is None:
                rec.ttft_s = time.perf_counter() - rec.started
            await down.write(chunk)
    except StopAsyncIteration:
        await down.end()
    finally:
        await follow.aclose()


async def _first(awaitable, disconnected: asyncio.Future[None]):  # type: ignore[no-untyped-def]
    """Await `awaitable` unless the client leaves first (then ClientGone)."""
    if disconnected.done():
        raise ClientGone
    task = asyncio.ensure_future(awaitable)
    await asyncio.wait({task, disconnected}, return_when=asyncio.FIRST_COMPLETED)
    if not task.done():
        task.cancel()
        raise ClientGone
    return task.result()
