"""The decoder-only transformer of the llama family: Llama 2/3, SmolLM, Mistral, Qwen2, Qwen3.

Differences between them are configuration: GQA, QKV bias (qwen2), per-head Q/K RMSNorm
(qwen3), tied embeddings, llama3 RoPE scaling. Q/K/V and gate/up projections are fused into
one matmul each: fewer, larger kernels matter on a CPU and on a GPU alike.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from tideserve.engine.attention import AttentionBackend, AttentionMetadata, TorchPagedAttention
from tideserve.engine.config import ModelConfig


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


class RotaryEmbedding(nn.Module):
    def __init__(self, cfg: ModelConfig, max_positions: int) -> None:
        super().__init__()
        t = torch.arange(max_positions, dtype=torch.float64)
        freqs = torch.outer(t, rope_inv_freq(cfg))
        # float32 tables whatever the model dtype: positions in the thousands need the precision.
        self.register_buffer("cos", freqs.cos().float(), persistent=False)
        self.register_buffer("sin", freqs.sin().float(), persistent=False)

    def forward(self, positions: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        cos = self.cos[positions].unsqueeze(1)  # [T, 1, hd/2]
        sin = self.sin[positions].unsqueeze(1)
        x1, x2 = x.float().chunk(2, dim=-1)
        return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1).to(x.dtype)


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig, backend: AttentionBackend) -> None:
        super().__init__()
        self.nh, self.nkv, self.hd = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        self.q_size, self.kv_size = self.nh * self.hd, self.nkv * self.hd
        self.qkv_proj = nn.Linear(cfg.hidden_size, self.q_size + 2 * self.kv_size, bias=cfg.attention_bias)
        self.o_proj = nn.Linear(self.q_size, cfg.hidden_size, bias=False)
        self.qk_norm = cfg.qk_norm
        if cfg.qk_norm:
            self.q_norm = nn.Parameter(torch.ones(self.hd))
            self.k_norm = nn.Parameter(torch.ones(self.hd))
        self.eps = cfg.rms_norm_eps
        self.scale = self.hd**-0.5
        self.backend = backend

    def forward(
        self,
        x: torch.Tensor,
        rope: RotaryEmbedding,
        positions: torch.Tensor,
        kv: tuple[torch.Tensor, torch.Tensor],
        meta: AttentionMetadata,
    ) -> torch.Tensor:
        t = x.shape[0]
        q, k, v = self.qkv_proj(x).split([self.q_size, self.kv_size, self.kv_size], dim=-1)
        q = q.view(t, self.nh, self.hd)
        k = k.view(t, self.nkv, self.hd)
        v = v.view(t, self.nkv, self.hd)
        if self.qk_norm:
            q = F.rms_norm(q, (self.hd,), self.q_norm, self.eps)
            k = F.rms_norm(k, (self.hd,), self.k_norm, self.eps)
        q, k = rope(positions, q), rope(positions, k)
        o = self.backend.forward(q, k, v, kv[0], kv[1], meta, self.scale)
        return self.o_proj(o.reshape(t, self.q_size))


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.inter = cfg.intermediate_size
        self.gate_up_proj = nn.Linear(cfg.hidden_size, 2 * cfg.intermediate_size, bias=False)
        self.down_proj = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up_proj(x).split(self.inter, dim=-1)
        return self.down_proj(F.silu(gate) * up)


class DecoderLayer(nn.Module):
    def __init__(self, cfg: ModelConfig, backend: AttentionBackend) -> None:
        super().__init__()
        self.input_layernorm = nn.Parameter(torch.ones(cfg.hidden_size))
        self.post_attention_layernorm = nn.Parameter(torch.ones(cfg.hidden_size))
        self.self_attn = Attention(cfg, backend)
        self.mlp = MLP(cfg)
        self.eps = cfg.rms_norm_eps
        self.hidden = cfg.hidden_size

    def forward(
        self,
        x: torch.Tensor,
        rope: RotaryEmbedding,
        positions: torch.Tensor,
        kv: tuple[torch.Tensor, torch.Tensor],
        meta: AttentionMetadata,
    ) -> torch.Tensor:
        h = F.rms_norm(x, (self.hidden,), self.input_layernorm, self.eps)
        x = x + self.self_attn(h, rope, positions, kv, meta)
        h = F.rms_norm(x, (self.hidden,), self.post_attention_layernorm, self.eps)
        return x + self.mlp(h)


class CausalLM(nn.Module):
    def __init__(self, cfg: ModelConfig, max_positions: int) -> None:
        super().__init__()
        self.cfg = cfg
        backend = TorchPagedAttention()
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(cfg, backend) for _ in range(cfg.num_layers))
        self.norm = nn.Parameter(torch.ones(cfg.hidden_size))
        self.lm_head = (
            None if cfg.tie_word_embeddings else nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        )
        self.rope = RotaryEmbedding(cfg, max_positions)

    def forward(
        self,
        input_ids: torch.Tensor,  # [T]
        positions: torch.Tensor,  # [T]
        kv_caches: torch.Tensor,  # [num_layers, 2, num_blocks, block_size, kvh, hd]
        meta: AttentionMetadata,
        logit_indices: torch.Tensor,  # [S] rows of the step whose next-token logits are wanted
    ) -> torch.Tensor:
        x = self.embed_tokens(input_ids)
        for i, layer in enumerate(self.layers):
            x = layer(x, self.rope, positions, (kv_caches[i, 0], kv_caches[i, 1]), meta)
        x = F.rms_norm(x[logit_indices], (self.cfg.hidden_size,), self.norm, self.cfg.rms_norm_eps)
        weight = self.embed_tokens.weight if self.lm_head is None else self.lm_head.weight
        return F.linear(x, weight).float()

    @torch.no_grad()
    def load_hf_weights(self, tensors: dict[str, torch.Tensor]) -> None:
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
                put(f"{dst}self_attn.q_norm", get(f"{src}self_attn.q_norm.weight"))
                put(f"{dst}self_attn.k_norm", get(f"{src}self_attn.k_norm.weight"))
        put("embed_tokens.weight", get("model.embed_tokens.weight"))
        put("norm", get("model.norm.weight"))
        if self.lm_head is not None:
            put("lm_head.weight", get("lm_head.weight"))
