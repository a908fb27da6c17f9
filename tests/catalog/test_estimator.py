import dataclasses
import math

import pytest

from tideserve.catalog.estimator import (
    CUDA_RUNTIME_BYTES,
    GIB,
    MemoryEstimate,
    ModelShape,
    ServingConfig,
    check_fit,
    check_ram_fit,
    estimate_card,
    estimate_card_ram,
    estimate_memory,
    estimate_ram,
    kv_bytes_per_token,
    precision_table,
    shape_of,
    weight_bytes,
)
from tideserve.catalog.plaza import get_card

GB = 10**9


def shape(name: str) -> ModelShape:
    card = get_card(name)
    assert card is not None
    return shape_of(card)


# Public Llama 2 / Code Llama figures: the generic 7B...70B rows of PRODUCT.md's memory table.
LLAMA2_7B = ModelShape(32, 4096, 32, 32, 128, 32000, 6_738_415_616)
LLAMA2_13B = ModelShape(40, 5120, 40, 40, 128, 32000, 13_015_864_320)
CODELLAMA_34B = ModelShape(48, 8192, 64, 8, 128, 32000, 33_743_970_304)
LLAMA2_70B = ModelShape(80, 8192, 64, 8, 128, 32000, 68_976_648_192)


@pytest.mark.parametrize(
    ("model", "dtype", "expected_gb"),
    [
        (LLAMA2_7B, "float16", 14),
        (LLAMA2_7B, "int8", 7),
        (LLAMA2_7B, "int4", 4),
        (LLAMA2_13B, "float16", 26),
        (LLAMA2_13B, "int8", 13),
        (LLAMA2_13B, "awq", 7),
        (CODELLAMA_34B, "bfloat16", 68),
        (CODELLAMA_34B, "fp8", 34),
        (CODELLAMA_34B, "gptq", 17),
        (LLAMA2_70B, "float16", 140),
        (LLAMA2_70B, "int8", 70),
        (LLAMA2_70B, "int4", 35),
    ],
)
def test_weights_match_the_product_memory_table(model: ModelShape, dtype: str, expected_gb: int) -> None:
    # The table is rough (params x bytes); ours keeps embeddings in 16 bits and counts int4 group
    # scales, which puts the int4 rows up to ~10% above it.
    assert weight_bytes(model, dtype) / GB == pytest.approx(expected_gb, rel=0.12)


@pytest.mark.parametrize(
    ("dtype", "bytes_per_weight"),
    [("float32", 4), ("bfloat16", 2), ("float16", 2), ("int8", 1), ("fp8", 1), ("q8_0", 8.5 / 8)],
)
def test_bytes_per_weight(dtype: str, bytes_per_weight: float) -> None:
    untied_embedding_free = ModelShape(1, 1, 1, 1, 1, 0, 1_000_000)
    assert weight_bytes(untied_embedding_free, dtype) == pytest.approx(1_000_000 * bytes_per_weight)


def test_gguf_q4_1_matches_the_bundled_file() -> None:
    # Sum of the tensor sizes in SmolLM2-135M-Instruct.Q4_1.gguf: 106,168,320 Q4_1 weights,
    # the tied 28,311,552-weight embedding in Q8_0 and 35,136 float32 norm weights.
    in_file = 106_168_320 * 5 // 8 + 28_311_552 * 85 // 80 + 35_136 * 4
    assert weight_bytes(shape("smollm2-135m-instruct"), "q4_1") == pytest.approx(in_file, rel=0.01)


