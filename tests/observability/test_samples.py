import math

import pytest

from tideserve.observability.samples import (
    Histogram,
    counter_delta,
    histogram_delta,
    merge,
    parse_sample,
    quantile,
)

INF = math.inf
VLLM_TEXT = """\
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{model_name="m"} 2.0
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{model_name="m"} 1.0
# TYPE vllm:kv_cache_usage_perc gauge
vllm:kv_cache_usage_perc{model_name="m"} 1.7
# TYPE vllm:generation_tokens counter
vllm:generation_tokens_total{model_name="m"} 120.0
vllm:generation_tokens_total{model_name="n"} 30.0
# TYPE vllm:time_to_first_token_seconds histogram
vllm:time_to_first_token_seconds_bucket{le="0.1",model_name="m"} 3.0
vllm:time_to_first_token_seconds_bucket{le="1.0",model_name="m"} 5.0
vllm:time_to_first_token_seconds_bucket{le="+Inf",model_name="m"} 6.0
vllm:time_to_first_token_seconds_count{model_name="m"} 6.0
vllm:time_to_first_token_seconds_sum{model_name="m"} 2.5
"""
SGLANG_TEXT = """\
# TYPE sglang:num_running_reqs gauge
sglang:num_running_reqs 4
# TYPE sglang:generation_tokens counter
sglang:generation_tokens_total 9
# TYPE sglang:time_per_output_token_seconds histogram
sglang:time_per_output_token_seconds_bucket{le="0.05"} 1
sglang:time_per_output_token_seconds_bucket{le="+Inf"} 1
sglang:time_per_output_token_seconds_count 1
sglang:time_per_output_token_seconds_sum 0.02
"""


def test_parse_vllm_names_sums_labels_clamps_kv_and_keeps_histograms_whole():
    s = parse_sample(VLLM_TEXT)
    assert s.gauges == {"running": 2.0, "waiting": 1.0, "kv_usage": 1.0}
    assert s.counters == {"generation_tokens": 150.0}
    assert s.histograms == {"ttft": Histogram((0.1, 1.0, INF), (3.0, 5.0, 6.0), 2.5)}


def test_parse_maps_sglang_names():
    s = parse_sample(SGLANG_TEXT)
    assert s.gauges == {"running": 4.0}
    assert s.counters == {"generation_tokens": 9.0}
    assert s.histograms["tpot"] == Histogram((0.05, INF), (1.0, 1.0), 0.02)


def test_parse_rejects_non_prometheus_text():
    with pytest.raises(ValueError):
        parse_sample("this is { not prometheus")


@pytest.mark.parametrize(
    ("prev", "cur", "want"),
    [(None, 10.0, 0.0), (4.0, 10.0, 6.0), (10.0, 10.0, 0.0), (50.0, 7.0, 7.0)],  # 50 -> 7: reset
)
def test_counter_delta(prev, cur, want):
    assert counter_delta(prev, cur) == want


H = (1.0, 2.0, INF)


@pytest.mark.parametrize(
    ("prev", "cur", "want"),
    [
        (None, Histogram(H, (1, 2, 3), 3.0), None),
        (Histogram((5.0, INF), (0, 0)), Histogram(H, (1, 2, 3)), None),  # buckets changed
        (Histogram(H, (1, 2, 3), 3.0), Histogram(H, (1, 5, 7), 10.0), Histogram(H, (0, 3, 4), 7.0)),
        (Histogram(H, (4, 8, 9), 20.0), Histogram(H, (1, 1, 2), 2.0), Histogram(H, (1, 1, 2), 2.0)),  # reset
    ],
)
def test_histogram_delta(prev, cur, want):
    assert histogram_delta(prev, cur) == want


@pytest.mark.parametrize(
    ("h", "q", "want"),
    [
        (Histogram(H, (0, 0, 0)), 0.5, None),  # no observation
        (Histogram(H, (10, 10, 10)), 0.5, 0.5),  # linear in [0, 1]
        (Histogram(H, (0, 10, 10)), 0.5, 1.5),  # linear in [1, 2]
        (Histogram(H, (5, 10, 10)), 0.99, 1.0 + 0.98),
        (Histogram(H, (0, 0, 4)), 0.99, 2.0),  # +Inf bucket: the highest finite bound
    ],
)
def test_quantile(h, q, want):
    got = quantile(h, q)
    assert got == pytest.approx(want) if want is not None else got is None


def test_merge_adds_same_bounds_and_skips_others():
    a, b = Histogram(H, (1, 2, 3), 1.0), Histogram(H, (0, 1, 1), 2.0)
    assert merge([a, Histogram((9.0, INF), (1, 1)), b]) == Histogram(H, (1, 3, 4), 3.0)
    assert merge([]) is None
