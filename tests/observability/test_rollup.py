import math

import pytest

from tideserve.observability.gpus import GpuReading
from tideserve.observability.rollup import (
    GatewayCounts,
    NodeFacts,
    NodeReading,
    Reading,
    Target,
    gateway_counts,
    instance_delta,
    rollup,
)
from tideserve.observability.samples import EngineSample, Histogram

INF = math.inf
B = (0.1, 1.0, INF)


def sample(
    running=0.0, kv=0.0, gen=0.0, queries=0.0, hits=0.0, ttft=(0, 0, 0), e2e=(0, 0, 0)
) -> EngineSample:
    return EngineSample(
        gauges={"running": running, "waiting": 0.0, "kv_usage": kv},
        counters={
            "generation_tokens": gen,
            "prompt_tokens": 0.0,
            "prefix_queries": queries,
            "prefix_hits": hits,
        },
        histograms={"ttft": Histogram(B, ttft), "e2e": Histogram(B, e2e)},
    )


A = Target("a", "chat", "n1", "local", "Running", gpus=(0,), cpu_request=2, memory_request=2**30)
Bt = Target("b", "chat", "n1", "local", "Running", gpus=(1,), cpu_request=2, memory_request=2**30)
C = Target("c", "chat", "n1", "local", "Starting", cpu_request=1)
NODE = NodeFacts("n1", "local", cpus=8, memory_bytes=16 * 2**30, gpus=2, gpu_memory_bytes=2 * 80 * 2**30)
GPUS = (
    GpuReading(0, 0.5, 10 * 2**30, 80 * 2**30, 40.0, 200.0),
    GpuReading(1, 0.1, 2 * 2**30, 80 * 2**30, 35.0, 90.0),
)
NODE_READING = NodeReading(cpu_used=3.0, memory_used=4 * 2**30, memory_total=16 * 2**30, gpus=GPUS)
PREV = {
    "a": Reading(100.0, sample(gen=100, queries=100, hits=50, ttft=(1, 1, 1), e2e=(0, 1, 1)), 10.0, 100),
    "b": Reading(100.0, sample(gen=0, ttft=(0, 0, 0), e2e=(0, 0, 0)), 5.0, 100),
}
CUR = {
    "a": Reading(
        110.0,
        sample(running=2, kv=0.4, gen=300, queries=300, hits=200, ttft=(9, 11, 11), e2e=(0, 6, 11)),
        15.0,
        300,
    ),
    "b": Reading(110.0, sample(running=1, kv=0.2, gen=100, ttft=(0, 10, 10), e2e=(0, 5, 10)), 10.0, 100),
    "c": Reading(110.0, None, 11.0, 50),  # starting: a process, no metrics yet
}


def points_by_key(points):
    return {(name, tuple(sorted(labels.items()))): value for name, labels, value in points}


def get(points, name, **labels):
    return points_by_key(points)[(name, tuple(sorted(labels.items())))]


@pytest.fixture
def points():
    gw = {"chat": GatewayCounts(requests_per_s=2.5, client_errors_per_s=0.1, server_errors_per_s=0.2)}
    return rollup([A, Bt, C], CUR, PREV, [NODE], {"n1": NODE_READING}, gw)


@pytest.mark.parametrize(
    ("name", "labels", "want"),
    [
        ("tideserve_instance_up", {"instance": "a"}, 1.0),
        ("tideserve_instance_up", {"instance": "c"}, 0.0),
        ("tideserve_instance_running_requests", {"instance": "a"}, 2.0),
        ("tideserve_instance_generation_tokens_per_second", {"instance": "a"}, 20.0),  # 200 in 10 s
        ("tideserve_instance_requests_per_second", {"instance": "a"}, 1.0),  # 10 e2e observations
        ("tideserve_instance_prefix_cache_hit_ratio", {"instance": "a"}, 0.75),  # 150 of 200
        ("tideserve_instance_cpu_cores", {"instance": "a"}, 0.5),  # 5 CPU s in 10 s
        ("tideserve_instance_memory_bytes", {"instance": "a"}, 300.0),
        ("tideserve_instance_gpu_utilization_ratio", {"instance": "a"}, 0.5),
        ("tideserve_instance_gpu_memory_bytes", {"instance": "b"}, 2.0 * 2**30),
    ],
)
def test_instance_points(points, name, labels, want):
    inst = {"a": A, "b": Bt, "c": C}[labels["instance"]]
    full = {"service": "chat", "instance": inst.instance, "node": "n1", "cluster": "local"}
    assert get(points, name, **full) == pytest.approx(want)


