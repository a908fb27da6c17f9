from __future__ import annotations

from collections.abc import Iterable

import pytest
import torch

from tideserve.engine.config import EngineConfig
from tideserve.engine.core import EngineCore
from tideserve.engine.loader import LoadedModel, load
from tideserve.engine.runner import ModelRunner
from tideserve.engine.sequence import SamplingParams

MAX_LEN = 2048


@pytest.fixture(scope="session")
def smollm() -> LoadedModel:
    """The bundled model in float32 on CPU, loaded once per test session."""
    return load("smollm2-135m-instruct", torch.float32, torch.device("cpu"), MAX_LEN)


def make_core(lm: LoadedModel, device: torch.device | None = None, **engine_kwargs: object) -> EngineCore:
    cfg = EngineConfig(max_model_len=MAX_LEN, **engine_kwargs)  # type: ignore[arg-type]
    return EngineCore(ModelRunner(lm.model, cfg, device or torch.device("cpu")), lm.tokenizer, cfg)


def run_all(
    core: EngineCore, prompts: Iterable[list[int]], params: SamplingParams, priorities: Iterable[int] = ()
) -> list[list[int]]:
    """Submit every prompt, step the engine until idle, return each request's output tokens."""
    prompts = list(prompts)
    prios = list(priorities) or [0] * len(prompts)
    outputs: dict[str, list[int]] = {}
    for i, (p, prio) in enumerate(zip(prompts, prios, strict=True)):
        core.add_request(str(i), p, params, prio)
        outputs[str(i)] = []
    while core.has_work():
        for out in core.step():
            outputs[out.request_id].extend(out.new_token_ids)
    return [outputs[str(i)] for i in range(len(prompts))]
