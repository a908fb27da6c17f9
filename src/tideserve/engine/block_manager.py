"""Paged KV-cache bookkeeping: fixed-size blocks, per-sequence block tables, prefix caching.

A block is identified by the chained hash of its tokens (hash of the previous block's hash and
its own token ids), so two sequences with the same prompt prefix share the blocks of that prefix.
A block whose last user finished keeps its hash and contents in an LRU free list: it is reused
as-is by a later request with the same prefix, or overwritten when a fresh block is needed.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from dataclasses import dataclass

from tideserve.engine.sequence import Sequence


def chain_hash(parent: bytes | None, token_ids: list[int]) -> bytes:
    # A cryptographic digest: a collision would silently serve another prompt's KV.
    h = hashlib.blake2b(parent or b"", digest_size=16)
    h.update(b"".join(t.to_bytes(4, "little") for t in token_ids))
    return h.digest()


@dataclass
class Block:
    block_id: int
    ref_count: int = 0
    hash: bytes | None = None


class BlockManager:
    def __init__(self, num_blocks: int, block_size: int, enable_prefix_caching: bool = True) -> None:
        if num_blocks < 1:
            raise ValueError("the KV cache needs at least one block")
        self.block_size = block_size
        self.num_blocks = num_blocks
        self.enable_prefix_caching = enable_prefix_caching
        self.blocks = [Block(i) for i in range(num_blocks)]
        # Blocks nobody references, least recently freed first: the eviction order.
        self._free: OrderedDict[int, None] = OrderedDict((i, None) for i in range(num_blocks))
        self._cached: dict[bytes, int] = {}  # block hash -> block id
        self._seq_hashes: dict[int, list[bytes]] = {}  # seq id -> hashes of its full blocks

    @property
    def num_free_blocks(self) -> int:
        return len(self._free)

    @property
    def usage(self) -> float:
        """Share of blocks referenced by live sequences (vllm:kv_cache_usage_perc)."""
        return 1.0 - len(self._free) / self.num_blocks

    def blocks_needed(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)

    def _hashes(self, seq: Sequence, num_full_blocks: int) -> list[bytes]:
        hashes = self._seq_hashes.setdefault(seq.seq_id, [])
        if len(hashes) < num_full_blocks:
            tokens = seq.token_ids
            bs = self.block_size
            for i in range(len(hashes), num_full_blocks):
                hashes.append(chain_hash(hashes[-1] if hashes else None, tokens[i * bs : (i + 1) * bs]))
        return hashes[:num_full_blocks]

    def lookup_prefix(self, seq: Sequence) -> tuple[int, ...]:
        """Block ids of the longest cached prefix of `seq`, leaving at least one token to compute
        (the step that computes it yields the logits of the next token)."""
        if not self.enable_prefix_caching:
            return ()
        max_blocks = (len(seq) - 1) // self.block_size
        hits: list[int] = []
        for h in self._hashes(seq, max_blocks):
            block_id = self._cached.get(h)
            if block_id is None:
                break
            hits.append(block_id)
        return tuple(hits)

    def can_allocate(self, seq: Sequence, num_new_tokens: int, cached: tuple[int, ...] = ()) -> bool:
        return self._new_blocks_needed(seq, num_new_tokens, cached) <= self.num_free_blocks - sum(
            1 for b in cached if self.blocks[b].ref_count == 0
        )

    def _new_blocks_needed(self, seq: Sequence, num_new_tokens: int, cached: tuple[int, ...]) -> int:
        total = self.blocks_needed(seq.num_computed_tokens + len(cached) * self.block_size + num_new_tokens)
        return max(0, total - len(seq.block_table) - len(cached))

    def allocate(self, seq: Sequence, num_new_tokens: int, cached: tuple[int, ...] = ()) -> bool:
        """Give `seq` the blocks to hold `num_new_tokens` more tokens, after taking over the
        `cached` prefix blocks (admission only). Returns False, changing nothing, if short."""
        if not self.can_allocate(seq, num_new_tokens, cached):
            return False
        new = self._new_blocks_needed(seq, num_new_tokens, cached)
        for block_id in cached:
            block = self.blocks[block_id]
            if block.ref_count == 0:
                del self._free[block_id]
            block.ref_count += 1
        seq.block_table.extend(cached)
        for _ in range(new):
            block_id, _ = self._free.popitem(last=False)
            block = self.blocks[block_id]
            if block.hash is not None:
                # Evict: its contents are about to be overwritten.
                if self._cached.get(block.hash) == block_id:
                    del self._cached[block.hash]
                block.hash = None
            block.ref_count = 1
            seq.block_table.append(block_id)
        return True

    def commit_computed(self, seq: Sequence) -> None:
        """Publish the blocks `seq` has filled completely so later requests can reuse them."""
        if not self.enable_prefix_caching:
            return
        full = seq.num_computed_tokens // self.block_size
        hashes = self._hashes(seq, full)
        for i in range(full):
            block = self.blocks[seq.block_table[i]]
            if block.hash is None and hashes[i] not in self._cached:
                block.hash = hashes[i]
                self._cached[hashes[i]] = block.block_id

    def free(self, seq: Sequence) -> None:
        # Tail blocks first: a prompt's head is the part other requests are likeliest to share,
        # so it should be evicted last.
        for block_id in reversed(seq.block_table):
            block = self.blocks[block_id]
            block.ref_count -= 1
            if block.ref_count == 0:
                self._free[block_id] = None
        seq.block_table.clear()

    def forget(self, seq: Sequence) -> None:
        """Drop per-sequence hash memo once the sequence is finished for good."""
        self._seq_hashes.pop(seq.seq_id, None)
