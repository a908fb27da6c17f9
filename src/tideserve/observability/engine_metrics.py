"""Read an engine's Prometheus text into the load figures the gateway and autoscaler use.

Builtin and vLLM instances publish vLLM's v1 names; SGLang publishes its own, mapped here, so every
consumer sees one vocabulary (DESIGN.md, "Contracts"). Parsing is prometheus_client's.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families

# canonical name -> names engines use for it (first found wins); samples are summed over labels
ALIASES: dict[str, tuple[str, ...]] = {
    "running": ("vllm:num_requests_running", "sglang:num_running_reqs"),
    "waiting": ("vllm:num_requests_waiting", "sglang:num_queue_reqs"),
    "kv_usage": ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc", "sglang:token_usage"),
    "prefix_queries": ("vllm:prefix_cache_queries",),
    "prefix_hits": ("vllm:prefix_cache_hits",),
    "cache_tokens": ("vllm:cache_tokens", "sglang:max_total_num_tokens"),
}


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
        for sample in family.samples:
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
