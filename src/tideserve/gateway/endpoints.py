"""The gateway's view of where a service can send requests: its Running instances (read from the
store) and each one's engine load (scraped from /metrics). Refreshed in the background, so the
request path reads memory, never the database or the network."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field

import httpx
from sqlalchemy import select

from tideserve.observability.engine_metrics import EngineLoad, parse_engine_metrics
from tideserve.store.db import Store
from tideserve.store.models import Instance, Service

log = logging.getLogger(__name__)

SCRAPE_TIMEOUT_S = 0.5


@dataclass
class Endpoint:
    instance_id: str
    url: str
    revision: int
    load: EngineLoad | None = None
    scraped_at: float | None = None  # time.monotonic() of the last good scrape


@dataclass
class ServiceRoute:
    name: str
    endpoints: list[Endpoint] = field(default_factory=list)


class EndpointTable:
    def __init__(self, store: Store, interval_s: float = 0.5) -> None:
        self.store = store
        self.interval_s = interval_s
        self.services: dict[str, ServiceRoute] = {}
        self._client = httpx.AsyncClient(timeout=SCRAPE_TIMEOUT_S, trust_env=False)
        self._task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()

    def route(self, service: str) -> ServiceRoute | None:
        return self.services.get(service)

    def forget(self, service: str) -> None:
        """Stop routing to a service at once (it is being deleted), before the next refresh."""
        self.services.pop(service, None)

    def _read_store(self) -> dict[str, ServiceRoute]:
        with self.store.session() as s:
            services = {
                svc.id: ServiceRoute(svc.name)
                for svc in s.scalars(select(Service).where(Service.deleting.is_(False)))
            }
            for inst in s.scalars(select(Instance).where(Instance.state == "Running")):
                if (route := services.get(inst.service_id)) is not None:
                    url = f"http://{inst.address}:{inst.port}"
                    route.endpoints.append(Endpoint(inst.id, url, inst.revision))
        return {r.name: r for r in services.values()}

    async def sync(self) -> None:
        """Re-read the store now (one query; no scraping): the request path calls this on a miss, so
        an instance the API already reports Running is never refused for want of a refresh."""
        async with self._lock:
            fresh = await asyncio.to_thread(self._read_store)
            # Keep what we already scraped for instances that are still there.
            known = {e.instance_id: e for r in self.services.values() for e in r.endpoints}
            for route in fresh.values():
                route.endpoints = [known.get(e.instance_id, e) for e in route.endpoints]
            self.services = fresh

    async def refresh(self) -> None:
        await self.sync()
        await asyncio.gather(*(self._scrape(e) for r in self.services.values() for e in r.endpoints))

    async def _scrape(self, endpoint: Endpoint) -> None:
        try:
            r = await self._client.get(endpoint.url + "/metrics")
            if r.status_code == 200:
                endpoint.load, endpoint.scraped_at = parse_engine_metrics(r.text), time.monotonic()
        except (httpx.HTTPError, ValueError) as e:
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
        await self._client.aclose()
