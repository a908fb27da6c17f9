"""The gateway's view of where a service can send requests: its Running instances (read from the
store) and each one's engine load (scraped from /metrics), plus the service's routing settings.
Refreshed in the background, so the request path reads memory, never the database or the network."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select

from tideserve.gateway.ratelimit import Limits
from tideserve.gateway.upstream import UpstreamError, UpstreamPool, origin_of
from tideserve.observability.engine_metrics import EngineLoad, parse_engine_metrics
from tideserve.store.db import Store
from tideserve.store.models import Instance, Service

log = logging.getLogger(__name__)

SCRAPE_TIMEOUT_S = 0.5
DEFAULT_MAX_BATCH = 32


@dataclass(frozen=True)
class RouteConfig:
    """A service's `spec.routing`, read once per refresh instead of once per request."""

    policy: str = "prefix_aware"
    canary_revision: int | None = None  # the stable revision kept beside the current one
    canary_weight: int = 100  # percent of traffic to the current revision
    long_threshold: int | None = None  # prompt tokens from which the long pool serves
    long_replicas: int = 0
    limits: Limits = field(default_factory=Limits)
    queue_size: int = 256
    queue_timeout_s: float = 30.0
    max_inflight: int | None = None  # per instance, from this gateway
    timeout_s: float = 600.0

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> RouteConfig:
        routing: dict[str, Any] = spec.get("routing") or {}
        canary = routing.get("canary") or {}
        pools = routing.get("promptLength") or {}
        limits = routing.get("rateLimit") or {}
        queue = routing.get("queue") or {}
        batch = (spec.get("parameters") or {}).get("maxBatchSize", DEFAULT_MAX_BATCH)
        return cls(
            policy=routing.get("policy", "prefix_aware"),
            canary_revision=canary.get("stableRevision"),
            canary_weight=canary.get("weight", 100),
            long_threshold=pools.get("thresholdTokens"),
            long_replicas=pools.get("longReplicas", 0),
            limits=Limits(
                limits.get("requestsPerMinute"), limits.get("tokensPerMinute"), limits.get("maxConcurrent")
            ),
            queue_size=queue.get("maxSize", 256),
            queue_timeout_s=queue.get("timeoutSeconds", 30.0),
            max_inflight=routing.get("maxInflightPerInstance") or 2 * batch,
            timeout_s=routing.get("requestTimeoutSeconds", 600.0),
        )


@dataclass
class Endpoint:
    instance_id: str
    url: str
    revision: int
    load: EngineLoad | None = None
    scraped_at: float | None = None  # time.monotonic() of the last good scrape
    long_pool: bool = False


@dataclass
class ServiceRoute:
    name: str
    model: str = ""
    revision: int = 1  # the current one
    created: int = 0  # unix seconds, for /v1/models
    config: RouteConfig = field(default_factory=RouteConfig)
    endpoints: list[Endpoint] = field(default_factory=list)


def assign_pools(endpoints: list[Endpoint], long_replicas: int) -> None:
    """The last `long_replicas` instances of each revision (by id, so every gateway replica agrees)
    form the long-prompt pool."""
    by_revision: dict[int, list[Endpoint]] = {}
    for e in endpoints:
        e.long_pool = False
        by_revision.setdefault(e.revision, []).append(e)
    for group in by_revision.values():
        group.sort(key=lambda e: e.instance_id)
        # A lone instance serves every prompt: a pool split needs at least one of each.
        take = min(long_replicas, len(group) - 1)
        for e in group[len(group) - take :] if take > 0 else []:
            e.long_pool = True


class EndpointTable:
    """Routes by service name. `store=None` with `static` routes serves fixed upstreams
    (`tideserve gateway --upstream`), still scraped for load."""

    def __init__(
        self, store: Store | None, interval_s: float = 0.5, static: dict[str, ServiceRoute] | None = None
    ) -> None:
        self.store = store
        self.interval_s = interval_s
        self.services: dict[str, ServiceRoute] = dict(static or {})
        self._pool = UpstreamPool(max_idle_per_origin=1)
        self._task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        self.listeners: list[Callable[[], None]] = []  # told after each refresh (queues retry)

    def route(self, service: str) -> ServiceRoute | None:
        return self.services.get(service)

    def forget(self, service: str) -> None:
        """Stop routing to a service at once (it is being deleted), before the next refresh."""
        self.services.pop(service, None)

    def _read_store(self) -> dict[str, ServiceRoute]:
        assert self.store is not None
        with self.store.session() as s:
            services: dict[int, ServiceRoute] = {}
            for svc in s.scalars(select(Service).where(Service.deleting.is_(False))):
                spec = svc.spec.get("spec", {})
                services[svc.id] = ServiceRoute(
                    svc.name,
                    model=spec.get("model", ""),
                    revision=svc.revision,
                    created=int(svc.created_at.timestamp()),
                    config=RouteConfig.from_spec(spec),
                )
            # Clients go to instances of role both (or decode): not to the prefill side of a PD service,
            # nor to the worker pods of a multi-node instance (its leader serves).
            running = select(Instance).where(
                Instance.state == "Running", Instance.role.in_(("both", "decode"))
            )
            for inst in s.scalars(running):
                if (route := services.get(inst.service_id)) is not None:
                    url = f"http://{inst.address}:{inst.port}"
                    route.endpoints.append(Endpoint(inst.id, url, inst.revision))
        return {r.name: r for r in services.values()}

    async def sync(self) -> None:
        """Re-read the store now (one query; no scraping): the request path calls this on a miss, so
        an instance the API already reports Running is never refused for want of a refresh."""
        if self.store is None:
            return
        async with self._lock:
            fresh = await asyncio.to_thread(self._read_store)
            # Keep what we already scraped for instances that are still there.
            known = {e.instance_id: e for r in self.services.values() for e in r.endpoints}
            for route in fresh.values():
                route.endpoints = [known.get(e.instance_id, e) for e in route.endpoints]
                assign_pools(route.endpoints, route.config.long_replicas)
            self.services = fresh
        self._notify()

    def _notify(self) -> None:
        for listener in self.listeners:
            listener()

    async def refresh(self) -> None:
        await self.sync()
        await asyncio.gather(*(self._scrape(e) for r in self.services.values() for e in r.endpoints))
        self._notify()

    async def _scrape(self, endpoint: Endpoint) -> None:
        try:
            status, body = await self._pool.get(origin_of(endpoint.url), "/metrics", SCRAPE_TIMEOUT_S)
            if status == 200:
                endpoint.load, endpoint.scraped_at = parse_engine_metrics(body.decode()), time.monotonic()
        except (UpstreamError, TimeoutError, ValueError) as e:
            log.debug("scrape of %s failed: %s", endpoint.url, e)  # stale data counts as saturated

    async def _run(self) -> None:
        while True:
            try:
                await self.refresh()
            except Exception:  # the table must outlive a bad refresh (a store hiccup, say)
                log.exception("endpoint refresh failed")
            await asyncio.sleep(self.interval_s)

    async def start(self) -> None:
        await self.refresh()
        self._task = asyncio.create_task(self._run(), name="endpoint-table")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
        self._pool.close()
