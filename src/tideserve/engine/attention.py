"""Attention over the paged KV cache.

One layer's cache is `[num_blocks, block_size, 2, num_kv_heads, head_dim]`: K and V of a token
sit side by side, so a step writes them with one scatter and reads a block table with one gather.
A step's tokens are laid out decodes first (one token each), then prefill chunks; the runner
describes them in `AttentionMetadata`. `TorchPagedAttention` is the reference path built on
`scaled_dot_product_attention`; a fused paged-attention kernel implements the same `forward`.
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
    decode_block_tables: torch.Tensor | None  # [D * max_blocks], padded with block 0, flattened
    decode_mask: torch.Tensor | None  # [D, 1, 1, max_blocks * block_size] bool, True = attend
    prefills: list[PrefillSpan]


class AttentionBackend(Protocol):
    def forward(
        self,
        q: torch.Tensor,  # [T, num_heads, head_dim]
        kv: torch.Tensor,  # [T, 2, num_kv_heads, head_dim]: this step's new K and V
        cache: torch.Tensor,  # [num_blocks, block_size, 2, num_kv_heads, head_dim]
        meta: AttentionMetadata,
        scale: float,
    ) -> torch.Tensor: ...  # [T, num_heads, head_dim]


def _gather(cache: torch.Tensor, blocks: torch.Tensor, rows: int) -> tuple[torch.Tensor, torch.Tensor]:
    """K and V of `rows` sequences' block tables as [rows, kvh, tokens, hd] each."""
    kvh, hd = cache.shape[-2:]
    # index_select, not advanced indexing: several times faster on CPU for this gather.
    g = cache.index_select(0, blocks).view(rows, -1, 2, kvh, hd)
    return g[:, :, 0].transpose(1, 2), g[:, :, 1].transpose(1, 2)


def _decode_attention(
    q: torch.Tensor, cache: torch.Tensor, blocks: torch.Tensor, mask: torch.Tensor, scale: float
) -> torch.Tensor:
    """One query token per sequence, written as two batched matmuls per KV-head group. On CPU this
    is 3-4x faster than scaled_dot_product_attention at 8-32 sequences (whose flash kernel is
    built for long queries), and as fast for one; the softmax runs in float32."""
    rows, nh, hd = q.shape
    kvh = cache.shape[-2]
    g = cache.index_select(0, blocks).view(rows, -1, 2, kvh, hd)
    k = g[:, :, 0].permute(0, 2, 3, 1)  # [rows, kvh, hd, tokens]
    v = g[:, :, 1].transpose(1, 2)  # [rows, kvh, tokens, hd]
    scores = torch.matmul(q.view(rows, kvh, nh // kvh, hd), k).float() * scale
    scores.masked_fill_(~mask.view(rows, 1, 1, -1), float("-inf"))
    probs = torch.softmax(scores, dim=-1).to(q.dtype)
    return torch.matmul(probs, v).view(rows, nh, hd)


class TorchPagedAttention:
    def forward(
        self, q: torch.Tensor, kv: torch.Tensor, cache: torch.Tensor, meta: AttentionMetadata, scale: float
    ) -> torch.Tensor:
        cache.view(-1, *cache.shape[2:]).index_copy_(0, meta.slot_mapping, kv)
        out = torch.empty_like(q)
        d = meta.num_decodes
        if d:
            assert meta.decode_block_tables is not None and meta.decode_mask is not None
            out[:d] = _decode_attention(q[:d], cache, meta.decode_block_tables, meta.decode_mask, scale)
        for p in meta.prefills:
            sl = slice(p.start, p.start + p.length)
            qp = q[sl].transpose(0, 1).unsqueeze(0)  # [1, nh, L, hd]
            if p.block_table is None:
                k, v = kv[sl, 0].transpose(0, 1).unsqueeze(0), kv[sl, 1].transpose(0, 1).unsqueeze(0)
                o = F.scaled_dot_product_attention(qp, k, v, is_causal=True, scale=scale, enable_gqa=True)
            else:
                k, v = _gather(cache, p.block_table, 1)
                k, v = k[:, :, : p.context_len], v[:, :, : p.context_len]
                o = F.scaled_dot_product_attention(qp, k, v, attn_mask=p.mask, scale=scale, enable_gqa=True)
            out[sl] = o.squeeze(0).transpose(0, 1)
        return out
