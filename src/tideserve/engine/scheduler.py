"""Continuous batching: decide, each step, which sequences compute how many tokens.

One token budget (`max_num_batched_tokens`) covers decodes and prefill chunks alike, so a long
prompt is prefilled in chunks interleaved with the decodes of running sequences. Order is
(priority, arrival): lower priority values run sooner, FCFS among equals. When KV blocks run
out, the least important running sequence is preempted by recompute: its blocks are freed
(they stay in the prefix cache) and it returns to the waiting queue with all its tokens.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field

from tideserve.engine.block_manager import BlockManager
from tideserve.engine.config import EngineConfig
from tideserve.engine.sequence import Sequence, SequenceStatus


@dataclass
class ScheduledSeq:
    seq: Sequence
    num_tokens: int  # tokens computed this step, starting at seq.num_computed_tokens
    # True if this step reaches the sequence's end, so its last logits pick the next token.
    # Fixed at scheduling time: the sequence's progress moves on once the step has run.
    samples: bool = field(init=False)

    def __post_init__(self) -> None:
        self.samples = self.seq.num_computed_tokens + self.num_tokens == len(self.seq)


@dataclass
class SchedulerOutput:
    scheduled: list[ScheduledSeq] = field(default_factory=list)
    preempted: list[Sequence] = field(default_factory=list)

    @property
    def num_tokens(self) -> int:
        return sum(s.num_tokens for s in self.scheduled)


class Scheduler:
    def __init__(self, config: EngineConfig, block_manager: BlockManager) -> None:
        self.config = config
        self.bm = block_manager
        self.waiting: list[Sequence] = []  # sorted by sort_key
        self.running: list[Sequence] = []  # sorted by sort_key
        self.num_preemptions = 0
        self.prefix_queries = 0  # prompt tokens looked up in the prefix cache
        self.prefix_hits = 0  # of those, tokens found

    def add(self, seq: Sequence) -> None:
        seq.status = SequenceStatus.WAITING
        bisect.insort(self.waiting, seq, key=Sequence.sort_key)

    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    def finish(self, seq: Sequence) -> None:
        """Remove a sequence (finished or aborted) and release its blocks."""
        if seq.status is SequenceStatus.RUNNING:
            self.running.remove(seq)
        elif seq.status is SequenceStatus.WAITING:
            self.waiting.remove(seq)
        seq.status = SequenceStatus.FINISHED
        self.bm.free(seq)
        self.bm.forget(seq)

    def _preempt(self, seq: Sequence) -> None:
        self.running.remove(seq)
        self.bm.free(seq)
        seq.num_computed_tokens = 0
        seq.num_preemptions += 1
        self.num_preemptions += 1
        self.add(seq)

    def schedule(self) -> SchedulerOutput:
        out = SchedulerOutput()
        budget = self.config.max_num_batched_tokens

        # Running sequences first, most important first; the least important give way when
        # blocks run out.
        for seq in list(self.running):
            if budget == 0:
                break
            if seq.status is not SequenceStatus.RUNNING:
                continue  # preempted earlier in this loop
            n = min(len(seq) - seq.num_computed_tokens, budget)
            while not self.bm.allocate(seq, n):
                victim = self.running[-1]
                self._preempt(victim)
                out.preempted.append(victim)
                if victim is seq:
                    break
            else:
                out.scheduled.append(ScheduledSeq(seq, n))
                budget -= n

        # Then admit waiting sequences while budget, batch slots and blocks allow. Nothing is
        # admitted in a step that had to preempt: memory is short.
        while self.waiting and budget > 0 and not out.preempted:
            seq = self.waiting[0]
            if len(self.running) >= self.config.max_batch_size:
                if not self._evict_for(seq, out):
                    break
                budget = self.config.max_num_batched_tokens - out.num_tokens
            cached = self.bm.lookup_prefix(seq)
            num_cached = len(cached) * self.bm.block_size
            n = min(len(seq) - num_cached, budget)
            while not self.bm.allocate(seq, n, cached):
                if not self._evict_for(seq, out):
                    return out
                budget = self.config.max_num_batched_tokens - out.num_tokens
                n = min(len(seq) - num_cached, budget)
            self.waiting.pop(0)
            self.prefix_queries += len(seq)
            self.prefix_hits += num_cached
            seq.num_computed_tokens = num_cached
            seq.num_cached_tokens = num_cached
            seq.status = SequenceStatus.RUNNING
            bisect.insort(self.running, seq, key=Sequence.sort_key)
            out.scheduled.append(ScheduledSeq(seq, n))
            budget -= n
        return out

    def _evict_for(self, seq: Sequence, out: SchedulerOutput) -> bool:
        """Preempt the least important running sequence if `seq` strictly outranks it."""
        if not self.running or self.running[-1].priority <= seq.priority:
            return False
        victim = self.running[-1]
        out.scheduled = [s for s in out.scheduled if s.seq is not victim]
        self._preempt(victim)
        out.preempted.append(victim)
        return True

    def update(self, scheduled: list[ScheduledSeq]) -> None:
        """Advance progress after the model ran `scheduled`."""
        for s in scheduled:
            s.seq.num_computed_tokens += s.num_tokens
            self.bm.commit_computed(s.seq)
