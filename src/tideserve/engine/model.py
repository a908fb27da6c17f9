"""The decoder-only transformer of the llama family: Llama 2/3, SmolLM, Mistral, Qwen2, Qwen3.

Differences between them are configuration: GQA, QKV bias (qwen2), per-head Q/K RMSNorm
(qwen3), tied embeddings, llama3 RoPE scaling. Q/K/V and gate/up projections are fused into
one matmul each: fewer, larger kernels matter on a CPU and on a GPU alike.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from tideserve.engine.attention import AttentionBackend, AttentionMetadata, TorchPagedAttention
from tideserve.engine.config import ModelConfig
from tideserve.engine.quant import MAX_INT4_ROWS, int4_matmul, pack_int4


def rope_inv_freq(cfg: ModelConfig) -> torch.Tensor:
    dim = cfg.head_dim
    inv_freq = 1.0 / (cfg.rope_theta ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim))
    scaling = cfg.rope_scaling or {}
    kind = scaling.get("rope_type", scaling.get("type"))
    if kind in (None, "default"):
        return inv_freq
    if kind == "linear":
        return inv_freq / scaling["factor"]
    if kind == "llama3":
        factor = scaling["factor"]
        low, high = scaling.get("low_freq_factor", 1.0), scaling.get("high_freq_factor", 4.0)
        old_len = scaling["original_max_position_embeddings"]
        wavelen = 2 * math.pi / inv_freq
        smooth = (old_len / wavelen - low) / (high - low)
        scaled = torch.where(wavelen > old_len / low, inv_freq / factor, inv_freq)
        mid = (wavelen <= old_len / low) & (wavelen >= old_len / high)
        return torch.where(mid, (1 - smooth) * inv_freq / factor + smooth * inv_freq, scaled)
    raise ValueError(f"rope_scaling type {kind!r} is not supported (supported: default, linear, llama3)")


class Linear(nn.Module):
    """y = x W^T + b, with storage allocated uninitialised: every weight comes from a checkpoint
    (or the dummy initialiser), so default init would only cost start-up time."""

    def __init__(self, in_features: int, out_features: int, bias: bool, factory: dict[str, Any]) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(out_features, in_features, **factory), requires_grad=False)
        self.bias = nn.Parameter(torch.empty(out_features, **factory), requires_grad=False) if bias else None
        self.int4: tuple[torch.Tensor, torch.Tensor] | None = None  # see quant.py

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.int4 is not None and x.shape[0] <= MAX_INT4_ROWS:
            y = int4_matmul(x, *self.int4)
            return y if self.bias is None else y + self.bias
        return F.linear(x, self.weight, self.bias)


def _ones(n: int, factory: dict[str, Any]) -> nn.Parameter:
    return nn.Parameter(torch.ones(n, **factory), requires_grad=False)


class RotaryEmbedding(nn.Module):
    def __init__(self, cfg: ModelConfig, max_positions: int) -> None:
        super().__init__()
        t = torch.arange(max_positions, dtype=torch.float64)
        freqs = torch.outer(t, rope_inv_freq(cfg))
        # float32 tables whatever the model dtype: positions in the thousands need the precision.
        self.register_buffer("cos", freqs.cos().float(), persistent=False)
        self.register_buffer("sin", freqs.sin().float(), persistent=False)

    def tables(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-step tables [T, 1, head_dim], gathered once and used by every layer, so that
        rope(x) = x * C + swap_halves(x) * S, which is Hugging Face's rotate-half form."""
        cos, sin = self.cos[positions].unsqueeze(1), self.sin[positions].unsqueeze(1)
        return torch.cat((cos, cos), dim=-1).to(dtype), torch.cat((-sin, sin), dim=-1).to(dtype)


