"""Engine adapters (builtin, vllm, sglang): launch arguments, health path and metric names per engine."""

from __future__ import annotations

from tideserve.backends.base import EngineAdapter
from tideserve.backends.builtin import BUILTIN
from tideserve.backends.sglang import SGLANG
from tideserve.backends.vllm import VLLM

# Insertion order is the lookup order of the metric aliases derived from these (observability).
ADAPTERS: dict[str, EngineAdapter] = {"builtin": BUILTIN, "vllm": VLLM, "sglang": SGLANG}


def adapter_for(engine: str) -> EngineAdapter:
    """Raises KeyError for an engine no adapter serves (the spec's Literal keeps users from it)."""
    return ADAPTERS[engine]
