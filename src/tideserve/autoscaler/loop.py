"""The autoscaler of `tideserve up`: every round, for each service with `spec.autoscaling`, observe it,
decide (decide.py, pure) and write the new count where the reconciler reads it, with an event that
says why. The reconciler then starts instances, or drains them (they leave the gateway's pool first
and finish what they run) — scaling down is an ordinary drain.

What it reads: queues and KV use from the gateway's endpoint table (scraped every 0.5 s, so a burst is
seen within a second), requests/s and GPU use per instance and the service's TTFT p90 from the
collector's store, requests held at the gateway and when the last request came from the gateway.
A request that waits for a service at zero wakes the autoscaler at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from tideserve.autoscaler.decide import (
    INTERVAL_S,
    METRIC_FRESH_S,
    History,
    InstanceSample,
    Observation,
    decide,
    with_gateway_queue,
)
from tideserve.autoscaler.policy import Autoscaling, Metric, from_spec
from tideserve.gateway.proxy import Gateway
from tideserve.observability.tsdb import TimeSeriesStore
from tideserve.services import events
from tideserve.services.controller import Controller
from tideserve.services.rollout import desired_of
from tideserve.store.db import Store
from tideserve.store.models import Cluster, Instance, Service

log = logging.getLogger("tideserve.autoscaler")

ENDPOINT_FRESH_S = 3.0  # an endpoint load older than this is not the instance's load any more
# The collector's figures each metric reads, per instance and (with extra labels) per service.
INSTANCE_FIGURES: dict[Metric, str] = {
    "requests_per_s": "tideserve_instance_requests_per_second",
    "gpu_utilization": "tideserve_instance_gpu_utilization_ratio",
}
SERVICE_FIGURES: dict[Metric, tuple[str, dict[str, str]]] = {
    "ttft_p90": ("tideserve_service_ttft_seconds", {"quantile": "0.9"}),
    "requests_per_s": ("tideserve_service_gateway_requests_per_second", {}),
}
PLACED = ("Pending", "Starting", "Running")


@dataclass(frozen=True)
class GatewayView:
    loads: dict[str, dict[Metric, float]]  # by instance id
    queued: dict[str, int]  # by service
    last_request_at: dict[str, float]  # by service, unix seconds


class Autoscaler:
    def __init__(
        self,
        store: Store,
        tsdb: TimeSeriesStore,
        gateway: Gateway,
        controller: Controller,
        interval_s: float = INTERVAL_S,
    ) -> None:
        self.store, self.tsdb, self.gateway, self.controller = store, tsdb, gateway, controller
        self.interval_s = interval_s
        self.histories: dict[str, History] = {}
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self.gateway.on_wait = self.wake
        self._task = asyncio.create_task(self._run(), name="autoscaler")

    async def close(self) -> None:
        self.gateway.on_wait = None
        if self._task is not None:
            self._task.cancel()

    def wake(self, _service: str = "") -> None:
        self._wake.set()

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.interval_s)
            self._wake.clear()
            try:
                seen = self._gateway_view()
                changed = await asyncio.to_thread(self.round, time.time(), seen)
            except Exception:  # a bad round (a store hiccup) must not end autoscaling
                log.exception("autoscaler round failed")
                continue
            if changed:
                self.controller.wake()

    def _gateway_view(self) -> GatewayView:
        """What the gateway knows, read on the event loop that owns it: fresh engine load per instance,
        requests held per service, when each service last got a request."""
        now = time.monotonic()
        loads: dict[str, dict[Metric, float]] = {}
        for route in self.gateway.table.services.values():
            for e in route.endpoints:
                if e.load is not None and e.scraped_at is not None and now - e.scraped_at <= ENDPOINT_FRESH_S:
                    loads[e.instance_id] = {
                        "waiting_per_replica": e.load.waiting,
                        "running_per_replica": e.load.running,
                        "kv_cache_usage": e.load.kv_usage,
                    }
        queued = {name: len(q) for name, q in self.gateway.queues.items()}
        return GatewayView(loads, queued, dict(self.gateway.last_request_at))

    def round(self, now: float, seen: GatewayView) -> bool:
        """Decides for every autoscaled service; True when a count changed (the reconciler has work)."""
        changed = False
        with self.store.session() as s:
            # On Kubernetes the policy is rendered as an HPA or a KEDA ScaledObject, which scale there.
            local = set(s.scalars(select(Cluster.name).where(Cluster.platform == "local")))
            for svc in s.scalars(select(Service).where(Service.deleting.is_(False))):
                body = svc.spec["spec"]
                if not body.get("autoscaling") or body.get("cluster") not in local:
                    self.histories.pop(svc.name, None)
                    continue
                changed |= self._service_round(s, svc, body, now, seen)
        return changed

    def _service_round(
        self, s: Session, svc: Service, body: dict[str, Any], now: float, seen: GatewayView
    ) -> bool:
        policy: Autoscaling = from_spec(body["autoscaling"])
        current = desired_of(svc.revision, body, autoscaled=svc.autoscaled_replicas).replicas
        instances = s.scalars(
            select(Instance).where(
                Instance.service_id == svc.id,
                Instance.revision == svc.revision,
                Instance.state.in_(PLACED),
            )
        ).all()
        samples = [self._sample(i, seen.loads.get(i.id, {}), now) for i in instances]
        queued = seen.queued.get(svc.name, 0)
        obs = Observation(
            now=now,
            current=current,
            instances=with_gateway_queue(samples, queued),
            service=self._service_values(svc.name, now),
            queued=queued,
            last_request_at=seen.last_request_at.get(svc.name),
        )
        # No start-up grace: an instance is Running only once its engine answers /health as ready to
        # serve, and a queue length needs no warm-up to mean what it says (unlike HPA's CPU readings).
        decision, history = decide(obs, policy, self.histories.get(svc.name, History()), startup_grace_s=0)
        log.debug("service %s: %s (observed %s)", svc.name, decision.reason, obs)
        self.histories[svc.name] = history
        labels = {"service": svc.name}
        self.tsdb.add_round(
            now,
            [
                ("tideserve_service_desired_replicas", labels, float(decision.replicas)),
                ("tideserve_service_autoscaling_recommendation", labels, float(decision.recommendation)),
            ],
        )
        if decision.replicas == current:
            return False
        log.info("service %s: %s", svc.name, decision.reason)
        svc.autoscaled_replicas = decision.replicas
        events.record(
            s,
            service=svc.name,
            reason="Autoscaled",
            message=decision.reason,
            details={
                "from": current,
                "to": decision.replicas,
                "metrics": {m: st._asdict() for m, st in decision.metrics.items()},
            },
        )
        return True

    def _sample(self, inst: Instance, load: dict[Metric, float], now: float) -> InstanceSample:
        values = dict(load)
        labels = {"instance": inst.id}
        for metric, name in INSTANCE_FIGURES.items():
            found = self.tsdb.latest(name, labels, max_age_s=METRIC_FRESH_S, now=now)
            if len(found) == 1:
                values[metric] = found[0][2]
        started = inst.started_at.timestamp() if inst.started_at else now
        return InstanceSample(ready=inst.state == "Running", started_at=started, values=values)

    def _service_values(self, service: str, now: float) -> dict[Metric, float]:
        values: dict[Metric, float] = {}
        for metric, (name, extra) in SERVICE_FIGURES.items():
            found = self.tsdb.latest(name, {"service": service, **extra}, max_age_s=METRIC_FRESH_S, now=now)
            if len(found) == 1:
                values[metric] = found[0][2]
        return values
