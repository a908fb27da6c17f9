"""Continuous batching: token budget, chunked prefill, priorities, preemption, driven by a fake engine."""

from __future__ import annotations

import random
import zlib

import pytest

from tideserve.engine.block_manager import BlockManager
from tideserve.engine.config import EngineConfig
from tideserve.engine.scheduler import Scheduler, SchedulerOutput
from tideserve.engine.sequence import SamplingParams, Sequence, SequenceStatus


def make_scheduler(
    *, num_blocks: int = 64, block_size: int = 4, budget: int = 64, max_batch: int = 8, prefix: bool = True
) -> Scheduler:
    cfg = EngineConfig(
        max_num_batched_tokens=budget,
        max_batch_size=max_batch,
        block_size=block_size,
        num_kv_blocks=num_blocks,
        enable_prefix_caching=prefix,
    )
    return Scheduler(cfg, BlockManager(num_blocks, block_size, prefix))


def make_seq(
    name: str, prompt: int | list[int], max_tokens: int, priority: int = 0, arrival: float = 0.0
) -> Sequence:
    # a prompt given by length gets tokens of its own, so tests share prefixes only on purpose
    base = zlib.crc32(name.encode()) % 10_000 * 100
    tokens = prompt if isinstance(prompt, list) else [base + i for i in range(prompt)]
    seq = Sequence(tokens, SamplingParams(max_tokens=max_tokens), priority=priority, request_id=name)
    seq.arrival_time = arrival
    return seq


def fake_token(seq: Sequence) -> int:
    return 7 + seq.num_output_tokens % 3


Step = list[tuple[str, int, bool]]


