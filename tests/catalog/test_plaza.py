import re
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from tideserve.catalog.estimator import GIB, check_fit, check_ram_fit, estimate_card, estimate_card_ram
from tideserve.catalog.plaza import Card, filter_cards, get_card, load_cards
from tideserve.engine.config import SUPPORTED_ARCHITECTURES

CARDS = load_cards()
BY_NAME = {c.name: c for c in CARDS}
DENSE = [c for c in CARDS if not c.architecture.is_moe]
MOE = [c for c in CARDS if c.architecture.is_moe]
# Architectures whose attention width is heads x head_dim (Qwen3, MLA and GLM-4.5 widen it).
HEADS_SPAN_HIDDEN = {"llama", "mistral", "qwen2", "chatglm", "hunyuan_v1_dense", "hunyuan_v1_moe"}
# Models whose recommended tpSize needs GPUs with more than 80 GB.
NEEDS_141_GB = {"deepseek-v3-0324", "deepseek-r1"}


def ids(cards: list[Card]) -> list[str]:
    return [c.name for c in cards]


def test_the_plaza_has_the_curated_families() -> None:
    assert len(CARDS) >= 22
    families = {c.family for c in CARDS}
    expected = {"qwen2.5", "qwen3", "deepseek-r1", "deepseek-v3", "llama3.1", "llama3.2", "hunyuan", "glm4"}
    assert expected | {"mistral", "smollm2"} <= families


def test_names_are_unique_dns_labels() -> None:
    assert len(set(BY_NAME)) == len(CARDS)
    for c in CARDS:
        assert re.fullmatch(r"[a-z0-9]([a-z0-9.-]*[a-z0-9])?", c.name) and len(c.name) <= 63


@pytest.mark.parametrize("card", CARDS, ids=ids(CARDS))
def test_attention_figures(card: Card) -> None:
    a = card.architecture
    assert a.heads % a.kv_heads == 0
    if a.type in HEADS_SPAN_HIDDEN:
        assert a.hidden_size == a.heads * a.head_dim
    assert a.max_context >= 8192


def dense_parameters(card: Card) -> int:
    """Embeddings + per layer q/k/v/o projections and a gated MLP (gate, up, down)."""
    a = card.architecture
    attention = 2 * a.hidden_size * a.heads * a.head_dim + 2 * a.hidden_size * a.kv_heads * a.head_dim
    mlp = 3 * a.hidden_size * a.intermediate_size
    embeddings = a.vocab_size * a.hidden_size * (1 if a.tied_embeddings else 2)
    return embeddings + a.layers * (attention + mlp)


@pytest.mark.parametrize("card", DENSE, ids=ids(DENSE))
def test_dense_parameter_count_matches_the_architecture(card: Card) -> None:
    assert card.parameters == pytest.approx(dense_parameters(card), rel=0.1)


@pytest.mark.parametrize("card", MOE, ids=ids(MOE))
def test_moe_parameter_count_is_mostly_routed_experts(card: Card) -> None:
    a = card.architecture
    assert a.experts and a.active_experts and a.moe_intermediate_size
    routed = (a.layers - a.dense_layers) * a.experts * 3 * a.hidden_size * a.moe_intermediate_size
    # attention, dense layers, shared experts and embeddings are the rest
    assert 0.85 <= routed / card.parameters <= 1.0
    idle = routed * (a.experts - a.active_experts) // a.experts
    assert card.active_parameters == pytest.approx(card.parameters - idle, rel=0.1)


def test_the_bundled_card() -> None:
    smol = get_card("smollm2-135m-instruct")
    assert smol is not None
    a = smol.architecture
    assert (a.type, a.layers, a.hidden_size, a.heads, a.kv_heads, a.head_dim) == ("llama", 30, 576, 9, 3, 64)
    assert (a.vocab_size, a.max_context, a.tied_embeddings) == (49152, 8192, True)
    assert (smol.parameters, smol.dtype, smol.license) == (134_515_008, "q4_1", "Apache-2.0")
    assert smol.offline and smol.source == "bundled"
    assert smol.recommended_engines == ("builtin",)
    assert [c.name for c in CARDS if c.offline] == ["smollm2-135m-instruct"]


@pytest.mark.parametrize("card", CARDS, ids=ids(CARDS))
def test_card_record(card: Card) -> None:
    assert card.offline or card.source.startswith("hf://")
    assert 2023 <= card.release_date.year <= 2026
    if "builtin" in card.recommended_engines:
        assert card.architecture.type in SUPPORTED_ARCHITECTURES and not card.architecture.is_moe
    assert "http://127.0.0.1:8080/v1/chat/completions" in card.usage
    assert '"model": "<service name>"' in card.usage
    assert "from openai import OpenAI" in card.usage


GPU_CARDS = [c for c in CARDS if c.recommended_engines != ("builtin",)]


@pytest.mark.parametrize("card", GPU_CARDS, ids=ids(GPU_CARDS))
def test_recommended_parameters_fit_the_gpus_they_are_tuned_for(card: Card) -> None:
    rec = card.recommended_parameters
    params = rec.model_dump()
    estimate = estimate_card(card, params)
    util = rec.gpuMemoryUtilization or 0.9
    free_80gb = 79 * GIB  # what an idle 80 GB A100/H100 reports free
    fits_80 = check_fit(estimate, [free_80gb] * estimate.gpus, estimate.gpus, util).fits
    if card.name in NEEDS_141_GB:
        assert not fits_80
        assert check_fit(estimate, [139 * GIB] * estimate.gpus, estimate.gpus, util).fits
    else:
        assert fits_80, card.name


