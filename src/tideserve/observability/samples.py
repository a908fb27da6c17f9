"""One scrape of an engine's `/metrics`, and what two scrapes in a row say about the time between them.

Engines publish cumulative counters and histograms; what users look at is per-interval: requests/s,
tokens/s, the hit rate and TTFT/TPOT/E2E quantiles of the requests that finished in the interval. Those
come from the difference of two samples, so a histogram is kept whole (bucket bounds and cumulative
counts) and quantiles are estimated the way PromQL's histogram_quantile does: linear inside a bucket.
Histograms of one service's instances share bounds, so their deltas add up into service quantiles.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from prometheus_client.parser import text_string_to_metric_families

from tideserve.observability.engine_metrics import aliases, total_samples

# canonical -> names engines use (first found wins), from the engine adapters: builtin (vLLM v1's
# names), vLLM with its older names, then SGLang
COUNTER_ALIASES: dict[str, tuple[str, ...]] = aliases(
    "prompt_tokens", "generation_tokens", "preemptions", "prefix_queries", "prefix_hits"
)
GAUGE_ALIASES: dict[str, tuple[str, ...]] = aliases("running", "waiting", "kv_usage")
HISTOGRAM_ALIASES: dict[str, tuple[str, ...]] = aliases("ttft", "tpot", "e2e", "queue")


@dataclass(frozen=True)
class Histogram:
    bounds: tuple[float, ...]  # upper bounds, ascending, the last one +Inf
    counts: tuple[float, ...]  # cumulative, one per bound
    total: float = 0.0  # sum of observations

    @property
    def count(self) -> float:
        return self.counts[-1] if self.counts else 0.0


@dataclass(frozen=True)
class EngineSample:
    gauges: dict[str, float] = field(default_factory=dict)
    counters: dict[str, float] = field(default_factory=dict)
    histograms: dict[str, Histogram] = field(default_factory=dict)


def parse_sample(text: str) -> EngineSample:
    """Raises ValueError on text that is not the Prometheus exposition format. Samples of one name are
    summed over their labels (an engine with several model names or data-parallel ranks is one
    instance)."""
    flat: dict[str, float] = {}
    buckets: dict[str, dict[float, float]] = {}
    sums: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for s in total_samples(family):
            if family.type == "histogram":
                if s.name.endswith("_bucket"):
                    per = buckets.setdefault(family.name, {})
                    bound = float(s.labels["le"])
                    per[bound] = per.get(bound, 0.0) + s.value
                elif s.name.endswith("_sum"):
                    sums[family.name] = sums.get(family.name, 0.0) + s.value
                continue
            name = s.name.removesuffix("_total")
            flat[name] = flat.get(name, 0.0) + s.value

    def first(aliases: Iterable[str], table: Mapping[str, object]) -> str | None:
        return next((n for n in aliases if n in table), None)

    gauges = {k: flat[n] for k, names in GAUGE_ALIASES.items() if (n := first(names, flat)) is not None}
    counters = {k: flat[n] for k, names in COUNTER_ALIASES.items() if (n := first(names, flat)) is not None}
    histograms = {}
    for key, names in HISTOGRAM_ALIASES.items():
        n = first(names, buckets)
        if n is not None:
            bounds = tuple(sorted(buckets[n]))
            histograms[key] = Histogram(bounds, tuple(buckets[n][b] for b in bounds), sums.get(n, 0.0))
    if "kv_usage" in gauges:
        gauges["kv_usage"] = min(1.0, max(0.0, gauges["kv_usage"]))
    return EngineSample(gauges, counters, histograms)


def counter_delta(prev: float | None, cur: float) -> float:
    """Growth since the previous sample; a counter that went down was reset (engine restart), so
    everything it holds now is new."""
    if prev is None:
        return 0.0
    return cur - prev if cur >= prev else cur


def histogram_delta(prev: Histogram | None, cur: Histogram) -> Histogram | None:
    """Observations between two samples; None without a usable previous sample (first scrape, or the
    engine changed its buckets)."""
    if prev is None or prev.bounds != cur.bounds:
        return None
    if cur.count < prev.count:  # reset
        return cur
    counts = tuple(max(0.0, c - p) for c, p in zip(cur.counts, prev.counts, strict=True))
    return Histogram(cur.bounds, counts, max(0.0, cur.total - prev.total))


def merge(histograms: Iterable[Histogram]) -> Histogram | None:
    """Sum of histograms with the same bounds (instances of one service); others are left out."""
    merged: Histogram | None = None
    for h in histograms:
        if merged is None:
            merged = h
        elif h.bounds == merged.bounds:
            counts = tuple(a + b for a, b in zip(merged.counts, h.counts, strict=True))
            merged = Histogram(merged.bounds, counts, merged.total + h.total)
    return merged


def quantile(h: Histogram, q: float) -> float | None:
    """The q-quantile of a (delta) histogram, None when it holds no observation. Linear inside the
    bucket it falls in; in the +Inf bucket, the highest finite bound (nothing better is known)."""
    total = h.count
    if total <= 0:
        return None
    rank = q * total
    lower_bound, lower_count = 0.0, 0.0
    for bound, count in zip(h.bounds, h.counts, strict=True):
        if count >= rank:
            if math.isinf(bound):
                return lower_bound
            if count == lower_count:
                return bound
            return lower_bound + (bound - lower_bound) * (rank - lower_count) / (count - lower_count)
        lower_bound, lower_count = bound, count
    return lower_bound
