"""vLLM (`vllm serve`): the framework parameters as vLLM's flags, its `/health`, and its Prometheus
names. Targets vLLM 0.33.0: flags from its `vllm serve` parser (vllm/engine/arg_utils.py and the
serve front end), metric names from vllm/v1/metrics/loggers.py of that release.

The spec's `env` is not a flag: it becomes the environment of the process (local) or the container
(Kubernetes), which the caller sets; this adapter only computes the command line."""

from __future__ import annotations

import json
import shutil
import sys
from collections.abc import Mapping
from importlib import metadata
from pathlib import Path

from tideserve.backends.base import LaunchContext, Topology, Where

VERSION = "0.33.0"

# Most recent release's name first; the older names are what earlier releases (still running in
# clusters we scrape) publish for the same figure.
METRIC_NAMES: Mapping[str, tuple[str, ...]] = {
    "running": ("vllm:num_requests_running",),
    "waiting": ("vllm:num_requests_waiting",),
    # renamed in v1 once the cache stopped being GPU-only
    "kv_usage": ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc"),
    "prefix_queries": ("vllm:prefix_cache_queries", "vllm:gpu_prefix_cache_queries"),
    "prefix_hits": ("vllm:prefix_cache_hits", "vllm:gpu_prefix_cache_hits"),
    # cache_tokens: vLLM has no such series; the scraper computes it from the labels of
    # vllm:cache_config_info (num_gpu_blocks × block_size).
    "prompt_tokens": ("vllm:prompt_tokens",),
    "generation_tokens": ("vllm:generation_tokens",),
    "preemptions": ("vllm:num_preemptions",),
    "ttft": ("vllm:time_to_first_token_seconds",),
    # the per-token histogram was called time_per_output_token before the inter-token rename
    "tpot": ("vllm:inter_token_latency_seconds", "vllm:time_per_output_token_seconds"),
    "e2e": ("vllm:e2e_request_latency_seconds",),
    "queue": ("vllm:request_queue_time_seconds",),
}

# vLLM's KV roles for disaggregated prefill: the prefill side produces KV blocks, decode consumes them.
KV_ROLES = {"prefill": "kv_producer", "decode": "kv_consumer"}


def _kv_transfer_config(role: str) -> str:
    # NIXL moves the blocks GPU to GPU (RDMA/NVLink) and ships in the official image.
    return json.dumps({"kv_connector": "NixlConnector", "kv_role": KV_ROLES[role]}, separators=(",", ":"))


def _multi_node_args(topology: Topology) -> list[str]:
    """vLLM's multiprocessing executor spans nodes by itself (no Ray): every node runs `vllm serve`
    with the same parallel sizes, the world split over --nnodes, rendezvous at the leader's
    --master-addr/--master-port. Only rank 0 serves HTTP; the others run --headless."""
    argv = [
        "--distributed-executor-backend", "mp",
        "--nnodes", str(topology.nodes),
        "--node-rank", str(topology.rank),  # "$(LWS_WORKER_INDEX)" stays text: the kubelet expands it
        "--master-addr", topology.leader_address,
        "--master-port", str(topology.dist_port),
    ]  # fmt: skip
    if str(topology.rank) != "0":
        argv.append("--headless")
    return argv


class VllmAdapter:
    name = "vllm"
    targets = f"vLLM {VERSION}"
    health_path = "/health"
    metric_names = METRIC_NAMES

    def image_for(self, version: str = "") -> str:
        return f"vllm/vllm-openai:v{version or VERSION}"

    def program(self, where: Where) -> list[str]:
        if where == "container":
            # The image's entrypoint already means `vllm serve`; naming it as the command keeps the
            # manifest independent of how the image was built.
            return ["vllm", "serve"]
        return [self._console_script(), "serve"]

    @staticmethod
    def _console_script() -> str:
        # The `vllm` installed into tideserve's environment first, so the version installed() reports
        # is the one that runs; else whatever PATH has.
        beside = Path(sys.executable).parent / "vllm"
        if beside.exists():
            return str(beside)
        return shutil.which("vllm") or "vllm"

    def args(self, ctx: LaunchContext) -> list[str]:
        params = ctx.spec.get("parameters", {})
        # `vllm serve` wants the model as the first positional argument (--model is deprecated there).
        argv = [
            ctx.model_ref,
            "--served-model-name", ctx.service,
            "--host", ctx.host,
            "--port", str(ctx.port),
            "--tensor-parallel-size", str(params.get("tpSize", 1)),
            "--pipeline-parallel-size", str(params.get("ppSize", 1)),
            "--data-parallel-size", str(params.get("dpSize", 1)),
            "--max-num-seqs", str(params.get("maxBatchSize", 32)),
            "--gpu-memory-utilization", str(params.get("gpuMemoryUtilization", 0.9)),
            "--enable-prefix-caching",
            # The gateway sends a `priority` field (lower first), which vLLM honours only under this policy.
            "--scheduling-policy", "priority",
        ]  # fmt: skip
        if params.get("maxModelLen"):
            argv += ["--max-model-len", str(params["maxModelLen"])]
        if params.get("maxNumBatchedTokens"):
            argv += ["--max-num-batched-tokens", str(params["maxNumBatchedTokens"])]
        if ctx.role in KV_ROLES:
            argv += ["--kv-transfer-config", _kv_transfer_config(ctx.role)]
        if ctx.topology.nodes > 1:
            argv += _multi_node_args(ctx.topology)
        return argv

    def installed(self) -> str | None:
        try:
            return metadata.version("vllm")
        except metadata.PackageNotFoundError:
            return None


VLLM = VllmAdapter()