class FakeEngine:
    """What EngineCore does around the scheduler, minus the model: one token per sampling step,
    and a sequence is done after `max_tokens` of them. Each step also checks the scheduler's
    promises, and models the KV cache (which token each slot holds) to catch a block that is
    shared or reused while someone still reads it."""

    def __init__(self, sched: Scheduler) -> None:
        self.sched = sched
        self.trace: list[Step] = []
        self.finished: list[Sequence] = []
        self.kv: dict[int, list[int | None]] = {}  # block id -> token whose K/V each slot holds

    def check(self, out: SchedulerOutput) -> None:
        sched, cfg, bm = self.sched, self.sched.config, self.sched.bm
        bs = bm.block_size
        assert out.num_tokens <= cfg.max_num_batched_tokens
        assert len(sched.running) <= cfg.max_batch_size
        assert len({id(s.seq) for s in out.scheduled}) == len(out.scheduled)
        for victim in out.preempted:
            assert victim.status is SequenceStatus.WAITING
            assert victim.num_computed_tokens == 0 and victim.block_table == []
        for s in out.scheduled:
            seq = s.seq
            assert seq.status is SequenceStatus.RUNNING
            assert 1 <= s.num_tokens <= len(seq) - seq.num_computed_tokens
            assert len(seq.block_table) * bs >= seq.num_computed_tokens + s.num_tokens
            for p in range(seq.num_computed_tokens):  # what attention will read
                assert self.kv[seq.block_table[p // bs]][p % bs] == seq.token_ids[p], "wrong KV"
            for p in range(seq.num_computed_tokens, seq.num_computed_tokens + s.num_tokens):
                self.kv.setdefault(seq.block_table[p // bs], [None] * bs)[p % bs] = seq.token_ids[p]
        live = sched.running + sched.waiting
        assert sum(b.ref_count for b in bm.blocks) == sum(len(s.block_table) for s in live)
        assert all((b.block_id in bm._free) == (b.ref_count == 0) for b in bm.blocks)
        assert all(bm.blocks[i].hash == h for h, i in bm._cached.items())

    def step(self) -> SchedulerOutput:
        out = self.sched.schedule()
        self.check(out)
        # `samples` reads num_computed_tokens, which update() advances: read it first.
        step = [(s.seq.request_id, s.num_tokens, s.samples) for s in out.scheduled]
        sampled = [s.seq for s in out.scheduled if s.samples]
        self.trace.append(step)
        self.sched.update(out.scheduled)
        for seq in sampled:
            seq.output_token_ids.append(fake_token(seq))
            assert seq.num_output_tokens <= seq.params.max_tokens
            if seq.num_output_tokens == seq.params.max_tokens:
                self.sched.finish(seq)
                self.finished.append(seq)
        return out

    def run(self, max_steps: int = 1000) -> None:
        for _ in range(max_steps):
            if not self.sched.has_work():
                return
            self.step()
        raise AssertionError("the scheduler did not drain: livelock or starvation")


def finish_order(engine: FakeEngine) -> list[str]:
    return [s.request_id for s in engine.finished]


def assert_all_blocks_free(sched: Scheduler) -> None:
    bm = sched.bm
    assert bm.num_free_blocks == bm.num_blocks
    assert all(b.ref_count == 0 for b in bm.blocks)
    assert bm.usage == 0.0


# --- token budget and chunked prefill -------------------------------------------------------


@pytest.mark.parametrize(
    ("budget", "prompts", "first_step_tokens"),
    [
        (16, [4, 4], 8),  # everything fits
        (16, [10, 10], 16),  # the second prompt is chunked to fill the budget
        (5, [3, 3, 3], 5),
        (1, [3, 2], 1),  # one token a step
        (64, [30, 30, 30], 64),
    ],
)
def test_token_budget_respected_every_step(budget: int, prompts: list[int], first_step_tokens: int) -> None:
    sched = make_scheduler(budget=budget, num_blocks=64)
    for i, n in enumerate(prompts):
        sched.add(make_seq(f"s{i}", n, max_tokens=3, arrival=i))
    engine = FakeEngine(sched)
    engine.run()
    assert sum(n for _, n, _ in engine.trace[0]) == first_step_tokens
    assert all(sum(n for _, n, _ in step) <= budget for step in engine.trace)
    assert sorted(s.request_id for s in engine.finished) == [f"s{i}" for i in range(len(prompts))]
    # every token was computed exactly once (no preemption here)
    assert sum(n for step in engine.trace for _, n, _ in step) == sum(p + 3 - 1 for p in prompts)
    assert_all_blocks_free(sched)


def test_chunked_prefill_interleaves_with_decodes() -> None:
    sched = make_scheduler(budget=8)
    engine = FakeEngine(sched)
    sched.add(make_seq("B", 3, max_tokens=10, arrival=0))
    engine.step()
    sched.add(make_seq("A", 20, max_tokens=2, arrival=1))
    for _ in range(5):
        engine.step()
    assert engine.trace == [
        [("B", 3, True)],
        [("B", 1, True), ("A", 7, False)],
        [("B", 1, True), ("A", 7, False)],
        [("B", 1, True), ("A", 6, True)],  # A's prompt is done: its first token
        [("B", 1, True), ("A", 1, True)],
        [("B", 1, True)],  # A finished after 2 tokens
    ]


@pytest.mark.parametrize(
    ("prompt", "budget", "steps"),
    [
        (10, 4, [(4, False), (4, False), (2, True), (1, True), (1, True)]),
        (9, 3, [(3, False), (3, False), (3, True), (1, True), (1, True)]),
        (4, 4, [(4, True), (1, True), (1, True)]),
        (1, 8, [(1, True), (1, True), (1, True)]),
    ],
)
def test_samples_exactly_when_a_step_reaches_the_end(
    prompt: int, budget: int, steps: list[tuple[int, bool]]
) -> None:
    sched = make_scheduler(budget=budget)
    sched.add(make_seq("A", prompt, max_tokens=3))
    engine = FakeEngine(sched)
    engine.run()
    assert engine.trace == [[("A", n, samples)] for n, samples in steps]


def test_prefix_cache_hit_skips_cached_tokens() -> None:
    sched = make_scheduler(budget=64, block_size=4)
    engine = FakeEngine(sched)
    prompt = list(range(10))
    sched.add(make_seq("P", prompt, max_tokens=2, arrival=0))
    engine.run()
    q = make_seq("Q", prompt, max_tokens=2, arrival=1)
    sched.add(q)
    engine.step()
    assert engine.trace[-1] == [("Q", 2, True)]  # two cached blocks, two tokens to compute
    assert q.num_cached_tokens == 8
    assert sched.prefix_queries == 20
    assert sched.prefix_hits == 8
    engine.run()
    assert q.num_output_tokens == 2
    assert_all_blocks_free(sched)


# --- batch size, order ----------------------------------------------------------------------


def test_max_batch_size_caps_running() -> None:
    sched = make_scheduler(max_batch=2, budget=64)
    for i in range(5):
        sched.add(make_seq(f"s{i}", 4, max_tokens=3, arrival=i))
    engine = FakeEngine(sched)
    engine.run()
    admitted_at = {}
    for t, step in enumerate(engine.trace):
        assert len(step) <= 2
        for name, _, _ in step:
            admitted_at.setdefault(name, t)
    # two at a time; the next pair only once the first pair finished (after 3 steps)
    assert admitted_at == {"s0": 0, "s1": 0, "s2": 3, "s3": 3, "s4": 6}
    assert finish_order(engine) == ["s0", "s1", "s2", "s3", "s4"]


@pytest.mark.parametrize(
    ("priorities", "order"),
    [
        ([0, 0, 0, 0], ["s0", "s1", "s2", "s3"]),  # FCFS
        ([2, 0, 1, 0], ["s1", "s3", "s2", "s0"]),
        ([1, 1, 0, 0], ["s2", "s3", "s0", "s1"]),
        ([0, 1, 2, 3], ["s0", "s1", "s2", "s3"]),
        ([-1, 5, -3, 5], ["s2", "s0", "s1", "s3"]),
    ],
)
def test_admission_order_is_priority_then_arrival(priorities: list[int], order: list[str]) -> None:
    sched = make_scheduler(max_batch=1)
    seqs = [make_seq(f"s{i}", 3, max_tokens=2, priority=p, arrival=i) for i, p in enumerate(priorities)]
    for seq in reversed(seqs):  # add order must not matter: arrival time does
        sched.add(seq)
    engine = FakeEngine(sched)
    engine.run()
    assert finish_order(engine) == order
    assert sched.num_preemptions == 0


# --- preemption -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("x_priority", "y_priority", "victim"),
    [
        (0, 0, "Y"),  # equal priority: the later arrival gives way
        (0, 1, "Y"),
        (1, 0, "X"),  # the earlier arrival gives way when it matters less
        (3, -2, "X"),
    ],
)
def test_preemption_when_blocks_run_out(x_priority: int, y_priority: int, victim: str) -> None:
    # 4 blocks of 4; each sequence needs 2 blocks for its prompt and a third at its 9th token.
    sched = make_scheduler(num_blocks=4, block_size=4, budget=64)
    seqs = {
        "X": make_seq("X", 6, max_tokens=6, priority=x_priority, arrival=0),
        "Y": make_seq("Y", 6, max_tokens=6, priority=y_priority, arrival=1),
    }
    for seq in seqs.values():
        sched.add(seq)
    engine = FakeEngine(sched)
    for _ in range(3):
        out = engine.step()
        assert out.preempted == []
    assert sched.bm.num_free_blocks == 0
    out = engine.step()
    v = seqs[victim]
    survivor = seqs["Y" if victim == "X" else "X"]
    assert out.preempted == [v]
    assert [s.seq for s in out.scheduled] == [survivor]
    assert v.status is SequenceStatus.WAITING
    assert v in sched.waiting and v not in sched.running
    assert v.num_computed_tokens == 0
    assert v.block_table == []
    assert v.num_output_tokens == 3  # kept: recomputed, not resampled
    assert v.num_preemptions == 1
    assert sched.num_preemptions == 1
    assert len(survivor.block_table) == 3  # took one of the victim's blocks
    engine.run()
    assert finish_order(engine) == [survivor.request_id, v.request_id]
    for seq in seqs.values():
        assert seq.output_token_ids == [7, 8, 9, 7, 8, 9][: seq.params.max_tokens]
    assert_all_blocks_free(sched)


def test_preempted_sequence_recomputes_from_the_prefix_cache() -> None:
    sched = make_scheduler(num_blocks=4, block_size=4, budget=64)
    x = make_seq("X", 6, max_tokens=6, arrival=0)
    y = make_seq("Y", 6, max_tokens=6, arrival=1)
    sched.add(x)
    sched.add(y)
    engine = FakeEngine(sched)
    engine.run()
    assert y.num_preemptions == 1
    # Y's head block survived X's single eviction, so Y came back with 4 cached tokens
    # and recomputed the other 5 of its 9 in one step.
    assert y.num_cached_tokens == 4
    assert ("Y", 5, True) in [entry for step in engine.trace for entry in step]
    assert_all_blocks_free(sched)


@pytest.mark.parametrize(
    ("running_priority", "arrival_priority", "preempts"),
    [
        (1, 0, True),
        (5, -1, True),
        (1, 1, False),  # equal priority waits its turn
        (0, 1, False),
    ],
)
def test_priority_preemption_when_batch_is_full(
    running_priority: int, arrival_priority: int, preempts: bool
) -> None:
    sched = make_scheduler(max_batch=1, budget=64)
    r = make_seq("R", 4, max_tokens=5, priority=running_priority, arrival=0)
    sched.add(r)
    engine = FakeEngine(sched)
    engine.step()
    engine.step()
    n = make_seq("N", 4, max_tokens=2, priority=arrival_priority, arrival=1)
    sched.add(n)
    out = engine.step()
    if preempts:
        assert out.preempted == [r]
        assert [(s.seq, s.num_tokens) for s in out.scheduled] == [(n, 4)]
        assert r.status is SequenceStatus.WAITING
        assert r.num_computed_tokens == 0 and r.block_table == []
        assert sched.running == [n]
    else:
        assert out.preempted == []
        assert [(s.seq, s.num_tokens) for s in out.scheduled] == [(r, 1)]
        assert sched.waiting == [n]
    engine.run()
    assert finish_order(engine) == (["N", "R"] if preempts else ["R", "N"])
    assert r.num_output_tokens == 5 and n.num_output_tokens == 2
    assert_all_blocks_free(sched)


def test_finish_waiting_or_running_sequence_releases_it() -> None:
    sched = make_scheduler(max_batch=1)
    a, b = make_seq("A", 5, max_tokens=4, arrival=0), make_seq("B", 5, max_tokens=4, arrival=1)
    sched.add(a)
    sched.add(b)
    FakeEngine(sched).step()
    sched.finish(b)  # aborted while waiting
    sched.finish(a)  # aborted while running
    assert a.is_finished and b.is_finished
    assert not sched.has_work()
    assert_all_blocks_free(sched)


# --- random simulation ----------------------------------------------------------------------


def simulate(seed: int) -> Scheduler:
    rng = random.Random(seed)
    block_size = rng.choice([2, 4])
    num_blocks = rng.randint(6, 14)
    capacity = num_blocks * block_size
    sched = make_scheduler(
        num_blocks=num_blocks,
        block_size=block_size,
        budget=rng.randint(2, 24),
        max_batch=rng.randint(1, 6),
        prefix=rng.random() < 0.8,
    )
    bases = [[rng.randrange(4) for _ in range(capacity)] for _ in range(3)]
    pending: list[tuple[int, Sequence]] = []
    for i in range(30):
        max_tokens = rng.randint(1, 10)
        prompt_len = rng.randint(1, min(30, capacity - max_tokens))  # what EngineCore admits
        if rng.random() < 0.6:  # shared prefixes exercise the prefix cache
            prompt = rng.choice(bases)[:prompt_len]
        else:
            prompt = [rng.randrange(4) for _ in range(prompt_len)]
        seq = make_seq(f"s{i}", prompt, max_tokens, priority=rng.randint(0, 2), arrival=i)
        pending.append((rng.randint(0, 80), seq))
    pending.sort(key=lambda p: p[0])
    seqs = [seq for _, seq in pending]
    for i, seq in enumerate(seqs):
        seq.arrival_time = i

    engine = FakeEngine(sched)
    t = 0
    while pending or sched.has_work():
        assert t < 5000, "the scheduler did not drain"
        while pending and pending[0][0] <= t:
            sched.add(pending.pop(0)[1])
        t += 1
        engine.step()
        engine.trace.clear()

    for seq in seqs:
        assert seq.is_finished
        assert seq.output_token_ids == [7 + k % 3 for k in range(seq.params.max_tokens)]
    assert not sched.waiting and not sched.running
    assert_all_blocks_free(sched)
    return sched


@pytest.mark.parametrize("seed", range(40))
def test_random_simulation_finishes_everything(seed: int) -> None:
    simulate(seed)


def test_random_simulation_exercises_preemption_and_prefix_cache() -> None:
    scheds = [simulate(seed) for seed in range(10)]
    assert sum(s.num_preemptions for s in scheds) > 0
    assert sum(s.prefix_hits for s in scheds) > 0
