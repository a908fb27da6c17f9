"""Read an engine's Prometheus text into the load figures the gateway and autoscaler use.

Builtin and vLLM instances publish vLLM's v1 names; SGLang publishes its own. Which names mean what
comes from the engine adapters, so every consumer sees one vocabulary (DESIGN.md, "Contracts").
Parsing is prometheus_client's.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass

from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from tideserve.backends import ADAPTERS


def aliases(*keys: str) -> dict[str, tuple[str, ...]]:
    """Canonical name -> every name an engine publishes it under, from the adapters (builtin, vllm,
    sglang, in that order, each engine's most recent name first), without repeats. The first name found
    in a scrape wins: an engine publishes only its own names, so the order matters only between a
    release's name and the older ones it replaced."""
    found: dict[str, tuple[str, ...]] = {}
    for key in keys:
        names: dict[str, None] = {}  # an ordered set
        for adapter in ADAPTERS.values():
            names.update(dict.fromkeys(adapter.metric_names.get(key, ())))
        found[key] = tuple(names)
    return found


# canonical name -> names engines use for it (first found wins); samples are summed over labels
ALIASES: dict[str, tuple[str, ...]] = aliases(
    "running", "waiting", "kv_usage", "prefix_queries", "prefix_hits", "cache_tokens"
)


def total_samples(family: Metric) -> Sequence[Sample]:
    """The samples of a family to sum. Under priority scheduling SGLang publishes each scheduler gauge
    twice, the total under priority="" and a breakdown under priority="<n>": summing both would count
    every request twice, so a family with such a total keeps only it. Per-request series carry just
    the request's priority and are summed whole."""
    if any(s.labels.get("priority") == "" for s in family.samples):
        return [s for s in family.samples if s.labels.get("priority", "") == ""]
    return family.samples


@dataclass(frozen=True)
class EngineLoad:
    running: float = 0.0
    waiting: float = 0.0
    kv_usage: float = 0.0  # 0..1
    prefix_queries: float = 0.0
    prefix_hits: float = 0.0
    cache_tokens: float = 0.0  # KV-cache capacity in tokens; 0 when the engine does not say


def parse_engine_metrics(text: str) -> EngineLoad:
    """Raises ValueError on text that is not the Prometheus exposition format."""
    values: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in total_samples(family):
            if sample.name == "vllm:cache_config_info":  # the numbers are labels of an info gauge
                labels = sample.labels
                with contextlib.suppress(KeyError, ValueError):
                    blocks, size = int(labels["num_gpu_blocks"]), int(labels["block_size"])
                    values["vllm:cache_tokens"] = float(blocks * size)
                continue
            # counters appear as NAME_total; every label combination is summed
            name = sample.name.removesuffix("_total")
            values[name] = values.get(name, 0.0) + sample.value
    found: dict[str, float] = {}
    for canonical, names in ALIASES.items():
        value = next((values[n] for n in names if n in values), None)
        if value is not None:
            found[canonical] = value
    if "kv_usage" in found:
        found["kv_usage"] = min(1.0, max(0.0, found["kv_usage"]))
    return EngineLoad(**found)
