"""SGLang (`python -m sglang.launch_server`): the framework parameters as SGLang's flags, its
`/health`, and its Prometheus names mapped to the canonical (vLLM v1) vocabulary. Targets SGLang
0.5.23: flags from python/sglang/srt/server_args.py (and its arg groups), metric names from
python/sglang/srt/observability/metrics_collector.py of that release.

The spec's `env` is not a flag: it becomes the environment of the process (local) or the container
(Kubernetes), which the caller sets; this adapter only computes the command line."""

from __future__ import annotations

import sys
from collections.abc import Mapping
from importlib import metadata

from tideserve.backends.base import LaunchContext, Topology, Where

VERSION = "0.5.23"

# Canonical key -> SGLang's names, most recent release first.
METRIC_NAMES: Mapping[str, tuple[str, ...]] = {
    "running": ("sglang:num_running_reqs",),
    "waiting": ("sglang:num_queue_reqs",),
    "kv_usage": ("sglang:token_usage",),  # used share of the KV pool, 0..1
    # SGLang counts prompt tokens and the cached part of them, which is vLLM's queries/hits pair:
    # the hit rate is cached / prompt in both.
    "prefix_queries": ("sglang:prompt_tokens",),
    "prefix_hits": ("sglang:cached_tokens",),
    "cache_tokens": ("sglang:max_total_num_tokens",),  # KV-pool capacity in tokens
    "prompt_tokens": ("sglang:prompt_tokens",),
    "generation_tokens": ("sglang:generation_tokens",),
    # a retracted request gave back its KV blocks to be recomputed later: vLLM's preemption
    "preemptions": ("sglang:num_retracted_requests",),
    "ttft": ("sglang:time_to_first_token_seconds",),
    # older releases published only the per-token histogram under this name
    "tpot": ("sglang:inter_token_latency_seconds", "sglang:time_per_output_token_seconds"),
    "e2e": ("sglang:e2e_request_latency_seconds",),
    "queue": ("sglang:queue_time_seconds",),
}

# NIXL, as in the vLLM adapter, so a cluster needs one transfer stack for both engines; the
# official image ships it beside Mooncake (SGLang's default).
TRANSFER_BACKEND = "nixl"


def _multi_node_args(topology: Topology) -> list[str]:
    """Every node runs launch_server with the same flags and its own --node-rank; they meet at the
    leader's --dist-init-addr. Rank 0 serves HTTP, the others only compute."""
    return [
        "--nnodes", str(topology.nodes),
        "--node-rank", str(topology.rank),  # "$(LWS_WORKER_INDEX)" stays text: the kubelet expands it
        "--dist-init-addr", f"{topology.leader_address}:{topology.dist_port}",
    ]  # fmt: skip


class SglangAdapter:
    name = "sglang"
    targets = f"SGLang {VERSION}"
    health_path = "/health"
    metric_names = METRIC_NAMES

    def image_for(self, version: str = "") -> str:
        return f"lmsysorg/sglang:v{version or VERSION}-cu130"  # CUDA 13: cu129 tags stopped at 0.5.19

    def program(self, where: Where) -> list[str]:
        # The module, not the `sglang` console script: it runs with the interpreter that has SGLang.
        return [sys.executable if where == "local" else "python3", "-m", "sglang.launch_server"]

    def args(self, ctx: LaunchContext) -> list[str]:
        params = ctx.spec.get("parameters", {})
        argv = [
            "--model-path", ctx.model_ref,
            "--served-model-name", ctx.service,
            "--host", ctx.host,
            "--port", str(ctx.port),
            "--tp-size", str(params.get("tpSize", 1)),
            "--pp-size", str(params.get("ppSize", 1)),
            "--dp-size", str(params.get("dpSize", 1)),
            "--max-running-requests", str(params.get("maxBatchSize", 32)),
            "--mem-fraction-static", str(params.get("gpuMemoryUtilization", 0.9)),
            # /metrics is off unless asked for; the gateway and the collector read it.
            "--enable-metrics",
            # The gateway forwards vLLM's convention (lower value first, 0 when unset); SGLang's default
            # order is the reverse, hence the flag.
            "--enable-priority-scheduling",
            "--schedule-low-priority-values-first",
            "--default-priority-value", "0",
        ]  # fmt: skip
        # Prefix caching is SGLang's radix cache, on unless --disable-radix-cache: nothing to add.
        if params.get("maxModelLen"):
            argv += ["--context-length", str(params["maxModelLen"])]
        if params.get("maxNumBatchedTokens"):
            # SGLang's per-step token budget is the chunk size of its chunked prefill.
            argv += ["--chunked-prefill-size", str(params["maxNumBatchedTokens"])]
        if ctx.role in ("prefill", "decode"):
            argv += ["--disaggregation-mode", ctx.role, "--disaggregation-transfer-backend", TRANSFER_BACKEND]
        if ctx.topology.nodes > 1:
            argv += _multi_node_args(ctx.topology)
        return argv

    def installed(self) -> str | None:
        try:
            return metadata.version("sglang")
        except metadata.PackageNotFoundError:
            return None


SGLANG = SglangAdapter()
