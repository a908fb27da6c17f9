"""The model plaza: built-in model cards, one YAML file each under cards/, validated on load.

Cards are strict (unknown fields are errors) so a typo in a card fails loudly instead of
silently dropping a figure the memory estimator relies on.
"""

from __future__ import annotations

import functools
from datetime import date
from importlib import resources
from importlib.resources.abc import Traversable
from typing import Any, Literal, Self

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_serializer,
    model_validator,
)

from tideserve.catalog.estimator import WEIGHT_FORMATS
from tideserve.engine.config import SUPPORTED_ARCHITECTURES

# Lowercase DNS-1123 style (dots allowed, as in "qwen2.5-7b-instruct"), at most 63 characters.
NAME_PATTERN = r"^[a-z0-9]([a-z0-9.-]{0,61}[a-z0-9])?$"

TaskType = Literal["chat", "reasoning", "code", "embedding"]
Engine = Literal["builtin", "vllm", "sglang"]
# config.json model_type values.
ArchitectureType = Literal[
    "llama",
    "mistral",
    "qwen2",
    "qwen3",
    "qwen3_moe",
    "deepseek_v3",
    "chatglm",
    "glm4_moe",
    "hunyuan_v1_dense",
    "hunyuan_v1_moe",
]


class CardError(ValueError):
    pass


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Architecture(_Strict):
    type: ArchitectureType
    layers: int = Field(gt=0)
    hidden_size: int = Field(gt=0)
    intermediate_size: int = Field(gt=0)  # dense MLP width (MoE models: of their dense layers)
    heads: int = Field(gt=0)
    kv_heads: int = Field(gt=0)
    head_dim: int = Field(gt=0)
    vocab_size: int = Field(gt=0)
    max_context: int = Field(gt=0)
    tied_embeddings: bool = False
    experts: int | None = Field(default=None, gt=1)
    active_experts: int | None = Field(default=None, gt=0)  # routed experts per token
    moe_intermediate_size: int | None = Field(default=None, gt=0)  # one expert's MLP width
    dense_layers: int = Field(default=0, ge=0)  # MoE: leading layers with a dense MLP instead
    kv_lora_rank: int | None = Field(default=None, gt=0)  # MLA: compressed KV latent width
    qk_rope_head_dim: int | None = Field(default=None, gt=0)  # MLA: RoPE part of each key

    @property
    def is_moe(self) -> bool:
        return self.experts is not None

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if self.heads % self.kv_heads:
            raise ValueError(f"heads ({self.heads}) must be a multiple of kv_heads ({self.kv_heads})")
        moe = (self.experts, self.active_experts, self.moe_intermediate_size)
        if any(v is None for v in moe) and any(v is not None for v in moe):
            raise ValueError("experts, active_experts and moe_intermediate_size go together")
        if (self.active_experts or 0) > (self.experts or 0):
            raise ValueError("active_experts cannot exceed experts")
        if self.dense_layers and (self.experts is None or self.dense_layers >= self.layers):
            raise ValueError("dense_layers applies to MoE models and must leave MoE layers")
        if (self.kv_lora_rank is None) != (self.qk_rope_head_dim is None):
            raise ValueError("kv_lora_rank and qk_rope_head_dim go together (MLA)")
        return self


class RecommendedParameters(_Strict):
    """Framework parameters as a service spec names them (camelCase), ready to copy into one."""

    tpSize: int | None = Field(default=None, ge=1)
    ppSize: int | None = Field(default=None, ge=1)
    maxModelLen: int | None = Field(default=None, ge=1024)
    maxBatchSize: int | None = Field(default=None, ge=1)
    maxNumBatchedTokens: int | None = Field(default=None, ge=1)
    gpuMemoryUtilization: float | None = Field(default=None, gt=0, le=1)

    @model_serializer(mode="wrap")
    def _without_unset(self, handler: Any) -> dict[str, Any]:
        return {k: v for k, v in handler(self).items() if v is not None}