@pytest.mark.parametrize(
    ("name", "extra", "want"),
    [
        ("tideserve_service_instances", {}, 3.0),
        ("tideserve_service_ready_instances", {}, 2.0),
        ("tideserve_service_running_requests", {}, 3.0),  # summed
        ("tideserve_service_kv_cache_usage_ratio", {}, 0.3),  # averaged over scraped instances
        ("tideserve_service_requests_per_second", {}, 2.0),
        ("tideserve_service_generation_tokens_per_second", {}, 30.0),
        ("tideserve_service_prefix_cache_hit_ratio", {}, 0.75),  # b made no queries
        # merged TTFT deltas: a (8, 10, 10) + b (0, 10, 10) -> (8, 20, 20): p50 is rank 10 in (0.1, 1]
        ("tideserve_service_ttft_seconds", {"quantile": "0.5"}, 0.1 + 0.9 * 2 / 12),
        ("tideserve_service_ttft_seconds", {"quantile": "0.99"}, 0.1 + 0.9 * (19.8 - 8) / 12),
        ("tideserve_service_cpu_cores_per_instance", {}, (0.5 + 0.5) / 2),  # c has no previous reading
        ("tideserve_service_memory_bytes_per_instance", {}, 150.0),
        ("tideserve_service_gpu_utilization_ratio", {}, 0.3),
        ("tideserve_service_server_errors_per_second", {}, 0.2),
    ],
)
def test_service_points(points, name, extra, want):
    assert get(points, name, service="chat", **extra) == pytest.approx(want)


def test_unknown_figures_are_left_out_not_zero(points):
    names = {name for name, _, _ in points}
    assert "tideserve_service_tpot_seconds" not in names  # no engine published a TPOT histogram
    first_round = rollup([A], {"a": CUR["a"]}, {}, [NODE], {}, {})
    assert not [p for p in first_round if p[0].endswith("_per_second")]  # no rate without a previous sample


@pytest.mark.parametrize(
    ("name", "extra", "want"),
    [
        ("tideserve_node_cpu_used_cores", {}, 3.0),
        ("tideserve_node_instances", {}, 3.0),
        ("tideserve_node_gpu_temperature_celsius", {"gpu": "0"}, 40.0),
        ("tideserve_node_gpu_power_watts", {"gpu": "1"}, 90.0),
    ],
)
def test_node_points(points, name, extra, want):
    assert get(points, name, node="n1", cluster="local", **extra) == want


@pytest.mark.parametrize(
    ("name", "want"),
    [
        ("tideserve_cluster_cpu_cores", 8.0),
        ("tideserve_cluster_cpu_allocated_cores", 5.0),
        ("tideserve_cluster_cpu_used_cores", 3.0),
        ("tideserve_cluster_memory_allocated_bytes", 2.0 * 2**30),
        ("tideserve_cluster_gpus", 2.0),
        ("tideserve_cluster_gpus_allocated", 2.0),
        ("tideserve_cluster_gpu_memory_used_bytes", 12.0 * 2**30),
        ("tideserve_cluster_gpu_utilization_ratio", 0.3),
        ("tideserve_cluster_services", 1.0),
    ],
)
def test_cluster_points(points, name, want):
    assert get(points, name, cluster="local") == pytest.approx(want)


def test_instance_delta_without_history_or_going_back_in_time():
    assert instance_delta(CUR["a"], None).requests_per_s is None
    assert instance_delta(PREV["a"], CUR["a"]).cpu_cores is None  # time went backwards


@pytest.mark.parametrize(
    ("serving", "want_requests_per_s", "want_gen_per_s"),
    [
        (False, 1.1, 30.0),  # seen while starting: every count since is new
        (True, None, None),  # seen serving but not scraped (a failed scrape): no baseline
    ],
)
def test_instance_delta_after_a_reading_without_metrics(serving, want_requests_per_s, want_gen_per_s):
    prev = Reading(100.0, None, 10.0, 100, serving=serving)
    d = instance_delta(CUR["a"], prev)
    assert d.requests_per_s == pytest.approx(want_requests_per_s)
    assert d.generation_tokens_per_s == pytest.approx(want_gen_per_s)
    assert (d.histograms.get("ttft") == CUR["a"].sample.histograms["ttft"]) is (not serving)


@pytest.mark.parametrize(
    ("prev", "cur", "want"),
    [
        (None, {("chat", "200"): 5.0}, {}),
        (
            {("chat", "200"): 5.0, ("chat", "429"): 1.0},
            {("chat", "200"): 25.0, ("chat", "429"): 3.0, ("chat", "503"): 2.0, ("code", "200"): 10.0},
            {"chat": GatewayCounts(2.4, 0.2, 0.2), "code": GatewayCounts(1.0, 0.0, 0.0)},
        ),
    ],
)
def test_gateway_counts(prev, cur, want):
    assert gateway_counts(prev, cur, 10.0) == want