def test_bundled_card_fits_a_laptop() -> None:
    smol = BY_NAME["smollm2-135m-instruct"]
    assert check_ram_fit(estimate_card_ram(smol, smol.recommended_parameters.model_dump()), 2 * GIB).fits


def test_api_view_is_plain_json() -> None:
    data = BY_NAME["smollm2-135m-instruct"].model_dump(mode="json")
    assert data["release_date"] == "2024-10-31"
    assert data["recommended_parameters"] == {"maxModelLen": 8192, "maxBatchSize": 16}
    assert data["architecture"]["kv_lora_rank"] is None


def test_load_is_cached_and_get_card_finds_by_name() -> None:
    assert load_cards() == CARDS
    assert get_card("qwen2.5-7b-instruct") is BY_NAME["qwen2.5-7b-instruct"]
    assert get_card("no-such-model") is None


def raw(name: str = "qwen2.5-7b-instruct") -> dict[str, Any]:
    return BY_NAME[name].model_dump(mode="json", exclude_none=True)


def broken(change: Any) -> dict[str, Any]:
    data = raw()
    change(data)
    return data


@pytest.mark.parametrize(
    "data",
    [
        broken(lambda d: d.update(paramters=1)),  # typo'd field
        broken(lambda d: d["architecture"].update(num_layers=28)),
        broken(lambda d: d["recommended_parameters"].update(tp_size=2)),
        broken(lambda d: d.update(name="Qwen2.5_7B")),
        broken(lambda d: d.update(dtype="int3")),
        broken(lambda d: d.update(task_types=["chat", "poetry"])),
        broken(lambda d: d.update(task_types=[])),
        broken(lambda d: d.update(recommended_engines=["vllm", "tgi"])),
        broken(lambda d: d.update(recommended_engines=["vllm", "vllm"])),
        broken(lambda d: d.update(release_date="19 Sep 2024")),
        broken(lambda d: d.update(source="s3://bucket/qwen")),
        broken(lambda d: d.update(offline=True)),  # offline but fetched from hf://
        broken(lambda d: d["architecture"].update(kv_heads=5)),  # 28 heads
        broken(lambda d: d["architecture"].update(kv_lora_rank=512)),  # MLA half given
        broken(lambda d: d["architecture"].update(experts=8)),  # MoE half given
        broken(lambda d: d["architecture"].update(dense_layers=2)),  # only MoE models have them
        broken(lambda d: d.update(active_parameters=1_000_000_000)),  # dense model
        broken(lambda d: d["recommended_parameters"].update(maxModelLen=65536)),  # over max_context
        broken(lambda d: d["recommended_parameters"].update(tpSize=8)),  # 28 heads
        broken(lambda d: d["recommended_parameters"].update(gpuMemoryUtilization=1.2)),
    ],
)
def test_invalid_cards_are_rejected(data: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        Card.model_validate(data)


def test_builtin_engine_only_for_the_architectures_it_runs() -> None:
    moe = raw("qwen3-30b-a3b")
    moe["recommended_engines"] = ["vllm", "builtin"]
    with pytest.raises(ValidationError, match="built-in engine"):
        Card.model_validate(moe)
    glm = raw("glm-4-9b-chat")
    glm["recommended_engines"] = ["builtin"]
    with pytest.raises(ValidationError, match="built-in engine"):
        Card.model_validate(glm)


def test_card_files_round_trip_through_yaml() -> None:
    for c in CARDS:
        data = c.model_dump(mode="json", exclude_none=True)
        assert Card.model_validate(yaml.safe_load(yaml.safe_dump(data))) == c


@pytest.mark.parametrize(
    ("filters", "check"),
    [
        ({}, lambda got: len(got) == len(CARDS)),
        ({"task": "reasoning"}, lambda got: all("reasoning" in c.task_types for c in got)),
        ({"task": "code"}, lambda got: "qwen2.5-coder-7b-instruct" in ids(got)),
        ({"family": "qwen3"}, lambda got: len(got) == 6 and all(c.family == "qwen3" for c in got)),
        ({"family": "QWEN3"}, lambda got: len(got) == 6),
        ({"tag": "moe"}, lambda got: ids(got) == ids(MOE)),
        ({"tag": "MLA"}, lambda got: set(ids(got)) == {"deepseek-r1", "deepseek-v3-0324"}),
        ({"q": "DeepSeek"}, lambda got: len(got) == 7 and all("deepseek" in c.name for c in got)),
        ({"q": "tencent"}, lambda got: {c.family for c in got} == {"hunyuan"}),
        ({"family": "deepseek-r1", "task": "chat"}, lambda got: ids(got) == ["deepseek-r1"]),
        ({"task": "reasoning", "tag": "small", "q": "qwen"}, lambda got: len(got) == 2),
        ({"family": "gpt"}, lambda got: got == []),
        ({"task": "embedding"}, lambda got: got == []),
    ],
)
def test_filter_cards(filters: dict[str, str], check: Any) -> None:
    before = list(CARDS)
    got = filter_cards(CARDS, **filters)
    assert check(got), ids(got)
    assert before == CARDS
