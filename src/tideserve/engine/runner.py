"""Owns the model and the KV cache on the device; turns a scheduled step into sampled tokens."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import torch

from tideserve.engine.attention import AttentionMetadata, PrefillSpan
from tideserve.engine.config import EngineConfig, ModelConfig
from tideserve.engine.model import CausalLM
from tideserve.engine.sampler import Sampler, SampleResult
from tideserve.engine.scheduler import ScheduledSeq
from tideserve.engine.sequence import Sequence

log = logging.getLogger(__name__)

GIB = 1 << 30
# Default CPU KV cache: room for this many full-length sequences (llama.cpp's -c, doubled), at
# most a quarter of RAM. Memory is zeroed up front, so a bigger default costs RSS and start time.
CPU_DEFAULT_CONTEXTS = 2
CPU_MAX_RAM_SHARE = 0.25


def kv_bytes_per_token(cfg: ModelConfig, dtype: torch.dtype) -> int:
    return 2 * cfg.num_layers * cfg.num_kv_heads * cfg.head_dim * dtype.itemsize


@dataclass
class StepResult:
    sampled: list[Sequence]  # sequences that got a new token this step, in row order
    samples: SampleResult


class ModelRunner:
    def __init__(self, model: CausalLM, engine_cfg: EngineConfig, device: torch.device) -> None:
        self.model = model
        self.cfg = model.cfg
        self.engine_cfg = engine_cfg
        self.device = device
        self.dtype = next(model.parameters()).dtype
        self.block_size = engine_cfg.block_size
        self.num_blocks = engine_cfg.num_kv_blocks or self._blocks_from_budget()
        log.info(
            "KV cache: %d blocks x %d tokens (%.2f GiB)",
            self.num_blocks,
            self.block_size,
            self.num_blocks * self.block_size * kv_bytes_per_token(self.cfg, self.dtype) / GIB,
        )
        c = self.cfg
        self.kv = torch.zeros(
            (c.num_layers, self.num_blocks, self.block_size, 2, c.num_kv_heads, c.head_dim),
            dtype=self.dtype,
            device=device,
        )
        self.sampler = Sampler(c.eos_token_ids)

    def _blocks_from_budget(self) -> int:
        per_block = self.block_size * kv_bytes_per_token(self.cfg, self.dtype)
        if self.engine_cfg.kv_cache_memory_gib is not None:
            budget = self.engine_cfg.kv_cache_memory_gib * GIB
        elif self.device.type == "cuda":
            budget = self._cuda_kv_budget()
        else:
            ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
            wanted = CPU_DEFAULT_CONTEXTS * self.engine_cfg.max_model_len * per_block / self.block_size
            budget = min(wanted, CPU_MAX_RAM_SHARE * ram)
        return max(1, int(budget // per_block))

    def _cuda_kv_budget(self) -> float:
        # What the GPU may hold for us, minus weights and the activations of the largest step
        # (measured with one forward pass of max_num_batched_tokens prompt tokens).
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(self.device)
        _, total = torch.cuda.mem_get_info(self.device)
        n = min(self.engine_cfg.max_num_batched_tokens, self.engine_cfg.max_model_len)
        c = self.cfg
        scratch = torch.zeros(
            (c.num_layers, -(-n // self.block_size), self.block_size, 2, c.num_kv_heads, c.head_dim),
            dtype=self.dtype,
            device=self.device,
        )
        ids = torch.zeros(n, dtype=torch.long, device=self.device)
        pos = torch.arange(n, device=self.device)
        meta = AttentionMetadata(pos, 0, None, None, [PrefillSpan(0, n, n, None, None)])
        with torch.inference_mode():
            self.model(ids, pos, scratch, meta, torch.tensor([n - 1], device=self.device))
        torch.cuda.synchronize(self.device)
        peak = torch.cuda.max_memory_allocated(self.device) - scratch.numel() * scratch.element_size()
        del scratch
        torch.cuda.empty_cache()
        budget = total * self.engine_cfg.gpu_memory_utilization - peak
        if budget <= 0:
            raise RuntimeError(
                f"no GPU memory left for the KV cache: weights and activations take {peak / GIB:.1f} GiB "
                f"of {total * self.engine_cfg.gpu_memory_utilization / GIB:.1f} GiB allowed; "
                "raise gpuMemoryUtilization or lower maxNumBatchedTokens"
            )
        return budget

    def execute(self, scheduled: list[ScheduledSeq]) -> StepResult:
        logits, sampled = self.forward(scheduled)
        if not sampled:
            return StepResult([], SampleResult([], []))
        return StepResult(sampled, self.sampler(logits, sampled))

    @torch.inference_mode()
    def forward(
        self, scheduled: list[ScheduledSeq], every_position: bool = False
    ) -> tuple[torch.Tensor, list[Sequence]]:
        """Run one step. Returns next-token logits of the sequences that sample, in row order
        (or, with `every_position`, of every computed token: tests compare those with a reference)."""
        decodes = [s for s in scheduled if s.num_tokens == 1]
        prefills = [s for s in scheduled if s.num_tokens > 1]
        bs = self.block_size
        ids: list[int] = []
        positions: list[int] = []
        slots: list[int] = []
        logit_rows: list[int] = []
        sampled: list[Sequence] = []

        ctx_lens: list[int] = []
        for s in decodes:
            seq, p = s.seq, s.seq.num_computed_tokens
            ids.append(_token_at(seq, p))
            positions.append(p)
            slots.append(seq.block_table[p // bs] * bs + p % bs)
            ctx_lens.append(p + 1)
            if s.samples:
                sampled.append(seq)
                logit_rows.append(len(ids) - 1)

        spans: list[PrefillSpan] = []
        for s in prefills:
            seq, start = s.seq, s.seq.num_computed_tokens
            end = start + s.num_tokens
            offset = len(ids)
            ids.extend(seq.token_ids[start:end])
            positions.extend(range(start, end))
            table = seq.block_table
            slots.extend(table[p // bs] * bs + p % bs for p in range(start, end))
            if start == 0:
                spans.append(PrefillSpan(offset, s.num_tokens, end, None, None))
            else:
                q_pos = torch.arange(start, end).unsqueeze(1)
                mask = torch.arange(end).unsqueeze(0) <= q_pos
                blocks = torch.tensor(table[: -(-end // bs)])
                spans.append(
                    PrefillSpan(offset, s.num_tokens, end, blocks.to(self.device), mask.to(self.device))
                )
            if s.samples:
                sampled.append(seq)
                logit_rows.append(len(ids) - 1)

        dec_tables = dec_mask = None
        if decodes:
            max_blocks = max(-(-c // bs) for c in ctx_lens)
            tables = [d.seq.block_table[:max_blocks] for d in decodes]
            padded = [t + [0] * (max_blocks - len(t)) for t in tables]
            dec_tables = torch.tensor(padded).view(-1).to(self.device)
            lens = torch.tensor(ctx_lens).unsqueeze(1)
            dec_mask = (torch.arange(max_blocks * bs).unsqueeze(0) < lens).view(len(decodes), 1, 1, -1)
            dec_mask = dec_mask.to(self.device)

        if every_position:
            logit_rows = list(range(len(ids)))
        dev = self.device
        meta = AttentionMetadata(torch.tensor(slots).to(dev), len(decodes), dec_tables, dec_mask, spans)
        logits = self.model(
            torch.tensor(ids).to(dev),
            torch.tensor(positions).to(dev),
            self.kv,
            meta,
            torch.tensor(logit_rows, dtype=torch.long).to(dev),
        )
        return logits, sampled


def _token_at(seq: Sequence, pos: int) -> int:
    n = seq.num_prompt_tokens
    return seq.prompt_token_ids[pos] if pos < n else seq.output_token_ids[pos - n]
