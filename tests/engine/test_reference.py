"""Greedy output of the engine against Hugging Face transformers on the same GGUF file, and the
engine against itself under batching, chunked prefill, prefix caching and preemption."""

from __future__ import annotations

import pytest
import torch

from tideserve.engine.loader import LoadedModel, bundled_gguf_path
from tideserve.engine.sequence import SamplingParams

from .conftest import make_core, run_all

NEW_TOKENS = 24
GREEDY = SamplingParams(max_tokens=NEW_TOKENS, temperature=0.0)

CHATS = [
    "What is the capital of France?",
    "Write a haiku about the sea.",
    "Explain recursion to a five year old.",
    "List three prime numbers greater than 100.",
    "Translate 'good morning' into Spanish and German.",
    "What does HTTP stand for?",
    "Give me a Python function that reverses a string.",
    "Why is the sky blue?",
    "Summarize the plot of Romeo and Juliet in two sentences.",
    "How many legs does a spider have?",
    "你好，请介绍一下你自己。",
    "What is 17 * 23?",
]
RAW = [
    "The history of the Roman empire",
    "def fibonacci(n):\n    ",
    "Once upon a time, in a small village,",
    "SELECT name, email FROM users WHERE",
    "1, 1, 2, 3, 5, 8, 13,",
    "The quick brown fox",
    "<html>\n<head>\n<title>",
    "In 1969, astronauts",
    "Dear hiring manager,\n\nI am writing to",
    "import numpy as np\nimport torch\n\nclass",
]


def prompts(lm: LoadedModel) -> list[list[int]]:
    tok = lm.tokenizer
    chat = [tok.encode(tok.apply_chat_template([{"role": "user", "content": c}]), False) for c in CHATS]
    return chat + [tok.encode(r) for r in RAW]


@pytest.fixture(scope="module")
def hf_greedy(smollm: LoadedModel) -> list[list[int]]:
    transformers = pytest.importorskip("transformers")
    path = bundled_gguf_path()
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_pretrained(
        str(path.parent), gguf_file=path.name, dtype=torch.float32
    ).eval()
    eos = sorted(smollm.tokenizer.eos_token_ids)
    outs = []
    with torch.inference_mode():
        for ids in prompts(smollm):
            gen = model.generate(
                torch.tensor([ids]),
                attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                max_new_tokens=NEW_TOKENS,
                do_sample=False,
                eos_token_id=eos,
                pad_token_id=eos[0],
            )
            outs.append(gen[0, len(ids) :].tolist())
    return outs


@pytest.fixture(scope="module")
def batched(smollm: LoadedModel) -> list[list[int]]:
    return run_all(make_core(smollm), prompts(smollm), GREEDY)


def test_matches_transformers_token_for_token(smollm: LoadedModel, batched, hf_greedy) -> None:
    assert len(batched) >= 20
    for i, (ours, ref) in enumerate(zip(batched, hf_greedy, strict=True)):
        assert ours == ref, (
            f"prompt {i}: {smollm.tokenizer.decode(ours)!r} != {smollm.tokenizer.decode(ref)!r}"
        )


def test_batched_equals_one_at_a_time(smollm: LoadedModel, batched) -> None:
    core = make_core(smollm)
    singles = [run_all(core, [p], GREEDY)[0] for p in prompts(smollm)]
    assert singles == batched


def test_chunked_prefill_equals_whole_prefill(smollm: LoadedModel, batched) -> None:
    # 7-token budget: every prompt is prefilled in several chunks mixed with other decodes.
    core = make_core(smollm, max_num_batched_tokens=7)
    assert run_all(core, prompts(smollm), GREEDY) == batched


def test_prefix_cache_on_equals_off(smollm: LoadedModel) -> None:
    tok = smollm.tokenizer
    system = "You are a meticulous assistant. Answer briefly and precisely, citing facts where possible. " * 3
    chats = [
        tok.encode(
            tok.apply_chat_template([{"role": "system", "content": system}, {"role": "user", "content": c}]),
            False,
        )
        for c in CHATS[:6]
    ]
    on = make_core(smollm, enable_prefix_caching=True)
    first = run_all(on, chats[:1], GREEDY)  # warms the cache with the shared system prompt
    cached = first + run_all(on, chats[1:], GREEDY)
    assert on.scheduler.prefix_hits > 0, "the shared system prompt should have been served from cache"
    off = make_core(smollm, enable_prefix_caching=False)
    assert run_all(off, chats, GREEDY) == cached
    assert off.scheduler.prefix_hits == 0


def test_forced_preemption_equals_unpreempted(smollm: LoadedModel, batched) -> None:
    # 12 blocks of 16 tokens cannot hold 22 sequences at once: the scheduler must preempt and
    # recompute, and the outputs must not change.
    core = make_core(smollm, num_kv_blocks=12, block_size=16)
    assert run_all(core, prompts(smollm), GREEDY) == batched
    assert core.scheduler.num_preemptions > 0
    assert core.bm.num_free_blocks == core.bm.num_blocks