def apply_rope(x: torch.Tensor, c: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    return x * c + torch.roll(x, x.shape[-1] // 2, dims=-1) * s


Rope = tuple[torch.Tensor, torch.Tensor]


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig, backend: AttentionBackend, factory: dict[str, Any]) -> None:
        super().__init__()
        self.nh, self.nkv, self.hd = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        self.q_size, self.kv_size = self.nh * self.hd, self.nkv * self.hd
        self.qkv_proj = Linear(cfg.hidden_size, self.q_size + 2 * self.kv_size, cfg.attention_bias, factory)
        self.o_proj = Linear(self.q_size, cfg.hidden_size, False, factory)
        self.qk_norm = cfg.qk_norm
        if cfg.qk_norm:
            # Qwen3's per-head q_norm and k_norm weights, one row per head of the fused Q|K view.
            self.qk_norm_weight = nn.Parameter(torch.ones(self.nh + self.nkv, self.hd, **factory), False)
        self.eps = cfg.rms_norm_eps
        self.scale = self.hd**-0.5
        self.backend = backend

    def forward(
        self, x: torch.Tensor, rope: Rope, cache: torch.Tensor, meta: AttentionMetadata
    ) -> torch.Tensor:
        t = x.shape[0]
        qkv = self.qkv_proj(x)
        # Q and K heads side by side: one norm and one rotation for both.
        qk = qkv[:, : self.q_size + self.kv_size].view(t, self.nh + self.nkv, self.hd)
        if self.qk_norm:
            qk = F.rms_norm(qk, (self.hd,), None, self.eps) * self.qk_norm_weight
        qk = apply_rope(qk, *rope)
        v = qkv[:, self.q_size + self.kv_size :].view(t, self.nkv, self.hd)
        kv = torch.stack((qk[:, self.nh :], v), dim=1)  # [T, 2, kvh, hd]: the cache's slot layout
        o = self.backend.forward(qk[:, : self.nh], kv, cache, meta, self.scale)
        return self.o_proj(o.reshape(t, self.q_size))


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig, factory: dict[str, Any]) -> None:
        super().__init__()
        self.inter = cfg.intermediate_size
        self.gate_up_proj = Linear(cfg.hidden_size, 2 * cfg.intermediate_size, False, factory)
        self.down_proj = Linear(cfg.intermediate_size, cfg.hidden_size, False, factory)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up_proj(x).split(self.inter, dim=-1)
        return self.down_proj(F.silu(gate) * up)


class DecoderLayer(nn.Module):
    def __init__(self, cfg: ModelConfig, backend: AttentionBackend, factory: dict[str, Any]) -> None:
        super().__init__()
        self.input_layernorm = _ones(cfg.hidden_size, factory)
        self.post_attention_layernorm = _ones(cfg.hidden_size, factory)
        self.self_attn = Attention(cfg, backend, factory)
        self.mlp = MLP(cfg, factory)
        self.eps = cfg.rms_norm_eps
        self.hidden = cfg.hidden_size

    def forward(
        self, x: torch.Tensor, rope: Rope, cache: torch.Tensor, meta: AttentionMetadata
    ) -> torch.Tensor:
        h = F.rms_norm(x, (self.hidden,), self.input_layernorm, self.eps)
        x = x + self.self_attn(h, rope, cache, meta)
        h = F.rms_norm(x, (self.hidden,), self.post_attention_layernorm, self.eps)
        return x + self.mlp(h)


