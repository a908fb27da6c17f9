"""The engine's scheduling freedoms must not change greedy output, on every device: batching,
chunked prefill, prefix caching and preemption. A small random llama (our dummy initialiser)
with a word-level tokenizer keeps the test self-contained, so it also runs on a GPU machine
that has no copy of the bundled model; tests/engine/test_reference.py does the same with the
real model on CPU."""

from __future__ import annotations

import pytest
import tokenizers
import torch

from tideserve.engine.config import EngineConfig, ModelConfig
from tideserve.engine.core import EngineCore
from tideserve.engine.loader import _init_dummy
from tideserve.engine.model import CausalLM
from tideserve.engine.runner import ModelRunner
from tideserve.engine.sequence import SamplingParams
from tideserve.engine.tokenizer import Tokenizer

from .conftest import run_all

VOCAB = 1024
CFG = ModelConfig(
    architecture="llama",
    vocab_size=VOCAB,
    hidden_size=256,
    intermediate_size=512,
    num_layers=4,
    num_heads=8,
    num_kv_heads=2,
    head_dim=32,
    max_position_embeddings=1024,
    eos_token_ids=(1,),
)
GREEDY = SamplingParams(max_tokens=20, temperature=0.0, ignore_eos=True)
DEVICES = [
    pytest.param("cpu", id="cpu"),
    pytest.param("cuda", id="cuda", marks=pytest.mark.cuda),
]


def word_tokenizer() -> Tokenizer:
    tok = tokenizers.Tokenizer(
        tokenizers.models.WordLevel({f"w{i}": i for i in range(VOCAB)}, unk_token="w0")
    )
    tok.pre_tokenizer = tokenizers.pre_tokenizers.WhitespaceSplit()
    return Tokenizer.from_tokenizer(tok, {"eos_token": "w1"})


@pytest.fixture(scope="module", params=DEVICES)
def model(request: pytest.FixtureRequest) -> CausalLM:
    device = torch.device(request.param)
    if device.type == "cuda" and not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    m = CausalLM(CFG, 1024, torch.float32, device)
    _init_dummy(m, seed=3)
    return m


def core(model: CausalLM, **kw: object) -> EngineCore:
    cfg = EngineConfig(max_model_len=1024, **kw)  # type: ignore[arg-type]
    return EngineCore(ModelRunner(model, cfg, next(model.parameters()).device), word_tokenizer(), cfg)


SHARED = 40  # tokens of a common "system prompt": two full 16-token blocks
NUM_SHARED = 12


def prompts() -> list[list[int]]:
    g = torch.Generator().manual_seed(5)
    shared = torch.randint(2, VOCAB, (SHARED,), generator=g).tolist()
    out = [shared + torch.randint(2, VOCAB, (3 + 5 * i,), generator=g).tolist() for i in range(NUM_SHARED)]
    return out + [torch.randint(2, VOCAB, (int(n),), generator=g).tolist() for n in (1, 17, 64, 100)]


@pytest.fixture(scope="module")
def reference(model: CausalLM) -> list[list[int]]:
    # One at a time, no prefix cache: the plainest way to run.
    c = core(model, enable_prefix_caching=False)
    return [run_all(c, [p], GREEDY)[0] for p in prompts()]


def test_outputs_are_not_degenerate(reference: list[list[int]]) -> None:
    assert len({tuple(r) for r in reference}) > len(reference) // 2


def test_batched(model: CausalLM, reference: list[list[int]]) -> None:
    assert run_all(core(model, enable_prefix_caching=False), prompts(), GREEDY) == reference


def test_chunked_prefill(model: CausalLM, reference: list[list[int]]) -> None:
    assert run_all(core(model, max_num_batched_tokens=9), prompts(), GREEDY) == reference


def test_prefix_cache(model: CausalLM, reference: list[list[int]]) -> None:
    c = core(model, enable_prefix_caching=True)
    warm = run_all(c, prompts()[:1], GREEDY)
    assert warm + run_all(c, prompts()[1:], GREEDY) == reference
    # Every prompt after the first that shares the system prompt reuses its two full blocks.
    assert c.scheduler.prefix_hits >= 32 * (NUM_SHARED - 1)


def test_preemption(model: CausalLM, reference: list[list[int]]) -> None:
    c = core(model, num_kv_blocks=16, block_size=8)
    assert run_all(c, prompts(), GREEDY) == reference
    assert c.scheduler.num_preemptions > 0


def test_priorities_change_order_not_output(model: CausalLM, reference: list[list[int]]) -> None:
    n = len(prompts())
    c = core(model, num_kv_blocks=16, block_size=8, max_batch_size=3)
    assert run_all(c, prompts(), GREEDY, priorities=[(i * 7) % 3 for i in range(n)]) == reference
