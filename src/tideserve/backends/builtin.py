"""The built-in engine (`python -m tideserve.engine`): it speaks vLLM's flags and metric names where
they mean the same thing, so this adapter is mostly a pass-through."""

from __future__ import annotations

import math
import sys
from collections.abc import Mapping

from tideserve import __version__
from tideserve.backends.base import LaunchContext, Where

# The canonical names are vLLM v1's (DESIGN.md), which the built-in engine publishes as they are.
METRIC_NAMES: Mapping[str, tuple[str, ...]] = {
    "running": ("vllm:num_requests_running",),
    "waiting": ("vllm:num_requests_waiting",),
    "kv_usage": ("vllm:kv_cache_usage_perc",),
    "prefix_queries": ("vllm:prefix_cache_queries",),
    "prefix_hits": ("vllm:prefix_cache_hits",),
    "cache_tokens": ("vllm:cache_tokens",),
    "prompt_tokens": ("vllm:prompt_tokens",),
    "generation_tokens": ("vllm:generation_tokens",),
    "preemptions": ("vllm:num_preemptions",),
    "ttft": ("vllm:time_to_first_token_seconds",),
    "tpot": ("vllm:inter_token_latency_seconds",),
    "e2e": ("vllm:e2e_request_latency_seconds",),
    "queue": ("vllm:request_queue_time_seconds",),
}


class BuiltinAdapter:
    name = "builtin"
    targets = f"tideserve {__version__}"
    health_path = "/health"
    metric_names = METRIC_NAMES

    def image_for(self, version: str = "") -> str:
        return f"tideserve/tideserve:{version or __version__}"

    def program(self, where: Where) -> list[str]:
        return [sys.executable if where == "local" else "python", "-m", "tideserve.engine"]

    def args(self, ctx: LaunchContext) -> list[str]:
        params = ctx.spec.get("parameters", {})
        resources = ctx.spec.get("resources", {})
        gpus = int(resources.get("gpus", 0))
        argv = [
            "--model", ctx.model_ref,
            "--served-model-name", ctx.service,
            "--host", ctx.host,
            "--port", str(ctx.port),
            "--device", "cuda" if gpus else "cpu",
            "--max-batch-size", str(params.get("maxBatchSize", 32)),
            "--gpu-memory-utilization", str(params.get("gpuMemoryUtilization", 0.9)),
        ]  # fmt: skip
        if params.get("maxModelLen"):
            argv += ["--max-model-len", str(params["maxModelLen"])]
        if params.get("maxNumBatchedTokens"):
            argv += ["--max-num-batched-tokens", str(params["maxNumBatchedTokens"])]
        if not gpus:
            # The CPU share a spec asks for becomes the engine's thread count (at least one).
            argv += ["--threads", str(max(1, math.ceil(float(resources.get("cpu", 1)))))]
        return argv

    def installed(self) -> str | None:
        return __version__  # it ships with tideserve


BUILTIN = BuiltinAdapter()