@pytest.mark.parametrize(
    ("model", "config", "per_token"),
    [
        # 2 (K and V) x layers x KV heads x head_dim x bytes
        ("llama-3.1-8b-instruct", ServingConfig(), 2 * 32 * 8 * 128 * 2),
        ("llama-3.1-8b-instruct", ServingConfig(tp_size=2), 2 * 32 * 4 * 128 * 2),
        ("llama-3.1-8b-instruct", ServingConfig(tp_size=8), 2 * 32 * 1 * 128 * 2),
        ("llama-3.1-8b-instruct", ServingConfig(kv_cache_dtype="fp8"), 2 * 32 * 8 * 128),
        ("llama-3.1-8b-instruct", ServingConfig(weight_dtype="float32"), 2 * 32 * 8 * 128 * 4),
        ("llama-3.1-8b-instruct", ServingConfig(weight_dtype="awq"), 2 * 32 * 8 * 128 * 2),
        ("qwen2.5-7b-instruct", ServingConfig(), 57344),
        ("qwen2.5-7b-instruct", ServingConfig(pp_size=2), 2 * 14 * 4 * 128 * 2),
        # 4 KV heads over 8 GPUs: each GPU still holds one (replicated)
        ("qwen2.5-7b-instruct", ServingConfig(tp_size=8), 2 * 28 * 1 * 128 * 2),
        ("llama-3.1-70b-instruct", ServingConfig(tp_size=4, pp_size=2), 2 * 40 * 2 * 128 * 2),
        # MLA: (kv_lora_rank 512 + qk_rope_head_dim 64) x 2 bytes per layer, the same on every TP rank
        ("deepseek-v3-0324", ServingConfig(), 61 * (512 + 64) * 2),
        ("deepseek-v3-0324", ServingConfig(tp_size=8), 61 * (512 + 64) * 2),
        ("deepseek-v3-0324", ServingConfig(tp_size=8, pp_size=2), 31 * (512 + 64) * 2),
    ],
)
def test_kv_bytes_per_token(model: str, config: ServingConfig, per_token: int) -> None:
    assert kv_bytes_per_token(shape(model), config) == per_token


def test_kv_anchor_values() -> None:
    assert kv_bytes_per_token(shape("llama-3.1-8b-instruct"), ServingConfig()) == 131072  # 128 KiB
    assert kv_bytes_per_token(shape("qwen2.5-7b-instruct"), ServingConfig()) == 57344
    assert kv_bytes_per_token(shape("deepseek-r1"), ServingConfig()) / 61 == (512 + 64) * 2


def test_kv_min_is_one_full_sequence_and_kv_full_is_the_whole_batch() -> None:
    cfg = ServingConfig(max_model_len=8192, max_batch_size=16)
    e = estimate_memory(shape("llama-3.1-8b-instruct"), cfg)
    assert e.kv_min_bytes == 131072 * 8192 == GIB
    assert e.kv_full_bytes == 16 * GIB
    assert e.total_bytes == e.weights_bytes + e.overhead_bytes + e.kv_min_bytes
    assert e.total_full_bytes == e.total_bytes + 15 * GIB


@pytest.mark.parametrize(("tp", "pp"), [(1, 1), (2, 1), (4, 1), (8, 1), (4, 2)])
def test_weights_split_over_tp_times_pp(tp: int, pp: int) -> None:
    model = shape("llama-3.1-70b-instruct")
    e = estimate_memory(model, ServingConfig(tp_size=tp, pp_size=pp))
    assert e.gpus == tp * pp
    assert e.weights_bytes == math.ceil(weight_bytes(model, "bfloat16") / (tp * pp))


def test_overhead_is_runtime_plus_activations_that_grow_with_batched_tokens() -> None:
    model = shape("llama-3.1-8b-instruct")
    small = estimate_memory(model, ServingConfig(max_num_batched_tokens=2048))
    default = estimate_memory(model, ServingConfig())
    assert CUDA_RUNTIME_BYTES < small.overhead_bytes < default.overhead_bytes
    # ~1 GiB of activations for an 8B Llama at vLLM's default 8192 batched tokens
    assert 0.8 * GIB < default.overhead_bytes - CUDA_RUNTIME_BYTES < 1.5 * GIB


def test_deepseek_v3_needs_141_gb_gpus_at_tp8() -> None:
    card = get_card("deepseek-v3-0324")
    assert card is not None
    e = estimate_card(card, {"tpSize": 8, "maxModelLen": 32768})
    assert 75 * GIB < e.weights_bytes < 82 * GIB  # ~671 GB of fp8 weights over 8 GPUs
    assert not check_fit(e, [80 * GIB] * 8, 8, 0.9).fits
    assert check_fit(e, [141 * 10**9] * 8, 8, 0.9).fits


