"""Prometheus metrics under vLLM v1's names, so the gateway, autoscaler and collector read the
built-in engine exactly as they read vLLM."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics

from tideserve.engine.scheduler import Scheduler
from tideserve.engine.sequence import Sequence

# vLLM exposes no *_created series; neither do we, so queries match sample for sample.
disable_created_metrics()

# Buckets as vLLM uses them, so dashboards built for vLLM work unchanged.
_TTFT_BUCKETS = (
    0.001,
    0.005,
    0.01,
    0.02,
    0.04,
    0.06,
    0.08,
    0.1,
    0.25,
    0.5,
    0.75,
    1.0,
    2.5,
    5.0,
    7.5,
    10.0,
    20.0,
    40.0,
    80.0,
    160.0,
    640.0,
    2560.0,
)
_ITL_BUCKETS = (
    0.01,
    0.025,
    0.05,
    0.075,
    0.1,
    0.15,
    0.2,
    0.3,
    0.4,
    0.5,
    0.75,
    1.0,
    2.5,
    5.0,
    7.5,
    10.0,
    20.0,
    40.0,
    80.0,
)
_E2E_BUCKETS = (
    0.3,
    0.5,
    0.8,
    1.0,
    1.5,
    2.0,
    2.5,
    5.0,
    10.0,
    15.0,
    20.0,
    30.0,
    40.0,
    50.0,
    60.0,
    120.0,
    240.0,
    480.0,
    960.0,
    1920.0,
    7680.0,
)


class EngineMetrics:
    def __init__(self, model_name: str, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        labels = ["model_name"]

        def gauge(name: str, doc: str) -> Gauge:
            return Gauge(name, doc, labels, registry=self.registry).labels(model_name)

        def counter(name: str, doc: str) -> Counter:
            return Counter(name, doc, labels, registry=self.registry).labels(model_name)

        def hist(name: str, doc: str, buckets: tuple[float, ...]) -> Histogram:
            return Histogram(name, doc, labels, buckets=buckets, registry=self.registry).labels(model_name)

        self.running = gauge("vllm:num_requests_running", "Requests in the running batch.")
        self.waiting = gauge("vllm:num_requests_waiting", "Requests waiting to be scheduled.")
        self.kv_usage = gauge("vllm:kv_cache_usage_perc", "KV-cache usage, 0..1 (1 = full).")
        self.prefix_queries = counter(
            "vllm:prefix_cache_queries", "Prompt tokens looked up in the prefix cache."
        )
        self.prefix_hits = counter("vllm:prefix_cache_hits", "Prompt tokens found in the prefix cache.")
        self.prompt_tokens = counter("vllm:prompt_tokens", "Prompt tokens of finished requests.")
        self.generation_tokens = counter("vllm:generation_tokens", "Generated tokens.")
        self.preemptions = counter("vllm:num_preemptions", "Preemptions (recompute) of running requests.")
        self.ttft = hist("vllm:time_to_first_token_seconds", "Time to first token.", _TTFT_BUCKETS)
        self.itl = hist("vllm:inter_token_latency_seconds", "Time between output tokens.", _ITL_BUCKETS)
        self.e2e = hist(
            "vllm:e2e_request_latency_seconds", "Request latency, arrival to finish.", _E2E_BUCKETS
        )
        self.queue_time = hist(
            "vllm:request_queue_time_seconds", "Time waiting before first scheduled.", _E2E_BUCKETS
        )
        self._synced = (0, 0, 0)

    def cache_config(self, num_blocks: int, block_size: int) -> None:
        """vLLM's info gauge: routers size their picture of this engine's prefix cache from it."""
        Gauge(
            "vllm:cache_config_info",
            "Information of the KV cache configuration.",
            ["num_gpu_blocks", "block_size"],
            registry=self.registry,
        ).labels(str(num_blocks), str(block_size)).set(1)

    def sync_counters(self, scheduler: Scheduler) -> None:
        # The scheduler keeps plain totals (it knows nothing of Prometheus); publish the deltas.
        now = (scheduler.prefix_queries, scheduler.prefix_hits, scheduler.num_preemptions)
        q, h, p = (a - b for a, b in zip(now, self._synced, strict=True))
        if q:
            self.prefix_queries.inc(q)
        if h:
            self.prefix_hits.inc(h)
        if p:
            self.preemptions.inc(p)
        self._synced = now

    def finished(self, seq: Sequence, now: float) -> None:
        self.prompt_tokens.inc(seq.num_prompt_tokens)
        self.e2e.observe(now - seq.arrival_time)
