"""4-bit weights for small-batch decode on CPU.

Decoding a few sequences reads every weight once per step: time is memory bandwidth, so reading
4-bit weights (PyTorch's CPU int4 weight-only kernel, groups of 32 with a scale and an offset each,
the layout of GGUF's Q4_1) is ~4x faster than bfloat16 there. With many rows per step the
arithmetic dominates and the bfloat16 matmul (AMX/AVX-512 through oneDNN) wins, so each layer
keeps both and picks per step by row count.
"""

from __future__ import annotations

import torch

GROUP_SIZE = 32
# Measured on a 2-core Sapphire Rapids VM (bench/engine_cpu.py): the int4 kernel wins up to about
# 8-12 rows per matmul, bfloat16 from 16 on.
MAX_INT4_ROWS = 8


def pack_int4(weight: torch.Tensor, group_size: int = GROUP_SIZE) -> tuple[torch.Tensor, torch.Tensor]:
    """Round-to-nearest asymmetric 4-bit quantisation per group of `group_size` inputs.

    Returns the packed weight and `scales_and_zeros` [in/group, out, 2] such that
    w ~= (q - 8) * scale + zero. For weights that came from GGUF Q4_1 this recovers the file's
    own codes wherever a block uses its full 0..15 range.
    """
    out_f, in_f = weight.shape
    if in_f % group_size:
        raise ValueError(f"in_features {in_f} is not a multiple of the group size {group_size}")
    w = weight.float().reshape(out_f, in_f // group_size, group_size)
    lo, hi = w.amin(dim=-1), w.amax(dim=-1)
    scale = ((hi - lo) / 15).clamp(min=1e-8)
    q = ((w - lo.unsqueeze(-1)) / scale.unsqueeze(-1)).round_().clamp_(0, 15).to(torch.int32)
    packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(q.reshape(out_f, in_f), 1)
    zero = lo + 8 * scale
    scales_and_zeros = torch.stack([scale, zero], dim=-1).transpose(0, 1).contiguous()
    return packed, scales_and_zeros.to(torch.bfloat16)


def int4_matmul(x: torch.Tensor, packed: torch.Tensor, scales_and_zeros: torch.Tensor) -> torch.Tensor:
    return torch.ops.aten._weight_int4pack_mm_for_cpu(x, packed, GROUP_SIZE, scales_and_zeros)
