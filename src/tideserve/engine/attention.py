"""Attention over the paged KV cache.

The cache of one layer is `[num_blocks, block_size, num_kv_heads, head_dim]` for K and for V.
A step's tokens are laid out decodes first (one token each), then prefill chunks; the runner
describes them in `AttentionMetadata`. `TorchPagedAttention` is the reference path built on
`scaled_dot_product_attention`; a fused paged-attention kernel would implement the same
`forward` and be picked in `select_backend`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F


@dataclass
class PrefillSpan:
    start: int  # offset of the chunk's first token in the step's token list
    length: int  # tokens computed in this chunk
    context_len: int  # tokens attended to by the chunk's last token (cached prefix + chunk)
    block_table: torch.Tensor | None  # [blocks]; None when the chunk is the whole context
    mask: torch.Tensor | None  # [length, context_len] bool; None when the chunk is the whole context


@dataclass
class AttentionMetadata:
    slot_mapping: torch.Tensor  # [T] flat cache slot (block * block_size + offset) of each new token
    num_decodes: int  # the first num_decodes tokens are single-token decodes
    decode_block_tables: torch.Tensor | None  # [D, max_blocks], padded with block 0
    decode_mask: torch.Tensor | None  # [D, 1, 1, max_blocks * block_size] bool, True = attend
    prefills: list[PrefillSpan]


class AttentionBackend(Protocol):
    def forward(
        self,
        q: torch.Tensor,  # [T, num_heads, head_dim]
        k: torch.Tensor,  # [T, num_kv_heads, head_dim]
        v: torch.Tensor,
        k_cache: torch.Tensor,  # [num_blocks, block_size, num_kv_heads, head_dim]
        v_cache: torch.Tensor,
        meta: AttentionMetadata,
        scale: float,
    ) -> torch.Tensor: ...  # [T, num_heads, head_dim]


class TorchPagedAttention:
    def forward(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        k_cache: torch.Tensor,
        v_cache: torch.Tensor,
        meta: AttentionMetadata,
        scale: float,
    ) -> torch.Tensor:
        num_blocks, block_size, kvh, hd = k_cache.shape
        flat_k = k_cache.view(num_blocks * block_size, kvh, hd)
        flat_v = v_cache.view(num_blocks * block_size, kvh, hd)
        flat_k.index_copy_(0, meta.slot_mapping, k)
        flat_v.index_copy_(0, meta.slot_mapping, v)

        out = torch.empty_like(q)
        d = meta.num_decodes
        if d:
            assert meta.decode_block_tables is not None and meta.decode_mask is not None
            # [D, blocks, bs, kvh, hd] -> [D, kvh, blocks*bs, hd]
            kd = k_cache[meta.decode_block_tables].flatten(1, 2).transpose(1, 2)
            vd = v_cache[meta.decode_block_tables].flatten(1, 2).transpose(1, 2)
            o = F.scaled_dot_product_attention(
                q[:d].unsqueeze(2), kd, vd, attn_mask=meta.decode_mask, scale=scale, enable_gqa=True
            )
            out[:d] = o.squeeze(2)
        for p in meta.prefills:
            sl = slice(p.start, p.start + p.length)
            qp = q[sl].transpose(0, 1).unsqueeze(0)  # [1, nh, L, hd]
            if p.block_table is None:
                kp = k[sl].transpose(0, 1).unsqueeze(0)
                vp = v[sl].transpose(0, 1).unsqueeze(0)
                o = F.scaled_dot_product_attention(qp, kp, vp, is_causal=True, scale=scale, enable_gqa=True)
            else:
                kp = k_cache[p.block_table].flatten(0, 1)[: p.context_len].transpose(0, 1).unsqueeze(0)
                vp = v_cache[p.block_table].flatten(0, 1)[: p.context_len].transpose(0, 1).unsqueeze(0)
                o = F.scaled_dot_product_attention(qp, kp, vp, attn_mask=p.mask, scale=scale, enable_gqa=True)
            out[sl] = o.squeeze(0).transpose(0, 1)
        return out


def select_backend(device: torch.device) -> AttentionBackend:
    return TorchPagedAttention()
