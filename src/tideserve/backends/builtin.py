"""Launch arguments for the built-in engine (`python -m tideserve.engine`) from a service spec."""

from __future__ import annotations

import math
import sys
from typing import Any

HEALTH_PATH = "/health"


def launch_argv(service: str, model_ref: str, spec: dict[str, Any], port: int) -> list[str]:
    """`spec` is the document's `spec` body (camelCase, defaults applied)."""
    params = spec.get("parameters", {})
    gpus = int(spec.get("resources", {}).get("gpus", 0))
    cpus = float(spec.get("resources", {}).get("cpu", 1))
    argv = [
        sys.executable, "-m", "tideserve.engine",
        "--model", model_ref,
        "--served-model-name", service,
        "--host", "127.0.0.1",
        "--port", str(port),
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
        argv += ["--threads", str(max(1, math.ceil(cpus)))]
    return argv
