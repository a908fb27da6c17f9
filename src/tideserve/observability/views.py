"""What the API, the console and `tideserve top` show: service, node and cluster views read from a
metric source (the embedded store, or anything with the same two reads).

A view is `current` (each figure's newest point, if fresh) plus `series` (points over a window). The
tables below name each figure once: its short key, the stored metric and the labels that pick it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from contextlib import AbstractContextManager
from typing import Any, Protocol

# A figure older than this is not "current": its instance is gone or no longer scraped.
FRESH_S = 20.0
MAX_POINTS = 720  # per series in a response: enough for a chart, small enough for a page


class MetricSource(Protocol):
    def snapshot(self) -> AbstractContextManager[object]:
        """Held while one view is read, so its figures come from the same collection rounds."""
        ...

    def latest(
        self,
        name: str,
        match: Mapping[str, str] | None = None,
        max_age_s: float | None = None,
        now: float | None = None,
    ) -> list[tuple[dict[str, str], float, float]]: ...

    def query(
        self, name: str, match: Mapping[str, str] | None, start: float, end: float
    ) -> list[tuple[dict[str, str], list[tuple[float, float]]]]: ...


Figures = dict[str, tuple[str, dict[str, str]]]


def _latencies(prefix: str) -> Figures:
    return {
        f"{key}_p{q.removeprefix('0.').ljust(2, '0')}": (f"{prefix}_{key}_seconds", {"quantile": q})
        for key in ("ttft", "tpot", "e2e")
        for q in ("0.5", "0.9", "0.99")
    }


SERVICE: Figures = {
    **_latencies("tideserve_service"),
    "requests_per_s": ("tideserve_service_requests_per_second", {}),
    "gateway_requests_per_s": ("tideserve_service_gateway_requests_per_second", {}),
    "client_errors_per_s": ("tideserve_service_client_errors_per_second", {}),
    "server_errors_per_s": ("tideserve_service_server_errors_per_second", {}),
    "running": ("tideserve_service_running_requests", {}),
    "waiting": ("tideserve_service_waiting_requests", {}),
    "kv_cache_usage": ("tideserve_service_kv_cache_usage_ratio", {}),
    "prefix_cache_hit_rate": ("tideserve_service_prefix_cache_hit_ratio", {}),
    "prompt_tokens_per_s": ("tideserve_service_prompt_tokens_per_second", {}),
    "generation_tokens_per_s": ("tideserve_service_generation_tokens_per_second", {}),
    "cpu_cores_per_instance": ("tideserve_service_cpu_cores_per_instance", {}),
    "memory_bytes_per_instance": ("tideserve_service_memory_bytes_per_instance", {}),
    "gpu_utilization": ("tideserve_service_gpu_utilization_ratio", {}),
    "instances": ("tideserve_service_instances", {}),
    "ready_instances": ("tideserve_service_ready_instances", {}),
}
INSTANCE: Figures = {
    "up": ("tideserve_instance_up", {}),
    "running": ("tideserve_instance_running_requests", {}),
    "waiting": ("tideserve_instance_waiting_requests", {}),
    "kv_cache_usage": ("tideserve_instance_kv_cache_usage_ratio", {}),
    "requests_per_s": ("tideserve_instance_requests_per_second", {}),
    "generation_tokens_per_s": ("tideserve_instance_generation_tokens_per_second", {}),
    "prefix_cache_hit_rate": ("tideserve_instance_prefix_cache_hit_ratio", {}),
    "cpu_cores": ("tideserve_instance_cpu_cores", {}),
    "memory_bytes": ("tideserve_instance_memory_bytes", {}),
    "gpu_utilization": ("tideserve_instance_gpu_utilization_ratio", {}),
    "gpu_memory_bytes": ("tideserve_instance_gpu_memory_bytes", {}),
}
NODE: Figures = {
    "cpu_cores": ("tideserve_node_cpu_cores", {}),
    "cpu_used_cores": ("tideserve_node_cpu_used_cores", {}),
    "memory_bytes": ("tideserve_node_memory_bytes", {}),
    "memory_used_bytes": ("tideserve_node_memory_used_bytes", {}),
    "instances": ("tideserve_node_instances", {}),
}
GPU: Figures = {
    "utilization": ("tideserve_node_gpu_utilization_ratio", {}),
    "memory_used_bytes": ("tideserve_node_gpu_memory_used_bytes", {}),
    "memory_bytes": ("tideserve_node_gpu_memory_bytes", {}),
    "temperature_c": ("tideserve_node_gpu_temperature_celsius", {}),
    "power_w": ("tideserve_node_gpu_power_watts", {}),
}
CLUSTER: Figures = {
    "nodes": ("tideserve_cluster_nodes", {}),
    "services": ("tideserve_cluster_services", {}),
    "instances": ("tideserve_cluster_instances", {}),
    "cpu_cores": ("tideserve_cluster_cpu_cores", {}),
    "cpu_allocated_cores": ("tideserve_cluster_cpu_allocated_cores", {}),
    "cpu_used_cores": ("tideserve_cluster_cpu_used_cores", {}),
    "memory_bytes": ("tideserve_cluster_memory_bytes", {}),
    "memory_allocated_bytes": ("tideserve_cluster_memory_allocated_bytes", {}),
    "memory_used_bytes": ("tideserve_cluster_memory_used_bytes", {}),
    "gpus": ("tideserve_cluster_gpus", {}),
    "gpus_allocated": ("tideserve_cluster_gpus_allocated", {}),
    "gpu_memory_bytes": ("tideserve_cluster_gpu_memory_bytes", {}),
    "gpu_memory_used_bytes": ("tideserve_cluster_gpu_memory_used_bytes", {}),
    "gpu_utilization": ("tideserve_cluster_gpu_utilization_ratio", {}),
}
# water level: (used or allocated, capacity) -> share of capacity, for capacity planning
WATER_LEVELS = {
    "cpu_allocated": ("cpu_allocated_cores", "cpu_cores"),
    "cpu_used": ("cpu_used_cores", "cpu_cores"),
    "memory_allocated": ("memory_allocated_bytes", "memory_bytes"),
    "memory_used": ("memory_used_bytes", "memory_bytes"),
    "gpus_allocated": ("gpus_allocated", "gpus"),
    "gpu_memory_used": ("gpu_memory_used_bytes", "gpu_memory_bytes"),
}


def current(
    src: MetricSource, figures: Figures, match: Mapping[str, str], now: float
) -> dict[str, float | None]:
    out: dict[str, float | None] = {}
    for key, (name, extra) in figures.items():
        found = src.latest(name, {**match, **extra}, max_age_s=FRESH_S, now=now)
        out[key] = found[0][2] if len(found) == 1 else None
    return out


def series(
    src: MetricSource, figures: Figures, match: Mapping[str, str], start: float, end: float
) -> dict[str, list[list[float]]]:
    out = {}
    for key, (name, extra) in figures.items():
        found = src.query(name, {**match, **extra}, start, end)
        if len(found) == 1:
            out[key] = thin([[t, v] for t, v in found[0][1]])
    return out


def thin(points: list[list[float]], limit: int = MAX_POINTS) -> list[list[float]]:
    """Every k-th point, counted back from the newest (always kept), so a chart gets at most `limit`."""
    if len(points) <= limit:
        return points
    step = math.ceil(len(points) / limit)
    return points[len(points) - 1 :: -step][::-1]


def by_label(
    src: MetricSource, figures: Figures, match: Mapping[str, str], label: str, now: float
) -> dict[str, dict[str, float | None]]:
    """Current figures of every member (instance, gpu) under `match`, keyed by the member's label."""
    members: dict[str, dict[str, float | None]] = {}
    for key, (name, extra) in figures.items():
        for labels, _t, value in src.latest(name, {**match, **extra}, max_age_s=FRESH_S, now=now):
            member = labels.get(label)
            if member is not None:
                members.setdefault(member, dict.fromkeys(figures))[key] = value
    return members


