"""The collector: every `interval` seconds it reads what the store says runs, scrapes each running
instance's `/metrics`, measures instance processes and this node (psutil) and its GPUs (NVML), reads the
in-process gateway's counters, and writes the rolled-up points into the time-series store, which it
saves to the home so history survives a restart.

Only the scrapes run on the event loop; the store query, psutil and the arithmetic run in a worker
thread, so a round over hundreds of instances never delays the gateway sharing that loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from urllib.parse import urlsplit

import psutil
from sqlalchemy import select

from tideserve.gateway.upstream import UpstreamError, UpstreamPool, origin_of
from tideserve.observability import rollup
from tideserve.observability.gpus import GpuReader
from tideserve.observability.rollup import NodeFacts, NodeReading, Reading, Target
from tideserve.observability.samples import parse_sample
from tideserve.observability.tsdb import TimeSeriesStore
from tideserve.platforms.local import Handle, LocalPlatform
from tideserve.services.spec import parse_quantity
from tideserve.store.db import Store
from tideserve.store.models import Cluster, Instance, Node, ResourceGroup, Revision, Service

log = logging.getLogger("tideserve.collector")

INTERVAL_S = 5.0
SCRAPE_TIMEOUT_S = 2.0
SAVE_EVERY_S = 60.0
PRUNE_EVERY_S = 3600.0
SCRAPED_STATES = ("Running", "Draining")
PLACED_STATES = ("Pending", "Starting", "Running", "Draining")
TSDB_FILE = "metrics.tsdb"
# ~29 KB of rings each (tsdb.DEFAULT_TIERS): at most ~0.6 GB, room for 1,000 instances of 50 services
MAX_SERIES = 20_000

# (service, status) -> cumulative responses, read from the gateway in the same process
GatewayReader = Callable[[], Mapping[tuple[str, str], float]]


class Collector:
    def __init__(
        self,
        store: Store,
        home: Path,
        tsdb: TimeSeriesStore,
        gateway: GatewayReader | None = None,
        interval: float = INTERVAL_S,
        local_node: str | None = None,
    ) -> None:
        self.store = store
        self.path = home / TSDB_FILE
        self.tsdb = tsdb
        self.gateway = gateway
        self.interval = interval
        self.local_node = local_node or socket.gethostname()
        self._gpus = GpuReader()
        self._platform = LocalPlatform()
        self._previous: dict[str, Reading] = {}
        # The gateway's counters start at zero with this process, so the first round has a baseline.
        self._gateway_prev: tuple[float, Mapping[tuple[str, str], float]] = (time.time(), {})
        self._task: asyncio.Task[None] | None = None
        self._pool = UpstreamPool(max_idle_per_origin=1)
        self._saved_at = self._pruned_at = time.time()
        psutil.cpu_percent(interval=None)  # the first call only sets the baseline

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="collector")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._pool.close()
        await asyncio.to_thread(self.tsdb.save, self.path)
        self._gpus.close()

    async def _run(self) -> None:
        while True:
            started = time.monotonic()
            try:
                await self.collect_once()
            except Exception:  # one bad round must not end monitoring
                log.exception("collector round failed")
            await asyncio.sleep(max(0.1, self.interval - (time.monotonic() - started)))

    async def collect_once(self) -> None:
        targets, urls, handles, nodes = await asyncio.to_thread(self._observe_store)
        texts = await asyncio.gather(*(self._scrape(urls[t.instance]) for t in targets if t.instance in urls))
        scraped = dict(zip([t.instance for t in targets if t.instance in urls], texts, strict=True))
        await asyncio.to_thread(self._ingest, targets, scraped, handles, nodes)

    async def _scrape(self, url: str) -> str | None:
        try:
            status, body = await self._pool.get(origin_of(url), urlsplit(url).path, SCRAPE_TIMEOUT_S)
        except (UpstreamError, TimeoutError):
            return None
        return body.decode("utf-8", "replace") if status == 200 else None

    def _observe_store(
        self,
    ) -> tuple[list[Target], dict[str, str], dict[str, Handle], list[NodeFacts]]:
        with self.store.session() as s:
            resources = {
                (sid, number): spec["spec"].get("resources", {})
                for sid, number, spec in s.execute(
                    select(Revision.service_id, Revision.number, Revision.spec)
                )
            }
            rows = s.execute(
                select(Instance, Service.name, Node.name, Cluster.name)
                .join(Service, Instance.service_id == Service.id)
                .join(Node, Instance.node_id == Node.id)
                .outerjoin(ResourceGroup, Node.group_id == ResourceGroup.id)
                .outerjoin(Cluster, ResourceGroup.cluster_id == Cluster.id)
                .where(Instance.state.in_(PLACED_STATES))
            ).all()
            targets, urls, handles = [], {}, {}
            for inst, service, node, cluster in rows:
                res = resources.get((inst.service_id, inst.revision), {})
                targets.append(
                    Target(
                        instance=inst.id,
                        service=service,
                        node=node,
                        cluster=cluster or "",
                        state=inst.state,
                        gpus=tuple(int(i) for i in inst.gpu_indices or ()),
                        cpu_request=float(res.get("cpu") or 0),
                        memory_request=parse_quantity(res.get("memory") or 0),
                    )
                )
                if inst.state in SCRAPED_STATES and inst.port:
                    urls[inst.id] = f"http://{inst.address or '127.0.0.1'}:{inst.port}/metrics"
                if inst.pid and node == self.local_node:
                    handles[inst.id] = Handle(inst.pid, inst.pid_started)
            nodes = []
            for node, cluster in s.execute(
                select(Node, Cluster.name)
                .outerjoin(ResourceGroup, Node.group_id == ResourceGroup.id)
                .outerjoin(Cluster, ResourceGroup.cluster_id == Cluster.id)
            ).all():
                gpus = node.gpus or []
                nodes.append(
                    NodeFacts(
                        name=node.name,
                        cluster=cluster or "",
                        cpus=node.cpus,
                        memory_bytes=node.memory_bytes,
                        gpus=len(gpus),
                        gpu_memory_bytes=sum(int(g.get("memory_bytes", 0)) for g in gpus),
                    )
                )
        return targets, urls, handles, nodes

    def _ingest(
        self,
        targets: list[Target],
        scraped: dict[str, str | None],
        handles: dict[str, Handle],
        nodes: list[NodeFacts],
    ) -> None:
        now = time.time()
        readings: dict[str, Reading] = {}
        for t in targets:
            sample = None
            text = scraped.get(t.instance)
            if text is not None:
                try:
                    sample = parse_sample(text)
                except ValueError:
                    log.warning("instance %s: /metrics is not Prometheus text", t.instance)
            cpu, rss = self._process_stats(handles.get(t.instance))
            serving = t.state in SCRAPED_STATES
            if sample is not None or cpu is not None or not serving:
                readings[t.instance] = Reading(now, sample, cpu, rss, serving)
        node_readings = {self.local_node: self._read_node()}
        points = rollup.rollup(
            targets, readings, self._previous, nodes, node_readings, self._gateway_counts(now)
        )
        self.tsdb.add_round(now, points)
        self._previous = readings
        if now - self._pruned_at >= PRUNE_EVERY_S:
            self.tsdb.prune(now)
            self._pruned_at = now
        if now - self._saved_at >= SAVE_EVERY_S:
            self.tsdb.save(self.path)
            self._saved_at = now

    def _process_stats(self, handle: Handle | None) -> tuple[float | None, int | None]:
        # adopt() checks the pid still belongs to the process that was started, not a reused pid
        if handle is None or not self._platform.adopt(handle):
            return None, None
        return self._platform.stats(handle) or (None, None)

    def _read_node(self) -> NodeReading:
        mem = psutil.virtual_memory()
        cores = psutil.cpu_count() or 1
        return NodeReading(
            cpu_used=psutil.cpu_percent(interval=None) / 100.0 * cores,
            memory_used=int(mem.total - mem.available),
            memory_total=int(mem.total),
            gpus=self._gpus.read(),
        )

    def _gateway_counts(self, now: float) -> dict[str, rollup.GatewayCounts]:
        if self.gateway is None:
            return {}
        cur = dict(self.gateway())
        (then, prev), self._gateway_prev = self._gateway_prev, (now, cur)
        return rollup.gateway_counts(prev, cur, now - then)
