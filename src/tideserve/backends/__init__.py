"""Engine adapters (builtin, vllm, sglang): launch arguments, health path and metric names per engine."""

from __future__ import annotations

from tideserve.backends.base import EngineAdapter
from tideserve.backends.builtin import BUILTIN

ADAPTERS: dict[str, EngineAdapter] = {"builtin": BUILTIN}


def adapter_for(engine: str) -> EngineAdapter:
    """Raises KeyError for an engine no adapter serves (the spec's Literal keeps users from it)."""
    return ADAPTERS[engine]
