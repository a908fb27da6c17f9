"""The Grafana dashboard asks only for series `/metrics` publishes: every metric name in its queries is
one that a collector round emits, so a renamed figure fails here instead of leaving an empty panel."""

import json
import math
import re
from pathlib import Path

import pytest

from tideserve.observability import rollup
from tideserve.observability.gpus import GpuReading
from tideserve.observability.rollup import GatewayCounts, NodeFacts, NodeReading, Reading, Target
from tideserve.observability.samples import EngineSample, Histogram

DASHBOARD = Path(__file__).parents[2] / "examples" / "grafana" / "tideserve.json"

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')
# matchers, ranges and label lists hold label names and durations, not metric names
_NOT_NAMES = re.compile(
    r"\{[^}]*\}|\[[^\]]*\]|\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)"
)
_IDENT = re.compile(r"\b([a-zA-Z_:][a-zA-Z0-9_:]*)\b(?!\s*\()")  # not followed by "(": not a function
_KEYWORDS = {"and", "or", "unless", "bool", "offset"}
_LABEL_VALUES = re.compile(r"label_values\(\s*([a-zA-Z_:][a-zA-Z0-9_:]*)\s*,")


def metric_names(expr: str) -> set[str]:
    bare = _NOT_NAMES.sub(" ", _STRING.sub('""', expr))
    return {m for m in _IDENT.findall(bare) if m not in _KEYWORDS}


@pytest.mark.parametrize(
    ("expr", "want"),
    [
        ('tideserve_service_ttft_seconds{service=~"$service"}', {"tideserve_service_ttft_seconds"}),
        (
            'sum by (cluster) (a{cluster=~"x"}) / (sum by (cluster) (b_total{cluster=~"x"}) > 0)',
            {"a", "b_total"},
        ),
        ("rate(c[$__rate_interval]) and on(job) up offset 5m", {"c", "up"}),
        ('label_replace(m, "dst", "$1", "src", "(.*)")', {"m"}),
    ],
)
def test_metric_names(expr, want):
    assert metric_names(expr) == want


def emitted_names() -> set[str]:
    """Every name one round emits when every figure is known: an instance read twice, with all three
    latency histograms, prefix-cache traffic and a GPU, on a node with a GPU reading, plus gateway counts."""

    def sample(n: float) -> EngineSample:
        return EngineSample(
            gauges={"running": 1.0, "waiting": 1.0, "kv_usage": 0.5},
            counters={k: n for k in ("prompt_tokens", "generation_tokens", "prefix_queries", "prefix_hits")},
            histograms={k: Histogram((0.1, math.inf), (n, n), n) for k in rollup.LATENCIES},
        )

    target = Target("i1", "chat", "n1", "local", "Running", gpus=(0,), cpu_request=1, memory_request=1)
    gpu = GpuReading(0, 0.5, 1, 2, 40.0, 100.0)
    points = rollup.rollup(
        [target],
        {"i1": Reading(2.0, sample(2), 2.0, 100)},
        {"i1": Reading(1.0, sample(1), 1.0, 100)},
        [NodeFacts("n1", "local", cpus=2, memory_bytes=4, gpus=1, gpu_memory_bytes=2)],
        {"n1": NodeReading(1.0, 1, 4, (gpu,))},
        {"chat": GatewayCounts(1.0, 0.1, 0.1)},
    )
    return {name for name, _, _ in points}


def test_dashboard_asks_only_for_emitted_metrics():
    dashboard = json.loads(DASHBOARD.read_text())
    asked: set[str] = set()
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            names = metric_names(target["expr"])
            assert names, f"panel {panel['title']!r}: no metric in {target['expr']!r}"
            asked |= names
    for var in dashboard["templating"]["list"]:
        if var["type"] == "query":
            asked |= set(_LABEL_VALUES.findall(var["definition"]))
    assert asked - emitted_names() == set()
    assert len(asked) > 40  # the extraction found the dashboard's metrics, not nothing


def test_dashboard_reads_through_its_datasource_variable():
    dashboard = json.loads(DASHBOARD.read_text())
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    assert {"service", "node", "cluster"} <= set(variables)
    panels = [p for p in dashboard["panels"] if p["type"] != "row"]
    for p in panels:
        assert p["datasource"]["uid"] == "${datasource}", p["title"]
        assert all(t["datasource"]["uid"] == "${datasource}" for t in p["targets"]), p["title"]
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
