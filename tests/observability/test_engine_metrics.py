import pytest

from tideserve.observability.engine_metrics import EngineLoad, parse_engine_metrics

VLLM = """\
# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="m"} 3.0
# HELP vllm:num_requests_waiting Number of requests waiting to be processed.
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{engine="0",model_name="m"} 2.0
# HELP vllm:kv_cache_usage_perc KV-cache usage. 1 means 100 percent usage.
# TYPE vllm:kv_cache_usage_perc gauge
vllm:kv_cache_usage_perc{engine="0",model_name="m"} 0.25
# HELP vllm:prefix_cache_queries Prefix cache queries, in terms of number of queried tokens.
# TYPE vllm:prefix_cache_queries counter
vllm:prefix_cache_queries_total{engine="0",model_name="m"} 1000.0
# HELP vllm:prefix_cache_hits Prefix cache hits, in terms of number of cached tokens.
# TYPE vllm:prefix_cache_hits counter
vllm:prefix_cache_hits_total{engine="0",model_name="m"} 640.0
# HELP vllm:cache_config_info Information of the KV cache configuration.
# TYPE vllm:cache_config_info gauge
vllm:cache_config_info{block_size="16",cache_dtype="auto",num_gpu_blocks="2048"} 1.0
"""

OLD_VLLM = """\
# TYPE vllm:gpu_cache_usage_perc gauge
vllm:gpu_cache_usage_perc{model_name="m"} 0.5
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{model_name="m"} 1
"""

SGLANG = """\
# TYPE sglang:num_running_reqs gauge
sglang:num_running_reqs{model_name="m",tp_rank="0"} 4.0
# TYPE sglang:num_queue_reqs gauge
sglang:num_queue_reqs{model_name="m",tp_rank="0"} 7.0
# TYPE sglang:token_usage gauge
sglang:token_usage{model_name="m",tp_rank="0"} 0.75
# TYPE sglang:max_total_num_tokens gauge
sglang:max_total_num_tokens{model_name="m",tp_rank="0"} 50000.0
"""


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            VLLM,
            EngineLoad(
                running=3, waiting=2, kv_usage=0.25, prefix_queries=1000, prefix_hits=640, cache_tokens=32768
            ),
        ),
        (OLD_VLLM, EngineLoad(running=1, kv_usage=0.5)),
        (SGLANG, EngineLoad(running=4, waiting=7, kv_usage=0.75, cache_tokens=50000)),
        # an info gauge whose labels are not numbers says nothing
        ('vllm:cache_config_info{block_size="x",num_gpu_blocks="2"} 1\n', EngineLoad()),
        ("", EngineLoad()),
        ("# TYPE vllm:kv_cache_usage_perc gauge\nvllm:kv_cache_usage_perc 1.7\n", EngineLoad(kv_usage=1.0)),
    ],
)
def test_parse_engine_metrics(text, expected):
    assert parse_engine_metrics(text) == expected


def test_garbage_is_an_error():
    with pytest.raises(ValueError):
        parse_engine_metrics("this is { not prometheus")
