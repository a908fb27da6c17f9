"""Memory and speed of the embedded time-series store (src/tideserve/observability/tsdb.py).

Two cases at DEFAULT_TIERS, series named like a scrape of a small fleet (15 metric names; labels
service, instance, node, cluster):

- 1,000 series, each filled with a full day of 5 s samples (17,280 points a series);
- 10,000 series, each filled with 30 min of 5 s samples only, so the run fits in 2 minutes on 2 cores.
  Rings are allocated whole when a series appears, so memory is already at its steady state; only
  the query figures see fewer points.

Per case: memory_bytes() and tracemalloc bytes per 1,000 series, add() throughput (the driving loop
included), query() latency over one series for a 1 h and a 7 d range, latest() over every series of
one name, save/load time and file size. tracemalloc slows allocation-heavy code several times over,
so it traces a separate build of the same series filled with one minute of samples (steady state,
see above) rather than the timed fill.

query() and latest() scan every series of the name (no label index), so their cost grows with the
series per name, not with the points returned.

    .venv/bin/python bench/tsdb.py     # ~70 s on 2 cores; JSON to bench/results/tsdb-<timestamp>.json
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import tempfile
import time
import tracemalloc
from dataclasses import asdict, dataclass
from pathlib import Path

from tideserve.observability.tsdb import DEFAULT_TIERS, TimeSeriesStore

RESULTS = Path(__file__).resolve().parent / "results"
STEP_S = 5
T0 = 1_780_000_000  # a fixed start, so that slot boundaries are the same from run to run
NAMES = [
    "tideserve_requests_running",
    "tideserve_requests_waiting",
    "tideserve_kv_cache_usage",
    "tideserve_prefix_hit_rate",
    "tideserve_ttft_p50_seconds",
    "tideserve_ttft_p99_seconds",
    "tideserve_itl_p50_seconds",
    "tideserve_generation_tokens_per_second",
    "tideserve_prompt_tokens_per_second",
    "tideserve_gpu_utilization",
    "tideserve_gpu_memory_used_bytes",
    "tideserve_cpu_seconds_rate",
    "tideserve_resident_memory_bytes",
    "tideserve_http_requests_per_second",
    "tideserve_http_errors_per_second",
]
SERVICES = ["gateway", "engine-llama-8b", "engine-qwen-7b", "engine-mistral-7b", "autoscaler"]


@dataclass
class Case:
    series: int
    points_per_series: int
    memory_bytes_per_1k: float = 0.0
    tracemalloc_bytes_per_1k: float = 0.0
    add_points_per_s: float = 0.0
    query_1h_us: float = 0.0
    query_1h_points: int = 0
    query_7d_us: float = 0.0
    query_7d_points: int = 0
    latest_us: float = 0.0
    latest_series: int = 0
    save_s: float = 0.0
    load_s: float = 0.0
    file_bytes: int = 0


def fleet(n: int) -> list[tuple[str, dict[str, str]]]:
    """n series: every instance exports each of the 15 metric names."""
    out = []
    for i in range(n):
        instance = i // len(NAMES)
        service = SERVICES[instance % len(SERVICES)]
        labels = {
            "service": service,
            "instance": f"{service}-{instance:05d}",
            "node": f"node-{instance // 4:04d}",
            "cluster": f"cluster-{instance % 3}",
        }
        out.append((NAMES[i % len(NAMES)], labels))
    return out


def fill(store: TimeSeriesStore, series: list[tuple[str, dict[str, str]]], points: int) -> None:
    """Scrape order: every series at one timestamp, then the next timestamp."""
    add = store.add
    for k in range(points):
        t = T0 + k * STEP_S
        for j, (name, labels) in enumerate(series):
            add(name, labels, t, float(j + k % 100))


def median_us(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e6


def run(n: int, points: int) -> Case:
    case = Case(n, points)
    series = fleet(n)
    per_1k = 1000 / n

    tracemalloc.start()
    traced = TimeSeriesStore(DEFAULT_TIERS, max_series=n)
    fill(traced, series, 60 // STEP_S)
    case.tracemalloc_bytes_per_1k = tracemalloc.get_traced_memory()[0] * per_1k
    tracemalloc.stop()
    del traced

    store = TimeSeriesStore(DEFAULT_TIERS, max_series=n)
    start = time.perf_counter()
    fill(store, series, points)
    case.add_points_per_s = n * points / (time.perf_counter() - start)
    case.memory_bytes_per_1k = store.memory_bytes() * per_1k

    end = T0 + (points - 1) * STEP_S
    name, labels = series[0]
    hour, week = end - 3600, end - 7 * 86400
    case.query_1h_points = len(store.query(name, labels, hour, end)[0][1])
    case.query_1h_us = median_us(lambda: store.query(name, labels, hour, end), 50)
    case.query_7d_points = len(store.query(name, labels, week, end)[0][1])
    case.query_7d_us = median_us(lambda: store.query(name, labels, week, end), 50)
    case.latest_series = len(store.latest(name))
    case.latest_us = median_us(lambda: store.latest(name), 50)

    expected = store.query(name, labels, end - 86400, end)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "tsdb.bin"
        start = time.perf_counter()
        store.save(path)
        case.save_s = time.perf_counter() - start
        case.file_bytes = path.stat().st_size
        start = time.perf_counter()
        loaded = TimeSeriesStore.load(path, DEFAULT_TIERS, max_series=n)
        case.load_s = time.perf_counter() - start
    if loaded.series_count() != n or loaded.query(name, labels, end - 86400, end) != expected:
        raise SystemExit("save/load roundtrip lost data")
    return case


def main() -> None:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    ring_bytes = sum(t.slots for t in DEFAULT_TIERS) * 4
    print(f"tiers {DEFAULT_TIERS}; float32 rings alone: {ring_bytes * 1000 / 2**20:.1f} MiB per 1,000 series")
    print("10,000-series case: 30 min of samples per series, not a day (time budget); memory is unaffected")
    cases = []
    for n, points in ((1_000, 86400 // STEP_S), (10_000, 1800 // STEP_S)):
        t0 = time.perf_counter()
        cases.append(run(n, points))
        print(f"  {n:,} series x {points:,} points done in {time.perf_counter() - t0:.1f} s", flush=True)

    rows = [
        ("points per series", lambda c: f"{c.points_per_series:,}"),
        ("memory_bytes() per 1k series (MiB)", lambda c: f"{c.memory_bytes_per_1k / 2**20:.2f}"),
        ("tracemalloc per 1k series (MiB)", lambda c: f"{c.tracemalloc_bytes_per_1k / 2**20:.2f}"),
        ("add() throughput (points/s)", lambda c: f"{c.add_points_per_s:,.0f}"),
        ("query 1 h, one series (µs)", lambda c: f"{c.query_1h_us:.0f} ({c.query_1h_points} pts)"),
        ("query 7 d, one series (µs)", lambda c: f"{c.query_7d_us:.0f} ({c.query_7d_points} pts)"),
        ("latest(), one name (µs)", lambda c: f"{c.latest_us:.0f} ({c.latest_series} series)"),
        ("save (s)", lambda c: f"{c.save_s:.2f}"),
        ("load (s)", lambda c: f"{c.load_s:.2f}"),
        ("file size (MiB)", lambda c: f"{c.file_bytes / 2**20:.1f}"),
    ]
    header = ["", *(f"{c.series:,} series" for c in cases)]
    table = [header, *([label, *(fmt(c) for c in cases)] for label, fmt in rows)]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    for row in table:
        label, *cells = row
        print(label.ljust(widths[0]), *(c.rjust(w) for c, w in zip(cells, widths[1:], strict=True)), sep="  ")

    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"tsdb-{stamp}.json"
    meta = {"python": platform.python_version(), "machine": platform.machine(), "cpus": os.cpu_count()}
    out.write_text(
        json.dumps(
            {
                "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "platform": meta,
                "tiers": [asdict(t) for t in DEFAULT_TIERS],
                "cases": [asdict(c) for c in cases],
            },
            indent=2,
        )
    )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
