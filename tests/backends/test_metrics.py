"""Real `/metrics` text of each targeted engine release (fixtures/<engine>-<version>.metrics.txt, made
by the engines' own metric code, see fixtures/README.md) maps to the canonical figures the engine
was made to record, through both scrapers: the gateway's load view and the collector's samples."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from tideserve.observability.engine_metrics import ALIASES, EngineLoad, parse_engine_metrics
from tideserve.observability.samples import (
    COUNTER_ALIASES,
    GAUGE_ALIASES,
    HISTOGRAM_ALIASES,
    parse_sample,
)

FIXTURES = Path(__file__).parent / "fixtures"


@dataclass(frozen=True)
class Expected:
    load: EngineLoad
    gauges: dict[str, float]
    counters: dict[str, float]
    histograms: dict[str, tuple[float, float]]  # key -> (observations, their sum)


# What fixtures/dump_metrics.py made each engine record (its RECORDED table), in canonical terms.
EXPECTED = {
    "vllm-0.33.0": Expected(
        EngineLoad(
            running=3, waiting=2, kv_usage=0.25, prefix_queries=1000, prefix_hits=640, cache_tokens=2048 * 16
        ),
        {"running": 3, "waiting": 2, "kv_usage": 0.25},
        {"prompt_tokens": 1000, "generation_tokens": 150, "preemptions": 1}
        | {"prefix_queries": 1000, "prefix_hits": 640},
        {"ttft": (2, 0.35), "tpot": (3, 0.08), "e2e": (1, 1.2), "queue": (1, 0.004)},
    ),
    # Under priority scheduling SGLang also publishes per-priority breakdowns of its queue gauges;
    # the totals are what count (4 running, 7 waiting, not twice that).
    "sglang-0.5.23": Expected(
        EngineLoad(
            running=4, waiting=7, kv_usage=0.75, prefix_queries=1000, prefix_hits=520, cache_tokens=50000
        ),
        {"running": 4, "waiting": 7, "kv_usage": 0.75},
        {"prompt_tokens": 1000, "generation_tokens": 150, "preemptions": 2}
        | {"prefix_queries": 1000, "prefix_hits": 520},
        {"ttft": (2, 0.11), "tpot": (6, 0.08), "e2e": (2, 2.7), "queue": (2, 0.52)},
    ),
}


def test_every_fixture_has_expectations() -> None:
    names = sorted(p.name.removesuffix(".metrics.txt") for p in FIXTURES.glob("*.metrics.txt"))
    assert names == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_load_view(name: str) -> None:
    load = parse_engine_metrics((FIXTURES / f"{name}.metrics.txt").read_text())
    assert vars(load) == pytest.approx(vars(EXPECTED[name].load))


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_samples(name: str) -> None:
    sample = parse_sample((FIXTURES / f"{name}.metrics.txt").read_text())
    want = EXPECTED[name]
    assert sample.gauges == pytest.approx(want.gauges)
    assert sample.counters == pytest.approx(want.counters)
    assert set(sample.histograms) == set(want.histograms)
    for key, (count, total) in want.histograms.items():
        h = sample.histograms[key]
        assert (h.count, h.total) == pytest.approx((count, total)), key
    for h in sample.histograms.values():
        assert h.bounds[-1] == float("inf") and list(h.counts) == sorted(h.counts)


def test_aliases_keep_their_keys_and_put_the_canonical_name_first() -> None:
    assert set(ALIASES) == {"running", "waiting", "kv_usage", "prefix_queries", "prefix_hits", "cache_tokens"}
    assert set(COUNTER_ALIASES) == {
        "prompt_tokens",
        "generation_tokens",
        "preemptions",
        "prefix_queries",
        "prefix_hits",
    }
    assert set(GAUGE_ALIASES) == {"running", "waiting", "kv_usage"}
    assert set(HISTOGRAM_ALIASES) == {"ttft", "tpot", "e2e", "queue"}
    assert ALIASES["kv_usage"] == (
        "vllm:kv_cache_usage_perc",
        "vllm:gpu_cache_usage_perc",
        "sglang:token_usage",
    )
    every = [ALIASES, COUNTER_ALIASES, GAUGE_ALIASES, HISTOGRAM_ALIASES]
    assert all(len(set(names)) == len(names) for table in every for names in table.values())