class Card(_Strict):
    name: str = Field(pattern=NAME_PATTERN)
    display_name: str = Field(min_length=1)
    family: str = Field(pattern=NAME_PATTERN)
    version: str = Field(min_length=1)
    vendor: str = Field(min_length=1)
    license: str = Field(min_length=1)
    release_date: date
    source: str = Field(pattern=r"^(bundled|hf://[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+)$")
    offline: bool = False  # runs without network access (its weights ship with tideserve)
    architecture: Architecture
    parameters: int = Field(gt=0)
    active_parameters: int | None = Field(default=None, gt=0)  # MoE: per token
    dtype: str = "bfloat16"
    task_types: tuple[TaskType, ...] = Field(min_length=1)
    tags: tuple[str, ...] = ()
    recommended_engines: tuple[Engine, ...] = Field(min_length=1)
    recommended_parameters: RecommendedParameters = RecommendedParameters()
    description: str = Field(min_length=1)
    usage: str = Field(min_length=1)

    @field_validator("dtype")
    @classmethod
    def _known_dtype(cls, v: str) -> str:
        if v not in WEIGHT_FORMATS:
            raise ValueError(f"unknown dtype {v!r}; known: {', '.join(WEIGHT_FORMATS)}")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        arch, rec = self.architecture, self.recommended_parameters
        if self.offline != (self.source == "bundled"):
            raise ValueError("offline: true exactly when source is bundled")
        if (self.active_parameters is None) == arch.is_moe:
            raise ValueError("active_parameters is required for MoE models and only for them")
        if self.active_parameters is not None and self.active_parameters >= self.parameters:
            raise ValueError("active_parameters must be below parameters")
        if len(set(self.recommended_engines)) != len(self.recommended_engines):
            raise ValueError("recommended_engines has duplicates")
        if "builtin" in self.recommended_engines and (
            arch.type not in SUPPORTED_ARCHITECTURES or arch.is_moe or (rec.tpSize or 1) > 1
        ):
            raise ValueError(
                f"the built-in engine runs dense {', '.join(SUPPORTED_ARCHITECTURES)} models on one device; "
                "drop builtin from recommended_engines"
            )
        if rec.maxModelLen is not None and rec.maxModelLen > arch.max_context:
            raise ValueError(f"recommended maxModelLen exceeds max_context ({arch.max_context})")
        if rec.tpSize is not None and arch.heads % rec.tpSize:
            raise ValueError(f"recommended tpSize must divide heads ({arch.heads})")
        return self


def _card_files() -> list[Traversable]:
    folder = resources.files("tideserve.catalog").joinpath("cards")
    return sorted((f for f in folder.iterdir() if f.name.endswith(".yaml")), key=lambda f: f.name)


@functools.cache
def _cards() -> dict[str, Card]:
    cards: dict[str, Card] = {}
    for f in _card_files():
        try:
            card = Card.model_validate(yaml.safe_load(f.read_text(encoding="utf-8")))
        except (ValidationError, yaml.YAMLError) as e:
            raise CardError(f"model card {f.name}: {e}") from e
        # One file per name keeps names unique.
        if f.name != f"{card.name}.yaml":
            raise CardError(f"model card {f.name} is named {card.name!r}: name the file {card.name}.yaml")
        cards[card.name] = card
    return cards


def load_cards() -> list[Card]:
    """All built-in cards, by name."""
    return list(_cards().values())


def get_card(name: str) -> Card | None:
    return _cards().get(name)


def filter_cards(
    cards: list[Card],
    task: str | None = None,
    family: str | None = None,
    tag: str | None = None,
    q: str | None = None,
) -> list[Card]:
    """Cards matching every given filter; `q` is a case-insensitive substring of the name,
    display name, family, vendor, tags or description."""

    def matches(c: Card) -> bool:
        if task is not None and task not in c.task_types:
            return False
        if family is not None and family.lower() != c.family:
            return False
        if tag is not None and tag.lower() not in (t.lower() for t in c.tags):
            return False
        if q is not None:
            text = " ".join((c.name, c.display_name, c.family, c.vendor, *c.tags, c.description)).lower()
            return q.lower() in text
        return True

    return [c for c in cards if matches(c)]