def service_view(src: MetricSource, service: str, start: float, now: float) -> dict[str, Any]:
    with src.snapshot():
        match = {"service": service}
        return {
            "service": service,
            "current": current(src, SERVICE, match, now),
            "series": series(src, SERVICE, match, start, now),
            "instances": by_label(src, INSTANCE, match, "instance", now),
        }


def node_view(src: MetricSource, node: str, start: float, now: float) -> dict[str, Any]:
    with src.snapshot():
        match = {"node": node}
        return {
            "node": node,
            "current": current(src, NODE, match, now),
            "series": series(src, NODE, match, start, now),
            "gpus": by_label(src, GPU, match, "gpu", now),
            "instances": by_label(src, INSTANCE, match, "instance", now),
        }


def water_levels(figures: Mapping[str, float | None]) -> dict[str, float | None]:
    levels: dict[str, float | None] = {}
    for key, (part, whole) in WATER_LEVELS.items():
        p, w = figures.get(part), figures.get(whole)
        levels[key] = p / w if p is not None and w else None
    return levels


def cluster_view(src: MetricSource, cluster: str, start: float, now: float) -> dict[str, Any]:
    with src.snapshot():
        match = {"cluster": cluster}
        figures = current(src, CLUSTER, match, now)
        return {
            "cluster": cluster,
            "current": figures,
            "water_levels": water_levels(figures),
            "series": series(src, CLUSTER, match, start, now),
        }


def overview(src: MetricSource, now: float) -> dict[str, Any]:
    """Current figures of every service, node and cluster: one call for `tideserve top`."""
    with src.snapshot():
        return {
            "services": by_label(src, SERVICE, {}, "service", now),
            "nodes": by_label(src, NODE, {}, "node", now),
            "clusters": {
                name: {**figures, "water_levels": water_levels(figures)}
                for name, figures in by_label(src, CLUSTER, {}, "cluster", now).items()
            },
        }