class CausalLM(nn.Module):
    def __init__(
        self, cfg: ModelConfig, max_positions: int, dtype: torch.dtype, device: torch.device
    ) -> None:
        super().__init__()
        self.cfg = cfg
        factory: dict[str, Any] = {"dtype": dtype, "device": device}
        backend = TorchPagedAttention()
        self.embed_tokens = Linear(cfg.hidden_size, cfg.vocab_size, False, factory)  # rows = token vectors
        self.layers = nn.ModuleList(DecoderLayer(cfg, backend, factory) for _ in range(cfg.num_layers))
        self.norm = _ones(cfg.hidden_size, factory)
        self.lm_head = (
            None if cfg.tie_word_embeddings else Linear(cfg.hidden_size, cfg.vocab_size, False, factory)
        )
        self.rope = RotaryEmbedding(cfg, max_positions).to(device)

    def enable_int4(self, packed: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        """Add 4-bit copies of every projection (and the LM head) for small-batch decode (CPU,
        bfloat16 only: the kernel's activations are bfloat16). `packed`, as returned by an
        earlier call on the same weights, skips the packing; the packed tensors are returned."""
        if self.embed_tokens.weight.dtype != torch.bfloat16 or self.embed_tokens.weight.device.type != "cpu":
            raise ValueError("int4 decode weights need --dtype bfloat16 on CPU")
        out: dict[str, torch.Tensor] = {}
        for name, m in self.named_modules():
            if isinstance(m, Linear):
                if packed is None:
                    m.int4 = pack_int4(m.weight)
                else:
                    m.int4 = (packed[f"{name}.int4"], packed[f"{name}.scales_zeros"])
                out[f"{name}.int4"], out[f"{name}.scales_zeros"] = m.int4
        return out

    def forward(
        self,
        input_ids: torch.Tensor,  # [T]
        positions: torch.Tensor,  # [T]
        kv_caches: torch.Tensor,  # [num_layers, num_blocks, block_size, 2, kvh, hd]
        meta: AttentionMetadata,
        logit_indices: torch.Tensor,  # [S] rows of the step whose next-token logits are wanted
    ) -> torch.Tensor:
        x = F.embedding(input_ids, self.embed_tokens.weight)
        rope = self.rope.tables(positions, x.dtype)
        for layer, cache in zip(self.layers, kv_caches, strict=True):
            x = layer(x, rope, cache, meta)
        x = F.rms_norm(x[logit_indices], (self.cfg.hidden_size,), self.norm, self.cfg.rms_norm_eps)
        head = self.embed_tokens if self.lm_head is None else self.lm_head
        return head(x).float()

    @torch.no_grad()
    def load_hf_weights(self, tensors: Mapping[str, torch.Tensor]) -> None:
        """Copy Hugging Face-named tensors in, fusing q/k/v and gate/up. Every parameter must be
        filled: a missing tensor is an error, not a silently random weight."""
        params = dict(self.named_parameters())
        filled: set[str] = set()

        def put(name: str, value: torch.Tensor, rows: slice | None = None) -> None:
            p = params[name]
            dst = p if rows is None else p[rows]
            if dst.shape != value.shape:
                raise ValueError(f"{name}: checkpoint shape {tuple(value.shape)} != model {tuple(dst.shape)}")
            dst.copy_(value)
            filled.add(name if rows is None else f"{name}[{rows.start}]")

        def get(name: str) -> torch.Tensor:
            if name not in tensors:
                raise ValueError(f"checkpoint is missing tensor {name!r}")
            return tensors[name]

        a = self.layers[0].self_attn
        q, kv = a.q_size, a.kv_size
        for i in range(self.cfg.num_layers):
            src, dst = f"model.layers.{i}.", f"layers.{i}."
            for kind in ("weight", "bias") if self.cfg.attention_bias else ("weight",):
                qkv = f"{dst}self_attn.qkv_proj.{kind}"
                put(qkv, get(f"{src}self_attn.q_proj.{kind}"), slice(0, q))
                put(qkv, get(f"{src}self_attn.k_proj.{kind}"), slice(q, q + kv))
                put(qkv, get(f"{src}self_attn.v_proj.{kind}"), slice(q + kv, q + 2 * kv))
            put(f"{dst}self_attn.o_proj.weight", get(f"{src}self_attn.o_proj.weight"))
            inter = self.cfg.intermediate_size
            put(f"{dst}mlp.gate_up_proj.weight", get(f"{src}mlp.gate_proj.weight"), slice(0, inter))
            put(f"{dst}mlp.gate_up_proj.weight", get(f"{src}mlp.up_proj.weight"), slice(inter, 2 * inter))
            put(f"{dst}mlp.down_proj.weight", get(f"{src}mlp.down_proj.weight"))
            put(f"{dst}input_layernorm", get(f"{src}input_layernorm.weight"))
            put(f"{dst}post_attention_layernorm", get(f"{src}post_attention_layernorm.weight"))
            if self.cfg.qk_norm:
                qn, kn = get(f"{src}self_attn.q_norm.weight"), get(f"{src}self_attn.k_norm.weight")
                put(f"{dst}self_attn.qk_norm_weight", torch.cat((qn.expand(a.nh, -1), kn.expand(a.nkv, -1))))
        put("embed_tokens.weight", get("model.embed_tokens.weight"))
        put("norm", get("model.norm.weight"))
        if self.lm_head is not None:
            put("lm_head.weight", get("lm_head.weight"))