@pytest.mark.parametrize(
    "bad",
    [
        {"weight_dtype": "int3"},
        {"kv_cache_dtype": "int4"},
        {"tp_size": 0},
        {"pp_size": 0},
        {"max_model_len": 0},
        {"max_batch_size": 0},
    ],
)
def test_serving_config_rejects_nonsense(bad: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        ServingConfig(**bad)  # type: ignore[arg-type]


def test_serving_config_from_spec_parameters() -> None:
    cfg = ServingConfig.from_parameters(
        {"tpSize": 2, "ppSize": 2, "maxModelLen": 4096, "maxBatchSize": 8, "maxNumBatchedTokens": 1024},
        weight_dtype="fp8",
        default_max_model_len=32768,
    )
    assert cfg == ServingConfig("fp8", "auto", 4096, 8, 2, 2, 1024)
    assert ServingConfig.from_parameters({}, weight_dtype="bfloat16", default_max_model_len=8192) == (
        ServingConfig(max_model_len=8192)
    )


def test_card_estimate_defaults_max_model_len_to_the_models_context() -> None:
    smol = get_card("smollm2-135m-instruct")
    assert smol is not None
    assert estimate_card(smol, engine="builtin").config.max_model_len == 8192
    # the built-in engine dequantizes the GGUF file; vLLM would keep it quantized
    assert estimate_card(smol, engine="builtin").config.weight_dtype == "bfloat16"
    assert estimate_card(smol, engine="vllm").config.weight_dtype == "q4_1"


def test_ram_estimate_of_the_bundled_model() -> None:
    smol = get_card("smollm2-135m-instruct")
    assert smol is not None
    r = estimate_card_ram(smol, {"maxModelLen": 8192})
    # bfloat16 weights plus the 4-bit decode copies
    assert r.weights_bytes == pytest.approx(134_515_008 * (2 + 5 / 8), rel=0.01)
    assert r.kv_min_bytes == 2 * 30 * 3 * 64 * 2 * 8192
    # measured: ~0.74 GiB resident serving it with one 8192-token context
    assert 0.5 * GIB < r.total_bytes < 1.5 * GIB


def test_ram_estimate_needs_the_compute_dtype() -> None:
    with pytest.raises(ValueError, match="dequantized"):
        estimate_ram(shape("smollm2-135m-instruct"), ServingConfig(weight_dtype="q4_1"))
    f32 = estimate_ram(shape("smollm2-135m-instruct"), ServingConfig(weight_dtype="float32"))
    assert f32.weights_bytes == 134_515_008 * 4  # no int4 copies outside bfloat16


def qwen7b(**params: int) -> MemoryEstimate:
    card = get_card("qwen2.5-7b-instruct")
    assert card is not None
    return estimate_card(card, {"maxModelLen": 32768, **params})


@pytest.mark.parametrize(
    ("free_gib", "gpus", "util", "fits", "tp", "says"),
    [
        # L4 24 GB: the PRODUCT rule of thumb, a 7B wants a GPU of at least 16 GB
        ([22.0], 1, 0.9, True, None, ["room for the KV cache of"]),
        ([80.0], 1, 0.9, True, None, ["room for the KV cache of"]),
        # one 16 GB GPU: weights alone do not fit, only quantization helps
        ([15.0], 1, 0.9, False, None, ["needs 17.8 GiB per GPU at tpSize=1", "use a quantized model"]),
        # two of them: tpSize=2 halves the weights
        ([15.0, 15.0], 1, 0.9, False, 2, ["set tpSize=2 (", "the largest free GPU has 13.5 GiB usable"]),
        # the freest GPUs are chosen whatever their order
        ([4.0, 15.0, 8.0, 15.0], 1, 0.9, False, 2, ["set tpSize=2"]),
        # tp=8 would fit but 28 heads do not split over 8 GPUs, and tp=4 is too big still
        ([6.0] * 8, 1, 0.9, False, None, ["use a quantized model"]),
        # gpuMemoryUtilization is taken from what is free
        ([19.0], 1, 0.9, False, None, ["17.1 GiB usable (19.0 GiB free × gpuMemoryUtilization 0.9)"]),
        ([19.0], 1, 1.0, True, None, []),
    ],
)
def test_check_fit(
    free_gib: list[float], gpus: int, util: float, fits: bool, tp: int | None, says: list[str]
) -> None:
    result = check_fit(qwen7b(), [int(g * GIB) for g in free_gib], gpus, util)
    assert result.fits is fits, result.message
    assert result.suggested_tp_size == tp
    for text in says:
        assert text in result.message
    assert (result.suggestion == "") is fits


def test_smallest_fitting_tp_is_suggested() -> None:
    card = get_card("llama-3.1-70b-instruct")
    assert card is not None
    e = estimate_card(card, {"tpSize": 1, "maxModelLen": 32768})
    result = check_fit(e, [80 * GIB] * 8, 1, 0.9)
    # 141 GB of weights: tp=2 leaves ~71 GiB per GPU, over the 72 GiB budget once runtime and KV come on top
    assert not result.fits and result.suggested_tp_size == 4
    bigger = estimate_card(card, {"tpSize": 4, "maxModelLen": 32768})
    assert f"set tpSize=4 ({bigger.total_bytes / GIB:.1f} GiB per GPU)" in result.message


def test_lower_max_model_len_is_suggested_when_only_the_kv_cache_is_short() -> None:
    e = qwen7b()
    usable = e.weights_bytes + e.overhead_bytes + e.kv_min_bytes // 3
    result = check_fit(e, [usable], 1, 1.0)
    assert not result.fits
    suggested = int(result.suggestion.split("lower maxModelLen to ")[1].split()[0])
    assert 1024 <= suggested <= 32768 // 3 and suggested % 1024 == 0
    shorter = dataclasses.replace(e.config, max_model_len=suggested)
    assert check_fit(estimate_memory(e.model, shorter), [usable], 1, 1.0).fits


def test_concurrent_sequences_count_what_the_rest_of_the_budget_holds() -> None:
    e = qwen7b()
    result = check_fit(e, [80 * GIB], 1, 0.9)
    room = int(80 * GIB * 0.9) - e.weights_bytes - e.overhead_bytes
    assert result.concurrent_sequences == room // e.kv_min_bytes
    assert result.concurrent_sequences >= 30


def test_instance_must_have_the_gpus_tp_and_pp_span() -> None:
    result = check_fit(qwen7b(tpSize=2), [80 * GIB] * 2, 1, 0.9)
    assert not result.fits
    assert "spreads the model over 2 GPUs but the instance has 1" in result.message


def test_not_enough_free_gpus() -> None:
    result = check_fit(qwen7b(tpSize=2), [80 * GIB], 2, 0.9)
    assert not result.fits and "needs 2 GPUs; only 1 is free" in result.message


def test_dp_replicas_each_need_the_per_gpu_total() -> None:
    # 2 GPUs for a tpSize=1 instance (dpSize=2): the smaller of the two freest GPUs decides
    assert not check_fit(qwen7b(), [80 * GIB, 10 * GIB], 2, 0.9).fits
    assert check_fit(qwen7b(), [80 * GIB, 30 * GIB, 10 * GIB], 2, 0.9).fits


@pytest.mark.parametrize("util", [0.0, -0.1, 1.5])
def test_check_fit_rejects_bad_utilization(util: float) -> None:
    with pytest.raises(ValueError):
        check_fit(qwen7b(), [80 * GIB], 1, util)


def test_ram_fit() -> None:
    smol = get_card("smollm2-135m-instruct")
    assert smol is not None
    r = estimate_card_ram(smol, {"maxModelLen": 8192})
    ok = check_ram_fit(r, 8 * GIB)
    assert ok.fits and ok.concurrent_sequences > 1
    short = check_ram_fit(r, r.weights_bytes + r.overhead_bytes + r.kv_min_bytes // 2)
    assert not short.fits and "lower maxModelLen to 4096 or less" in short.message
    tiny = check_ram_fit(r, 256 << 20)
    assert not tiny.fits and "of RAM" in tiny.message and "lower maxModelLen" not in tiny.message


@pytest.mark.parametrize(
    ("card", "gb"),
    [  # PRODUCT.md: 7B ~14 GB at 16 bits, ~7 at 8, ~4 at 4 (embeddings stay 16-bit)
        ("qwen2.5-7b-instruct", {"FP16": (14, 16), "INT8": (7, 9), "INT4": (4, 6)}),
        ("llama-3.1-70b-instruct", {"FP16": (138, 143), "INT8": (70, 73), "INT4": (36, 42)}),
    ],
)
def test_precision_table_matches_the_rule_of_thumb(card, gb):
    rows = precision_table(get_card(card))
    assert [r["precision"] for r in rows] == ["FP16", "INT8", "INT4"]
    for r in rows:
        low, high = gb[r["precision"]]
        assert low <= r["weightsBytes"] / 1e9 <= high, r
    assert len({r["kvBytesPerToken"] for r in rows}) == 1  # the KV cache stays 16-bit whatever the weights
