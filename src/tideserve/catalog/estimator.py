"""How much memory serving a model takes: weights, KV cache and runtime overhead, per GPU (or in
RAM for a CPU instance), and whether that fits the memory a node has free.

Pure arithmetic over dataclasses: no I/O, no torch. The numbers are estimates made before anything
starts, so they lean a little high: a deployment refused here would have failed at load anyway,
and one let through should not run out of memory the moment its KV cache fills.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tideserve.catalog.plaza import Card

GIB = 1 << 30


@dataclass(frozen=True)
class WeightFormat:
    bits: float  # per weight of the transformer blocks
    embedding_bits: float  # token embedding and LM head


# Quantized checkpoints (fp8, int8, AWQ/GPTQ int4) leave the embedding and LM head in 16 bits.
# int4's 4.25 bits: 4-bit codes plus a 16-bit scale and a 4-bit zero point per group of 128.
# GGUF types are their real block sizes (q4_0: 32 codes + an fp16 scale = 4.5 bits; q4_1 adds an
# fp16 minimum = 5.0; q8_0 = 8.5); llama.cpp stores the output matrix (shared with the embedding
# when tied) at 6.5-8.5 bits, 8.5 (q8_0) being what the bundled SmolLM2 file has.
WEIGHT_FORMATS: dict[str, WeightFormat] = {
    "float32": WeightFormat(32, 32),
    "bfloat16": WeightFormat(16, 16),
    "float16": WeightFormat(16, 16),
    "fp8": WeightFormat(8, 16),
    "int8": WeightFormat(8, 16),
    "int4": WeightFormat(4.25, 16),
    "awq": WeightFormat(4.25, 16),
    "gptq": WeightFormat(4.25, 16),
    "q8_0": WeightFormat(8.5, 8.5),
    "q4_1": WeightFormat(5.0, 8.5),
    "q4_0": WeightFormat(4.5, 8.5),
}
FLOAT_DTYPES = frozenset({"float32", "bfloat16", "float16"})
# "auto" (the engines' default) is the activation dtype: 16-bit unless the weights are float32.
KV_CACHE_BYTES: dict[str, int] = {
    "float32": 4,
    "bfloat16": 2,
    "float16": 2,
    "fp8": 1,
    "fp8_e4m3": 1,
    "fp8_e5m2": 1,
}

# Per GPU, whatever the model: the CUDA context with cuBLAS/cuDNN workspaces (~0.5 GiB on current
# GPUs), the CUDA graphs engines capture for decode batch sizes, NCCL buffers once tpSize > 1, and
# allocator fragmentation. None of it is counted by gpuMemoryUtilization-based KV sizing.
CUDA_RUNTIME_BYTES = 1 * GIB
# Peak activations of one forward pass scale with the tokens in the step times the hidden size: the
# MLP's gate+up output alone is ~7x hidden wide for Llama-style models, plus the residual stream,
# the normed input, q/k/v and the attention output. 16 hidden-widths of 16-bit values gives an 8B
# Llama at 8192 batched tokens ~1 GiB, the order of the activation peak vLLM profiles for it. Not
# divided by tpSize: the residual stream is replicated, and the estimate should lean high.
ACTIVATION_WIDTH = 16
ACTIVATION_BYTES = 2
LOGIT_BYTES = 4  # the sampler works on float32 logits, one row per sequence in the batch
DEFAULT_BATCHED_TOKENS = 8192  # vLLM's max_num_batched_tokens default for its OpenAI server
DEFAULT_MAX_MODEL_LEN = 32768  # the service spec's default maxModelLen
MIN_MAX_MODEL_LEN = 1024  # the smallest maxModelLen a service spec accepts

# The built-in engine on CPU (the only CPU engine): Python, torch, the tokenizer and the HTTP
# server measured ~230 MiB resident serving the bundled model with 2 threads; 384 MiB leaves room
# for bigger tokenizers and per-thread allocator arenas.
CPU_RUNTIME_BYTES = 384 << 20
# It keeps a second, 4-bit copy of every projection for small-batch decode when computing in
# bfloat16: 4-bit codes plus a bfloat16 scale and offset per group of 32 weights.
CPU_INT4_COPY_BITS = 5.0
BUILTIN_BATCHED_TOKENS = 2048  # the built-in engine's max_num_batched_tokens default

TP_SIZES = (1, 2, 4, 8)


@dataclass(frozen=True)
class ModelShape:
    """The architecture figures memory depends on (config.json terms)."""

    layers: int
    hidden_size: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab_size: int
    parameters: int
    tied_embeddings: bool = False
    # Multi-head latent attention (DeepSeek-V2/V3) caches one compressed latent plus the RoPE part
    # of the key per token and layer instead of per-head keys and values.
    kv_lora_rank: int | None = None
    qk_rope_head_dim: int | None = None

    @property
    def embedding_parameters(self) -> int:
        return self.vocab_size * self.hidden_size * (1 if self.tied_embeddings else 2)


@dataclass(frozen=True)
class ServingConfig:
    """Weight format and the framework parameters that change memory (service spec names in
    comments)."""

    weight_dtype: str = "bfloat16"
    kv_cache_dtype: str = "auto"
    max_model_len: int = DEFAULT_MAX_MODEL_LEN  # maxModelLen
    max_batch_size: int = 32  # maxBatchSize
    tp_size: int = 1  # tpSize
    pp_size: int = 1  # ppSize
    max_num_batched_tokens: int | None = None  # maxNumBatchedTokens; None: the engine's default

    def __post_init__(self) -> None:
        if self.weight_dtype not in WEIGHT_FORMATS:
            raise ValueError(
                f"unknown weight dtype {self.weight_dtype!r}; known: {', '.join(WEIGHT_FORMATS)}"
            )
        if self.kv_cache_dtype != "auto" and self.kv_cache_dtype not in KV_CACHE_BYTES:
            raise ValueError(
                f"unknown KV cache dtype {self.kv_cache_dtype!r}; known: auto, {', '.join(KV_CACHE_BYTES)}"
            )
        for name in ("max_model_len", "max_batch_size", "tp_size", "pp_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")

    @classmethod
    def from_parameters(
        cls, parameters: Mapping[str, Any], *, weight_dtype: str, default_max_model_len: int
    ) -> ServingConfig:
        """From a service spec's framework parameters (camelCase, as users write them)."""
        return cls(
            weight_dtype=weight_dtype,
            max_model_len=int(parameters.get("maxModelLen") or default_max_model_len),
            max_batch_size=int(parameters.get("maxBatchSize") or 32),
            tp_size=int(parameters.get("tpSize") or 1),
            pp_size=int(parameters.get("ppSize") or 1),
            max_num_batched_tokens=int(parameters["maxNumBatchedTokens"])
            if parameters.get("maxNumBatchedTokens")
            else None,
        )

    @property
    def kv_bytes_per_value(self) -> int:
        if self.kv_cache_dtype != "auto":
            return KV_CACHE_BYTES[self.kv_cache_dtype]
        return 4 if self.weight_dtype == "float32" else 2

    @property
    def gpus(self) -> int:
        return self.tp_size * self.pp_size


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes on each GPU of one instance (the worst one when layers do not split evenly), or of RAM
    for a CPU instance of the built-in engine (then tp = pp = 1)."""

    model: ModelShape
    config: ServingConfig
    weights_bytes: int
    kv_bytes_per_token: int
    kv_min_bytes: int  # one sequence at maxModelLen: what an engine needs to start
    kv_full_bytes: int  # maxBatchSize sequences at maxModelLen: the cache never preempts
    overhead_bytes: int

    @property
    def gpus(self) -> int:
        return self.config.gpus

    @property
    def total_bytes(self) -> int:
        """What fit decisions use: engines like vLLM start with room for one full sequence and
        serve more concurrent ones as the remaining memory allows."""
        return self.weights_bytes + self.overhead_bytes + self.kv_min_bytes

    @property
    def total_full_bytes(self) -> int:
        return self.weights_bytes + self.overhead_bytes + self.kv_full_bytes


@dataclass(frozen=True)
class FitResult:
    fits: bool
    needed_bytes: int  # per GPU (or of RAM)
    available_bytes: int  # usable on the tightest GPU the instance would get (or free RAM)
    concurrent_sequences: int  # full-length sequences whose KV cache fits beside the rest
    message: str
    suggestion: str = ""  # what to change, when it does not fit
    suggested_tp_size: int | None = None


def weight_bytes(model: ModelShape, weight_dtype: str) -> int:
    """All weights of the model, on one device."""
    fmt = WEIGHT_FORMATS[weight_dtype]
    embedding = min(model.embedding_parameters, model.parameters)
    return math.ceil(((model.parameters - embedding) * fmt.bits + embedding * fmt.embedding_bits) / 8)


def kv_bytes_per_token(model: ModelShape, config: ServingConfig) -> int:
    """KV cache bytes one token takes on one GPU: layers split by ppSize; attention heads split by
    tpSize, but never below one KV head per GPU (GQA models with fewer KV heads than tpSize
    replicate them); an MLA latent is replicated on every tensor-parallel rank."""
    layers = math.ceil(model.layers / config.pp_size)
    per_value = config.kv_bytes_per_value
    if model.kv_lora_rank is not None and model.qk_rope_head_dim is not None:
        return layers * (model.kv_lora_rank + model.qk_rope_head_dim) * per_value
    kv_heads = max(1, math.ceil(model.kv_heads / config.tp_size))
    return 2 * layers * kv_heads * model.head_dim * per_value


def _activation_bytes(model: ModelShape, config: ServingConfig, default_tokens: int) -> int:
    tokens = config.max_num_batched_tokens or default_tokens
    return (
        tokens * model.hidden_size * ACTIVATION_WIDTH * ACTIVATION_BYTES
        + config.max_batch_size * model.vocab_size * LOGIT_BYTES
    )


def estimate_memory(model: ModelShape, config: ServingConfig) -> MemoryEstimate:
    """Per-GPU needs of one instance on tp_size x pp_size GPUs. Weights are spread evenly (vLLM
    also splits the vocabulary across tensor-parallel ranks)."""
    per_token = kv_bytes_per_token(model, config)
    return MemoryEstimate(
        model=model,
        config=config,
        weights_bytes=math.ceil(weight_bytes(model, config.weight_dtype) / config.gpus),
        kv_bytes_per_token=per_token,
        kv_min_bytes=per_token * config.max_model_len,
        kv_full_bytes=per_token * config.max_model_len * config.max_batch_size,
        overhead_bytes=CUDA_RUNTIME_BYTES + _activation_bytes(model, config, DEFAULT_BATCHED_TOKENS),
    )


def estimate_ram(model: ModelShape, config: ServingConfig) -> MemoryEstimate:
    """RAM of one built-in engine instance on CPU. `config.weight_dtype` is the dtype it computes
    in: GGUF and other quantized files are dequantized on load. tp/pp do not apply on CPU."""
    if config.weight_dtype not in FLOAT_DTYPES:
        raise ValueError(
            f"the built-in engine computes in {', '.join(sorted(FLOAT_DTYPES))}, "
            f"not {config.weight_dtype!r}: quantized files are dequantized on load, "
            "so estimate with the compute dtype"
        )
    single = replace(config, tp_size=1, pp_size=1)
    weights = weight_bytes(model, single.weight_dtype)
    if single.weight_dtype == "bfloat16":
        weights += math.ceil(model.parameters * CPU_INT4_COPY_BITS / 8)
    per_token = kv_bytes_per_token(model, single)
    return MemoryEstimate(
        model=model,
        config=single,
        weights_bytes=weights,
        kv_bytes_per_token=per_token,
        kv_min_bytes=per_token * single.max_model_len,
        kv_full_bytes=per_token * single.max_model_len * single.max_batch_size,
        overhead_bytes=CPU_RUNTIME_BYTES + _activation_bytes(model, single, BUILTIN_BATCHED_TOKENS),
    )


def _gib(n: int) -> str:
    return f"{n / GIB:.1f} GiB"


def _gpus(n: int) -> str:
    return f"{n} GPU" if n == 1 else f"{n} GPUs"


def _where(config: ServingConfig) -> str:
    return f"tpSize={config.tp_size}" + (f", ppSize={config.pp_size}" if config.pp_size > 1 else "")


def _breakdown(e: MemoryEstimate) -> str:
    return (
        f"weights {_gib(e.weights_bytes)}, KV cache for one {e.config.max_model_len}-token sequence "
        f"{_gib(e.kv_min_bytes)}, runtime {_gib(e.overhead_bytes)}"
    )


def _sequences(e: MemoryEstimate, available: int) -> int:
    room = available - e.weights_bytes - e.overhead_bytes
    return max(0, room // e.kv_min_bytes) if e.kv_min_bytes else 0


def _max_model_len(e: MemoryEstimate, available: int) -> int | None:
    """The largest maxModelLen (a multiple of 1024) whose one sequence fits, if any is allowed."""
    room = available - e.weights_bytes - e.overhead_bytes
    if e.kv_bytes_per_token == 0 or room <= 0:
        return None
    longest = room // e.kv_bytes_per_token // MIN_MAX_MODEL_LEN * MIN_MAX_MODEL_LEN
    return longest if longest >= MIN_MAX_MODEL_LEN else None


def _join_options(options: list[str]) -> str:
    return options[0] if len(options) == 1 else ", ".join(options[:-1]) + f", or {options[-1]}"


def _smallest_fitting_tp(
    e: MemoryEstimate, free_desc: list[int], utilization: float
) -> MemoryEstimate | None:
    for tp in TP_SIZES:
        gpus = tp * e.config.pp_size
        if tp <= e.config.tp_size or e.model.heads % tp or gpus > len(free_desc):
            continue
        candidate = estimate_memory(e.model, replace(e.config, tp_size=tp))
        if candidate.total_bytes <= int(free_desc[gpus - 1] * utilization):
            return candidate
    return None


def check_fit(
    estimate: MemoryEstimate,
    free_bytes_per_gpu: Sequence[int],
    gpus_per_instance: int,
    gpu_memory_utilization: float,
) -> FitResult:
    """Does one instance fit the GPUs with the most free memory? Engines claim a share
    (gpuMemoryUtilization) of each GPU; we know free memory rather than the total, and on an idle
    GPU the two are close, so free × utilization is what the instance may use."""
    if not 0 < gpu_memory_utilization <= 1:
        raise ValueError("gpu_memory_utilization must be in (0, 1]")
    need = estimate.total_bytes
    if gpus_per_instance < estimate.gpus:
        return FitResult(
            fits=False,
            needed_bytes=need,
            available_bytes=0,
            concurrent_sequences=0,
            message=(
                f"{_where(estimate.config)} spreads the model over {_gpus(estimate.gpus)} "
                f"but the instance has {gpus_per_instance}"
            ),
            suggestion=f"give each instance {_gpus(estimate.gpus)} or lower tpSize/ppSize",
        )
    free_desc = sorted(free_bytes_per_gpu, reverse=True)
    if len(free_desc) < gpus_per_instance:
        return FitResult(
            fits=False,
            needed_bytes=need,
            available_bytes=0,
            concurrent_sequences=0,
            message=(
                f"an instance needs {_gpus(gpus_per_instance)}; "
                f"only {len(free_desc)} {'is' if len(free_desc) == 1 else 'are'} free"
            ),
            suggestion="free GPUs or add a node with more",
        )
    tightest = free_desc[gpus_per_instance - 1]
    usable = int(tightest * gpu_memory_utilization)
    sequences = _sequences(estimate, usable)
    which = (
        f"the {gpus_per_instance} freest GPUs have" if gpus_per_instance > 1 else "the largest free GPU has"
    )
    have = (
        f"{which} {_gib(usable)} usable "
        f"({_gib(tightest)} free × gpuMemoryUtilization {gpu_memory_utilization:g})"
    )
    if need <= usable:
        return FitResult(
            fits=True,
            needed_bytes=need,
            available_bytes=usable,
            concurrent_sequences=sequences,
            message=(
                f"needs {_gib(need)} per GPU at {_where(estimate.config)}; {have}: room for the KV cache "
                f"of {sequences} concurrent {estimate.config.max_model_len}-token sequences"
            ),
        )
    options: list[str] = []
    bigger = _smallest_fitting_tp(estimate, free_desc, gpu_memory_utilization)
    if bigger is not None:
        options.append(f"set tpSize={bigger.config.tp_size} ({_gib(bigger.total_bytes)} per GPU)")
    shorter = _max_model_len(estimate, usable)
    if shorter is not None:
        options.append(f"lower maxModelLen to {shorter} or less")
    if estimate.config.weight_dtype in FLOAT_DTYPES:
        options.append("use a quantized model (fp8, int8 or int4)")
    if not options:
        options.append("use GPUs with more free memory or spread the model over more of them (ppSize)")
    suggestion = _join_options(options)
    return FitResult(
        fits=False,
        needed_bytes=need,
        available_bytes=usable,
        concurrent_sequences=0,
        message=(
            f"needs {_gib(need)} per GPU at {_where(estimate.config)} ({_breakdown(estimate)}); "
            f"{have}: {suggestion}"
        ),
        suggestion=suggestion,
        suggested_tp_size=bigger.config.tp_size if bigger is not None else None,
    )


def check_ram_fit(estimate: MemoryEstimate, free_ram_bytes: int) -> FitResult:
    """Does one CPU instance fit the RAM a node has free (or the instance's memory limit, when the
    caller passes the smaller of the two)?"""
    need = estimate.total_bytes
    sequences = _sequences(estimate, free_ram_bytes)
    if need <= free_ram_bytes:
        return FitResult(
            fits=True,
            needed_bytes=need,
            available_bytes=free_ram_bytes,
            concurrent_sequences=sequences,
            message=(
                f"needs {_gib(need)} of RAM; {_gib(free_ram_bytes)} free: room for the KV cache of "
                f"{sequences} concurrent {estimate.config.max_model_len}-token sequences"
            ),
        )
    options: list[str] = []
    shorter = _max_model_len(estimate, free_ram_bytes)
    if shorter is not None:
        options.append(f"lower maxModelLen to {shorter} or less")
    options += ["pick a smaller model", "use a node with more free memory"]
    suggestion = _join_options(options)
    return FitResult(
        fits=False,
        needed_bytes=need,
        available_bytes=free_ram_bytes,
        concurrent_sequences=0,
        message=(
            f"needs {_gib(need)} of RAM ({_breakdown(estimate)}); "
            f"the node has {_gib(free_ram_bytes)} free: {suggestion}"
        ),
        suggestion=suggestion,
    )


def shape_of(card: Card) -> ModelShape:
    arch = card.architecture
    return ModelShape(
        layers=arch.layers,
        hidden_size=arch.hidden_size,
        heads=arch.heads,
        kv_heads=arch.kv_heads,
        head_dim=arch.head_dim,
        vocab_size=arch.vocab_size,
        parameters=card.parameters,
        tied_embeddings=arch.tied_embeddings,
        kv_lora_rank=arch.kv_lora_rank,
        qk_rope_head_dim=arch.qk_rope_head_dim,
    )


def _card_config(card: Card, parameters: Mapping[str, Any] | None, weight_dtype: str) -> ServingConfig:
    return ServingConfig.from_parameters(
        parameters or {},
        weight_dtype=weight_dtype,
        default_max_model_len=min(DEFAULT_MAX_MODEL_LEN, card.architecture.max_context),
    )


def estimate_card(
    card: Card, parameters: Mapping[str, Any] | None = None, *, engine: str = "vllm"
) -> MemoryEstimate:
    """GPU needs of serving `card` with a service's framework parameters. vLLM and SGLang keep a
    quantized checkpoint quantized; the built-in engine dequantizes anything but float weights to
    bfloat16 on load."""
    dtype = card.dtype
    if engine == "builtin" and dtype not in FLOAT_DTYPES:
        dtype = "bfloat16"
    return estimate_memory(shape_of(card), _card_config(card, parameters, dtype))


def estimate_card_ram(card: Card, parameters: Mapping[str, Any] | None = None) -> MemoryEstimate:
    """RAM needs of serving `card` on CPU with the built-in engine (which computes in bfloat16)."""
    return estimate_ram(shape_of(card), _card_config(card, parameters, "bfloat16"))


# What the model plaza shows per precision: the usual checkpoints of a model (16-bit, int8, int4).
PLAZA_PRECISIONS = (("FP16", "bfloat16"), ("INT8", "int8"), ("INT4", "int4"))


def precision_table(card: Card) -> list[dict[str, Any]]:
    """Weights of the card at each usual precision, and the 16-bit KV cache one token takes, on one
    GPU: the figures a user reads to pick GPUs before deploying."""
    shape = shape_of(card)
    kv = kv_bytes_per_token(shape, _card_config(card, None, "bfloat16"))
    return [
        {"precision": label, "weightsBytes": weight_bytes(shape, fmt), "kvBytesPerToken": kv}
        for label, fmt in PLAZA_PRECISIONS
    ]
