"""From one round of readings to the points the time-series store keeps, at instance, service, node
and cluster level. Pure: the collector does the reading, these functions the arithmetic.

Every point is `(name, labels, value)`; names are the `tideserve_*` names `/metrics` publishes. A
figure that is unknown this round (no traffic for a quantile, no previous sample for a rate) is left
out rather than written as 0, so charts show a gap instead of a false zero.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from tideserve.observability.gpus import GpuReading
from tideserve.observability.samples import (
    EngineSample,
    Histogram,
    counter_delta,
    histogram_delta,
    merge,
    quantile,
)

Point = tuple[str, dict[str, str], float]
QUANTILES = (0.5, 0.9, 0.99)
LATENCIES = ("ttft", "tpot", "e2e")


@dataclass(frozen=True)
class Target:
    """An instance as the store describes it, with what it asked for (for the cluster's water level)."""

    instance: str
    service: str
    node: str
    cluster: str
    state: str
    gpus: tuple[int, ...] = ()
    cpu_request: float = 0.0
    memory_request: int = 0


@dataclass(frozen=True)
class Reading:
    """What one round read of an instance: its engine sample (None when not scraped or failed) and its
    process tree's CPU seconds and RSS (None when the process is not on this machine)."""

    at: float
    sample: EngineSample | None = None
    cpu_seconds: float | None = None
    rss: int | None = None
    serving: bool = True  # False while Pending/Starting: the engine has counted nothing yet


@dataclass(frozen=True)
class NodeFacts:
    name: str
    cluster: str
    cpus: float
    memory_bytes: int
    gpus: int
    gpu_memory_bytes: int


@dataclass(frozen=True)
class NodeReading:
    cpu_used: float  # cores
    memory_used: int
    memory_total: int
    gpus: Sequence[GpuReading] = ()


@dataclass
class InstanceDelta:
    """An instance's interval between two readings."""

    requests_per_s: float | None = None
    prompt_tokens_per_s: float | None = None
    generation_tokens_per_s: float | None = None
    prefix_queries: float = 0.0
    prefix_hits: float = 0.0
    cpu_cores: float | None = None
    histograms: dict[str, Histogram] = field(default_factory=dict)


def instance_delta(cur: Reading, prev: Reading | None) -> InstanceDelta:
    d = InstanceDelta()
    if prev is None or cur.at <= prev.at:
        return d
    dt = cur.at - prev.at
    if cur.cpu_seconds is not None and prev.cpu_seconds is not None:
        d.cpu_cores = max(0.0, cur.cpu_seconds - prev.cpu_seconds) / dt
    if cur.sample is None:
        return d
    # An instance last seen before it served started its counters at zero since: all it holds now
    # is new. Without this, the requests of an instance's first seconds would never be counted.
    from_zero = prev.sample is None and not prev.serving
    if prev.sample is None and not from_zero:
        return d
    c, p = cur.sample.counters, prev.sample.counters if prev.sample else {}

    def grown(key: str) -> float:
        return c.get(key, 0.0) if from_zero else counter_delta(p.get(key), c.get(key, 0.0))

    if "prompt_tokens" in c:
        d.prompt_tokens_per_s = grown("prompt_tokens") / dt
    if "generation_tokens" in c:
        d.generation_tokens_per_s = grown("generation_tokens") / dt
    d.prefix_queries = grown("prefix_queries")
    d.prefix_hits = grown("prefix_hits")
    for key, h in cur.sample.histograms.items():
        delta = h if from_zero else histogram_delta(prev.sample.histograms.get(key), h)  # type: ignore[union-attr]
        if delta is not None:
            d.histograms[key] = delta
    if "e2e" in d.histograms:  # one e2e observation per finished request
        d.requests_per_s = d.histograms["e2e"].count / dt
    return d


def _labels(t: Target) -> dict[str, str]:
    return {"service": t.service, "instance": t.instance, "node": t.node, "cluster": t.cluster}


def _hit_ratio(queries: float, hits: float) -> float | None:
    return min(1.0, hits / queries) if queries > 0 else None


def _put(points: list[Point], name: str, labels: dict[str, str], value: float | None) -> None:
    if value is not None:
        points.append((name, labels, float(value)))


def instance_points(
    t: Target, cur: Reading, d: InstanceDelta, gpus: Mapping[tuple[str, int], GpuReading]
) -> list[Point]:
    labels = _labels(t)
    points: list[Point] = []
    _put(points, "tideserve_instance_up", labels, 1.0 if cur.sample is not None else 0.0)
    if cur.sample is not None:
        g = cur.sample.gauges
        _put(points, "tideserve_instance_running_requests", labels, g.get("running"))
        _put(points, "tideserve_instance_waiting_requests", labels, g.get("waiting"))
        _put(points, "tideserve_instance_kv_cache_usage_ratio", labels, g.get("kv_usage"))
    _put(points, "tideserve_instance_requests_per_second", labels, d.requests_per_s)
    _put(points, "tideserve_instance_prompt_tokens_per_second", labels, d.prompt_tokens_per_s)
    _put(points, "tideserve_instance_generation_tokens_per_second", labels, d.generation_tokens_per_s)
    _put(
        points,
        "tideserve_instance_prefix_cache_hit_ratio",
        labels,
        _hit_ratio(d.prefix_queries, d.prefix_hits),
    )
    _put(points, "tideserve_instance_cpu_cores", labels, d.cpu_cores)
    _put(points, "tideserve_instance_memory_bytes", labels, cur.rss)
    own = _own_gpus([t], gpus)
    if own:
        _put(points, "tideserve_instance_gpu_utilization_ratio", labels, _mean(g.utilization for g in own))
        _put(points, "tideserve_instance_gpu_memory_bytes", labels, sum(g.memory_used for g in own))
    return points


def _own_gpus(targets: Iterable[Target], gpus: Mapping[tuple[str, int], GpuReading]) -> list[GpuReading]:
    """Readings of the GPUs the instances were given, by (node, index)."""
    return [gpus[(t.node, i)] for t in targets for i in t.gpus if (t.node, i) in gpus]


def _mean(values: Iterable[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return sum(known) / len(known) if known else None


def _sum(values: Iterable[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return sum(known) if known else None


@dataclass(frozen=True)
class GatewayCounts:
    """Responses the gateway gave for one service in the interval, by class."""

    requests_per_s: float
    client_errors_per_s: float  # 4xx: refused (auth, limits, bad input)
    server_errors_per_s: float  # 5xx: failed (no instance, upstream error, timeout)


def service_points(
    service: str,
    members: Sequence[tuple[Target, Reading, InstanceDelta]],
    gpus: Mapping[tuple[str, int], GpuReading],
    gateway: GatewayCounts | None,
) -> list[Point]:
    """One service's figures from its instances' readings: sums for work (requests, tokens, queues),
    means for per-instance resources, quantiles from the merged latency histograms."""
    labels = {"service": service}
    points: list[Point] = []
    scraped = [(t, r, d) for t, r, d in members if r.sample is not None]
    _put(points, "tideserve_service_instances", labels, len(members))
    _put(
        points, "tideserve_service_ready_instances", labels, sum(t.state == "Running" for t, _, _ in members)
    )
    if scraped:
        for key, name in (("running", "running_requests"), ("waiting", "waiting_requests")):
            _put(
                points,
                f"tideserve_service_{name}",
                labels,
                _sum(r.sample.gauges.get(key) for _, r, _ in scraped),
            )  # type: ignore[union-attr]
        kv = _mean(r.sample.gauges.get("kv_usage") for _, r, _ in scraped)  # type: ignore[union-attr]
        _put(points, "tideserve_service_kv_cache_usage_ratio", labels, kv)
    deltas = [d for _, _, d in members]
    _put(points, "tideserve_service_requests_per_second", labels, _sum(d.requests_per_s for d in deltas))
    _put(
        points,
        "tideserve_service_prompt_tokens_per_second",
        labels,
        _sum(d.prompt_tokens_per_s for d in deltas),
    )
    _put(
        points,
        "tideserve_service_generation_tokens_per_second",
        labels,
        _sum(d.generation_tokens_per_s for d in deltas),
    )
    hits = _hit_ratio(sum(d.prefix_queries for d in deltas), sum(d.prefix_hits for d in deltas))
    _put(points, "tideserve_service_prefix_cache_hit_ratio", labels, hits)
    for key in LATENCIES:
        merged = merge(d.histograms[key] for d in deltas if key in d.histograms)
        if merged is None:
            continue
        for q in QUANTILES:
            _put(
                points,
                f"tideserve_service_{key}_seconds",
                {**labels, "quantile": str(q)},
                quantile(merged, q),
            )
    _put(points, "tideserve_service_cpu_cores_per_instance", labels, _mean(d.cpu_cores for d in deltas))
    _put(points, "tideserve_service_memory_bytes_per_instance", labels, _mean(r.rss for _, r, _ in members))
    own = _own_gpus([t for t, _, _ in members], gpus)
    if own:
        _put(points, "tideserve_service_gpu_utilization_ratio", labels, _mean(g.utilization for g in own))
    if gateway is not None:
        _put(points, "tideserve_service_gateway_requests_per_second", labels, gateway.requests_per_s)
        _put(points, "tideserve_service_client_errors_per_second", labels, gateway.client_errors_per_s)
        _put(points, "tideserve_service_server_errors_per_second", labels, gateway.server_errors_per_s)
    return points


def node_points(node: NodeFacts, reading: NodeReading | None, instances: int) -> list[Point]:
    labels = {"node": node.name, "cluster": node.cluster}
    points: list[Point] = [
        ("tideserve_node_cpu_cores", labels, float(node.cpus)),
        ("tideserve_node_instances", labels, float(instances)),
    ]
    if reading is None:
        return points
    points += [
        ("tideserve_node_cpu_used_cores", labels, reading.cpu_used),
        ("tideserve_node_memory_used_bytes", labels, float(reading.memory_used)),
        ("tideserve_node_memory_bytes", labels, float(reading.memory_total)),
    ]
    for g in reading.gpus:
        gl = {**labels, "gpu": str(g.index)}
        points += [
            ("tideserve_node_gpu_utilization_ratio", gl, g.utilization),
            ("tideserve_node_gpu_memory_used_bytes", gl, float(g.memory_used)),
            ("tideserve_node_gpu_memory_bytes", gl, float(g.memory_total)),
            ("tideserve_node_gpu_temperature_celsius", gl, g.temperature_c),
            ("tideserve_node_gpu_power_watts", gl, g.power_w),
        ]
    return points


def cluster_points(
    cluster: str,
    nodes: Sequence[NodeFacts],
    readings: Mapping[str, NodeReading],
    targets: Sequence[Target],
) -> list[Point]:
    """Capacity, what instances asked for (allocated) and what they use, for the water level."""
    labels = {"cluster": cluster}
    mine = [n for n in nodes if n.cluster == cluster]
    names = {n.name for n in mine}
    placed = [t for t in targets if t.node in names]
    read = [readings[n.name] for n in mine if n.name in readings]
    points: list[Point] = [
        ("tideserve_cluster_nodes", labels, float(len(mine))),
        ("tideserve_cluster_cpu_cores", labels, float(sum(n.cpus for n in mine))),
        ("tideserve_cluster_cpu_allocated_cores", labels, float(sum(t.cpu_request for t in placed))),
        ("tideserve_cluster_memory_bytes", labels, float(sum(n.memory_bytes for n in mine))),
        ("tideserve_cluster_memory_allocated_bytes", labels, float(sum(t.memory_request for t in placed))),
        ("tideserve_cluster_gpus", labels, float(sum(n.gpus for n in mine))),
        ("tideserve_cluster_gpus_allocated", labels, float(sum(len(t.gpus) for t in placed))),
        ("tideserve_cluster_gpu_memory_bytes", labels, float(sum(n.gpu_memory_bytes for n in mine))),
        ("tideserve_cluster_instances", labels, float(len(placed))),
        ("tideserve_cluster_services", labels, float(len({t.service for t in placed}))),
    ]
    if read:
        points += [
            ("tideserve_cluster_cpu_used_cores", labels, sum(r.cpu_used for r in read)),
            ("tideserve_cluster_memory_used_bytes", labels, float(sum(r.memory_used for r in read))),
            (
                "tideserve_cluster_gpu_memory_used_bytes",
                labels,
                float(sum(g.memory_used for r in read for g in r.gpus)),
            ),
        ]
        utils = [g.utilization for r in read for g in r.gpus]
        if utils:
            points.append(("tideserve_cluster_gpu_utilization_ratio", labels, sum(utils) / len(utils)))
    return points


def rollup(
    targets: Sequence[Target],
    readings: Mapping[str, Reading],
    previous: Mapping[str, Reading],
    nodes: Sequence[NodeFacts],
    node_readings: Mapping[str, NodeReading],
    gateway: Mapping[str, GatewayCounts],
) -> list[Point]:
    """Every point of one round. `readings` and `previous` are keyed by instance id; a target without a
    reading this round is left out of the instance and service figures but still counted as placed."""
    gpus = {(name, g.index): g for name, r in node_readings.items() for g in r.gpus}
    points: list[Point] = []
    by_service: dict[str, list[tuple[Target, Reading, InstanceDelta]]] = defaultdict(list)
    for t in targets:
        cur = readings.get(t.instance)
        if cur is None:
            continue
        d = instance_delta(cur, previous.get(t.instance))
        points += instance_points(t, cur, d, gpus)
        by_service[t.service].append((t, cur, d))
    for service in sorted({t.service for t in targets} | set(gateway)):
        points += service_points(service, by_service.get(service, []), gpus, gateway.get(service))
    per_node = defaultdict(int)
    for t in targets:
        per_node[t.node] += 1
    for n in nodes:
        points += node_points(n, node_readings.get(n.name), per_node[n.name])
    for cluster in sorted({n.cluster for n in nodes}):
        points += cluster_points(cluster, nodes, node_readings, targets)
    return points


def gateway_counts(
    prev: Mapping[tuple[str, str], float] | None, cur: Mapping[tuple[str, str], float], dt: float
) -> dict[str, GatewayCounts]:
    """Per-service response rates from the gateway's cumulative counts keyed by (service, status)."""
    if prev is None or dt <= 0:
        return {}
    totals: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0, 0.0])
    for (service, status), value in cur.items():
        n = counter_delta(prev.get((service, status), 0.0), value)
        row = totals[service]
        row[0] += n
        if status.startswith("4"):
            row[1] += n
        elif status.startswith("5"):
            row[2] += n
    return {s: GatewayCounts(r / dt, c / dt, e / dt) for s, (r, c, e) in totals.items()}
