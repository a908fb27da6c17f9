"""Paged KV bookkeeping: block tables, prefix sharing, LRU eviction, and its invariants."""

from __future__ import annotations

import random

import pytest

from tideserve.engine.block_manager import BlockManager, chain_hash
from tideserve.engine.sequence import SamplingParams, Sequence


def make_seq(tokens: list[int]) -> Sequence:
    return Sequence(list(tokens), SamplingParams())


def compute(bm: BlockManager, seq: Sequence, n: int) -> None:
    """What the engine does for one step of `seq`: room for `n` tokens, compute, publish."""
    assert bm.allocate(seq, n)
    seq.num_computed_tokens += n
    bm.commit_computed(seq)


def admit(bm: BlockManager, seq: Sequence) -> tuple[int, ...]:
    """Admit `seq` with whatever prefix is cached and compute the rest of it."""
    cached = bm.lookup_prefix(seq)
    num_cached = len(cached) * bm.block_size
    assert bm.allocate(seq, len(seq) - num_cached, cached)
    seq.num_computed_tokens = len(seq)
    bm.commit_computed(seq)
    return cached


def check_invariants(bm: BlockManager, live: list[Sequence]) -> None:
    free = set(bm._free)
    assert len(free) == len(bm._free)
    for block in bm.blocks:
        assert block.ref_count >= 0
        # In the free list exactly when nobody references it.
        assert (block.block_id in free) == (block.ref_count == 0), block
    refs: dict[int, int] = {}
    for seq in live:
        assert len(set(seq.block_table)) == len(seq.block_table), "a block twice in one table"
        for block_id in seq.block_table:
            refs[block_id] = refs.get(block_id, 0) + 1
    assert sum(b.ref_count for b in bm.blocks) == sum(len(s.block_table) for s in live)
    for block in bm.blocks:
        assert block.ref_count == refs.get(block.block_id, 0)
        if block.ref_count > 1:
            assert block.hash is not None, "only cached (hashed) blocks are shared"
    for h, block_id in bm._cached.items():
        assert bm.blocks[block_id].hash == h
    # and every hashed block is findable: no hash leaks out of the map
    assert {b.hash: b.block_id for b in bm.blocks if b.hash is not None} == bm._cached
    assert bm.usage == pytest.approx(len(refs) / bm.num_blocks)


# --- allocation -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("block_size", "steps", "table_lens"),
    [
        # one token at a time: a new block exactly when crossing a boundary
        (4, [1, 1, 1, 1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 2, 2, 2, 2, 3]),
        # a prefill that fills blocks exactly, then decodes
        (4, [8, 1, 1], [2, 3, 3]),
        # chunks that straddle boundaries
        (4, [3, 3, 3, 3], [1, 2, 3, 3]),
        (4, [5, 7, 1], [2, 3, 4]),
        (1, [3, 1], [3, 4]),
        (16, [15, 1, 1, 16], [1, 1, 2, 3]),
    ],
)
def test_block_table_grows_across_block_boundaries(
    block_size: int, steps: list[int], table_lens: list[int]
) -> None:
    bm = BlockManager(num_blocks=8, block_size=block_size)
    seq = make_seq(list(range(100)))
    for n, expected in zip(steps, table_lens, strict=True):
        compute(bm, seq, n)
        assert len(seq.block_table) == expected
        assert bm.num_free_blocks == 8 - expected
    # fresh blocks come off the free list in order
    assert seq.block_table == list(range(len(seq.block_table)))
    check_invariants(bm, [seq])


@pytest.mark.parametrize(
    ("num_blocks", "held_tokens", "wanted_tokens", "ok"),
    [
        (4, 8, 8, True),  # exactly the two free blocks
        (4, 8, 9, False),  # one block short
        (4, 0, 17, False),  # more than the whole cache
        (4, 0, 16, True),
        (3, 9, 1, False),  # nothing free
    ],
)
def test_allocate_all_or_nothing(num_blocks: int, held_tokens: int, wanted_tokens: int, ok: bool) -> None:
    bm = BlockManager(num_blocks=num_blocks, block_size=4)
    holder = make_seq(list(range(held_tokens)))
    if held_tokens:
        compute(bm, holder, held_tokens)
    before_free = list(bm._free)
    before_refs = [(b.ref_count, b.hash) for b in bm.blocks]
    seq = make_seq(list(range(100, 100 + wanted_tokens)))
    assert bm.can_allocate(seq, wanted_tokens) is ok
    assert bm.allocate(seq, wanted_tokens) is ok
    if ok:
        assert len(seq.block_table) == -(-wanted_tokens // 4)
    else:
        assert seq.block_table == []
        assert list(bm._free) == before_free
        assert [(b.ref_count, b.hash) for b in bm.blocks] == before_refs
    check_invariants(bm, [holder, seq] if ok else [holder])


def test_allocate_with_cached_prefix_short_of_blocks_changes_nothing() -> None:
    bm = BlockManager(num_blocks=4, block_size=4)
    first = make_seq(list(range(9)))
    admit(bm, first)  # blocks 0, 1 hashed, block 2 partial
    bm.free(first)
    filler = make_seq([50] * 4)
    compute(bm, filler, 4)  # takes the last never-used block
    # 8 cached tokens + 12 new tokens = 5 blocks > 4
    second = make_seq(list(range(8)) + [70] * 12)
    cached = bm.lookup_prefix(second)
    assert len(cached) == 2
    before_free = list(bm._free)
    before = [(b.ref_count, b.hash) for b in bm.blocks]
    assert not bm.allocate(second, 12, cached)
    assert second.block_table == []
    assert list(bm._free) == before_free
    assert [(b.ref_count, b.hash) for b in bm.blocks] == before
    # the cached blocks are still there for a request that fits
    assert bm.lookup_prefix(make_seq(list(range(9)))) == cached
    check_invariants(bm, [filler])


# --- prefix sharing -------------------------------------------------------------------------

A = list(range(1, 13))  # 12 tokens: three full blocks of 4


@pytest.mark.parametrize(
    ("first", "second", "hits"),
    [
        (A, A, 2),  # identical prompt: the last block is left to compute
        (A, A[:8], 1),  # second ends on a boundary: its last full block is recomputed
        (A, A[:9], 2),
        (A, [*A, 99], 3),
        (A, [*A[:5], 99, *A[6:]], 1),  # differs inside block 1
        (A, [99, *A[1:]], 0),  # differs in the first token
        (A[:10], [*A[:10], 98, 99], 2),  # the first prompt's partial block is not shared
        (A[:6], A[:9], 1),  # even though the tokens it holds match
        (A[:3], A, 0),  # no full block at all
    ],
)
def test_lookup_prefix_hits(first: list[int], second: list[int], hits: int) -> None:
    bm = BlockManager(num_blocks=16, block_size=4)
    a = make_seq(first)
    admit(bm, a)
    b = make_seq(second)
    cached = admit(bm, b)
    assert cached == tuple(a.block_table[:hits])
    assert len(cached) * 4 < len(b)  # never the whole prompt
    assert b.block_table[:hits] == a.block_table[:hits]
    assert set(b.block_table[hits:]).isdisjoint(a.block_table)
    for i, block_id in enumerate(a.block_table):
        assert bm.blocks[block_id].ref_count == (2 if i < hits else 1)
    check_invariants(bm, [a, b])


def test_partial_block_hashed_once_full() -> None:
    bm = BlockManager(num_blocks=4, block_size=4)
    seq = make_seq(A[:8])
    compute(bm, seq, 6)
    first, second = (bm.blocks[b] for b in seq.block_table)
    assert first.hash == chain_hash(None, A[:4])
    assert second.hash is None
    compute(bm, seq, 2)
    assert second.hash == chain_hash(first.hash, A[4:8])
    check_invariants(bm, [seq])


@pytest.mark.parametrize("length", [1, 4, 5, 8, 9, 12])
def test_lookup_never_covers_whole_sequence(length: int) -> None:
    bm = BlockManager(num_blocks=8, block_size=4)
    admit(bm, make_seq(A + A))
    seq = make_seq((A + A)[:length])
    cached = bm.lookup_prefix(seq)
    assert len(cached) == (length - 1) // 4
    assert len(cached) * 4 <= length - 1


def test_lookup_never_covers_whole_sequence_after_its_own_commit() -> None:
    bm = BlockManager(num_blocks=4, block_size=4)
    seq = make_seq(A[:8])
    compute(bm, seq, 8)  # memo now holds both block hashes
    bm.free(seq)  # preempted before its next token was appended
    seq.num_computed_tokens = 0
    assert len(bm.lookup_prefix(seq)) * 4 <= len(seq) - 1


# --- free list, eviction, stale hashes ------------------------------------------------------


def test_freed_blocks_stay_cached_until_reused() -> None:
    bm = BlockManager(num_blocks=4, block_size=4)
    a = make_seq(A[:9])
    admit(bm, a)
    table = list(a.block_table)
    bm.free(a)
    assert bm.num_free_blocks == 4
    assert bm.usage == 0.0
    assert bm.blocks[table[0]].hash is not None
    b = make_seq(A[:9])
    cached = admit(bm, b)
    assert cached == tuple(table[:2])
    assert [bm.blocks[i].ref_count for i in table[:2]] == [1, 1]
    assert bm.num_free_blocks == 1
    check_invariants(bm, [b])


def test_eviction_is_lru_and_tail_first() -> None:
    bm = BlockManager(num_blocks=6, block_size=4)
    a = make_seq([*A, 0])  # blocks 0 1 2 hashed + 3 partial
    admit(bm, a)
    b = make_seq([7] * 9)  # blocks 4 5 hashed
    compute(bm, b, 8)
    bm.free(a)
    bm.free(b)
    # a freed first, tail first; then b
    assert list(bm._free) == [3, 2, 1, 0, 5, 4]
    c = make_seq([40 + i for i in range(12)])
    compute(bm, c, 12)  # three fresh blocks: evicts a's tail (3: unhashed, 2, 1)
    assert c.block_table == [3, 2, 1]
    assert bm.lookup_prefix(make_seq([*A, 0])) == (0,)  # the head survived
    assert bm.lookup_prefix(make_seq([7] * 9)) == (4, 5)  # b was freed later: untouched
    assert bm.lookup_prefix(make_seq([*c.token_ids, 0])) == (3, 2, 1)
    check_invariants(bm, [c])


def test_revived_block_moves_to_back_of_lru() -> None:
    bm = BlockManager(num_blocks=4, block_size=4)
    a = make_seq(A[:5])
    admit(bm, a)  # blocks 0 (hashed), 1 (partial)
    bm.free(a)  # free: 2 3 1 0
    b = make_seq(A[:5])
    assert admit(bm, b) == (0,)
    bm.free(b)  # block 0 freed again: now most recently used
    assert list(bm._free)[-1] == 0


def test_reused_block_drops_its_hash_no_stale_hit() -> None:
    bm = BlockManager(num_blocks=2, block_size=4)
    old = make_seq(A[:9])
    compute(bm, old, 8)
    old_hashes = [bm.blocks[b].hash for b in old.block_table]
    bm.free(old)
    assert bm.lookup_prefix(make_seq(A[:9])) == (0, 1)
    new = make_seq([90, 91, 92, 93, 94, 95, 96, 97])
    compute(bm, new, 6)  # reuses both blocks; only the first one fills up
    assert sorted(new.block_table) == [0, 1]
    first = new.block_table[0]
    for h in old_hashes:
        assert h not in bm._cached
    assert bm.lookup_prefix(make_seq(A[:9])) == ()  # the old prefix no longer hits
    check_invariants(bm, [new])
    bm.free(new)
    assert bm.lookup_prefix(make_seq(A[:9])) == ()  # not even once the blocks are free again
    assert bm.lookup_prefix(make_seq([90, 91, 92, 93, 0])) == (first,)
    check_invariants(bm, [])


def test_stale_hit_after_reuse_with_new_content_of_same_shape() -> None:
    """The block keeps its id, so a stale map entry would serve the new tokens' KV for the old prompt."""
    bm = BlockManager(num_blocks=1, block_size=4)
    old = make_seq([1, 2, 3, 4])
    compute(bm, old, 4)
    bm.free(old)
    new = make_seq([5, 6, 7, 8])
    compute(bm, new, 4)
    bm.free(new)
    assert bm.lookup_prefix(make_seq([1, 2, 3, 4, 0])) == ()
    assert bm.lookup_prefix(make_seq([5, 6, 7, 8, 0])) == (0,)
    check_invariants(bm, [])


def test_lookup_stops_at_the_first_miss() -> None:
    """Two requests with one prompt computed side by side publish different blocks of it; once
    the head block is evicted, the second block (still cached) must not be served as the head."""
    bm = BlockManager(num_blocks=6, block_size=4)
    a, c = make_seq(A[:9]), make_seq(A[:9])
    compute(bm, a, 6)  # publishes block 0 (h0)
    compute(bm, c, 8)  # h0 is taken: publishes only its second block (h1)
    assert a.block_table == [0, 1] and c.block_table == [2, 3]
    assert bm.lookup_prefix(make_seq(A[:9])) == (0, 3)
    bm.free(a)
    d = make_seq([50 + i for i in range(16)])
    compute(bm, d, 16)  # needs every free block: evicts block 0
    assert bm.lookup_prefix(make_seq(A[:9])) == ()
    bm.free(d)
    compute(bm, c, 1)  # c's next commit publishes its own head block
    assert bm.lookup_prefix(make_seq(A[:9])) == (2, 3)
    check_invariants(bm, [c])


@pytest.mark.parametrize(
    ("lengths", "freed", "usage"),
    [
        ([], [], 0.0),
        ([4], [], 0.1),
        ([5, 12], [], 0.5),  # 2 + 3 blocks of 10
        ([5, 12], [0], 0.3),
        ([5, 12], [0, 1], 0.0),  # hashed but unreferenced blocks are not "used"
        ([40], [], 1.0),
    ],
)
def test_usage_counts_referenced_blocks(lengths: list[int], freed: list[int], usage: float) -> None:
    bm = BlockManager(num_blocks=10, block_size=4)
    seqs = [make_seq([i * 100 + t for t in range(n)]) for i, n in enumerate(lengths)]
    for seq in seqs:
        compute(bm, seq, len(seq))
    for i in freed:
        bm.free(seqs[i])
    assert bm.usage == pytest.approx(usage)


def test_usage_counts_shared_blocks_once() -> None:
    bm = BlockManager(num_blocks=10, block_size=4)
    a, b = make_seq(A), make_seq(A)
    admit(bm, a)
    admit(bm, b)  # shares 2 blocks, owns 1
    assert bm.usage == pytest.approx(0.4)


def test_prefix_caching_disabled_never_hits() -> None:
    bm = BlockManager(num_blocks=8, block_size=4, enable_prefix_caching=False)
    a = make_seq(A)
    admit(bm, a)
    assert all(bm.blocks[i].hash is None for i in a.block_table)
    b = make_seq(A)
    assert admit(bm, b) == ()
    assert set(a.block_table).isdisjoint(b.block_table)
    bm.free(a)
    assert bm.lookup_prefix(make_seq(A)) == ()
    check_invariants(bm, [b])


def test_chain_hash() -> None:
    root = chain_hash(None, [1, 2, 3, 4])
    other_root = chain_hash(None, [9, 9, 9, 9])
    assert chain_hash(None, [1, 2, 3, 4]) == root
    assert chain_hash(root, [5, 6, 7, 8]) == chain_hash(root, [5, 6, 7, 8])
    # same tokens, different parent
    assert chain_hash(root, [5, 6, 7, 8]) != chain_hash(other_root, [5, 6, 7, 8])
    assert chain_hash(root, [5, 6, 7, 8]) != chain_hash(None, [5, 6, 7, 8])
    assert chain_hash(None, [1, 2, 3, 4]) != chain_hash(None, [4, 3, 2, 1])
    # token boundaries matter (no plain concatenation of decimal digits)
    assert chain_hash(None, [1, 23]) != chain_hash(None, [12, 3])
    assert chain_hash(None, [256]) != chain_hash(None, [1, 0])


def test_same_block_tokens_under_different_prefix_do_not_share() -> None:
    bm = BlockManager(num_blocks=8, block_size=4)
    x = make_seq([1, 2, 3, 4, 5, 6, 7, 8, 0])
    y = make_seq([9, 9, 9, 9, 10, 10, 10, 10, 0])
    admit(bm, x)
    admit(bm, y)
    # block 0 is y's, block 1 holds x's tokens, but x's block 1 was computed after x's block 0
    assert bm.lookup_prefix(make_seq([9, 9, 9, 9, 5, 6, 7, 8, 0])) == (y.block_table[0],)


# --- random operation sequences -------------------------------------------------------------


@pytest.mark.parametrize("seed", range(30))
def test_random_operations_keep_invariants(seed: int) -> None:
    rng = random.Random(seed)
    block_size = rng.choice([1, 2, 4])
    num_blocks = rng.randint(4, 16)
    bm = BlockManager(num_blocks, block_size, enable_prefix_caching=rng.random() < 0.85)
    bases = [[rng.randrange(5) for _ in range(24)] for _ in range(3)]
    content: dict[int, list[int | None]] = {}  # block id -> tokens whose K/V it holds
    live: list[Sequence] = []
    done: list[Sequence] = []

    def write(seq: Sequence, start: int, end: int) -> None:
        for p in range(start, end):
            content.setdefault(seq.block_table[p // block_size], [None] * block_size)[p % block_size] = (
                seq.token_ids[p]
            )

    def check_kv(seq: Sequence) -> None:
        for p in range(seq.num_computed_tokens):
            block = content[seq.block_table[p // block_size]]
            assert block[p % block_size] == seq.token_ids[p], "a block serves another prompt's KV"

    for _ in range(300):
        op = rng.random()
        if op < 0.35 or not live:
            base = rng.choice(bases)
            tokens = base[: rng.randint(0, len(base))] + [rng.randrange(5) for _ in range(rng.randint(1, 6))]
            seq = make_seq(tokens)
            cached = bm.lookup_prefix(seq)
            assert len(cached) * block_size < len(seq)
            n = rng.randint(1, len(seq) - len(cached) * block_size)
            if bm.allocate(seq, n, cached):
                seq.num_computed_tokens = len(cached) * block_size
                check_kv(seq)
                write(seq, seq.num_computed_tokens, seq.num_computed_tokens + n)
                seq.num_computed_tokens += n
                bm.commit_computed(seq)
                live.append(seq)
            else:
                assert seq.block_table == []
        elif op < 0.7:
            seq = rng.choice(live)
            if seq.num_computed_tokens == len(seq):
                seq.output_token_ids.append(rng.randrange(5))
            n = rng.randint(1, len(seq) - seq.num_computed_tokens)
            table_before = list(seq.block_table)
            if bm.allocate(seq, n):
                assert seq.block_table[: len(table_before)] == table_before
                write(seq, seq.num_computed_tokens, seq.num_computed_tokens + n)
                seq.num_computed_tokens += n
                bm.commit_computed(seq)
            else:
                assert seq.block_table == table_before
        elif op < 0.9:
            seq = live.pop(rng.randrange(len(live)))
            bm.free(seq)
            bm.forget(seq)
            done.append(seq)
        else:  # preemption: blocks go, the sequence keeps its tokens and comes back later
            seq = live.pop(rng.randrange(len(live)))
            bm.free(seq)
            if seq.num_computed_tokens == len(seq):
                # the engine appends the sampled token before anything can preempt it
                seq.output_token_ids.append(rng.randrange(5))
            seq.num_computed_tokens = 0
            cached = bm.lookup_prefix(seq)
            assert len(cached) * block_size < len(seq)
            n = len(seq) - len(cached) * block_size
            if bm.allocate(seq, n, cached):
                seq.num_computed_tokens = len(cached) * block_size
                check_kv(seq)
                write(seq, seq.num_computed_tokens, len(seq))
                seq.num_computed_tokens = len(seq)
                bm.commit_computed(seq)
                live.append(seq)
            else:
                done.append(seq)
        for seq in live:
            check_kv(seq)
            assert len(seq.block_table) >= -(-seq.num_computed_tokens // block_size)
        check_invariants(bm, live)

    for seq in live:
        bm.free(seq)
    check_invariants(bm, [])
    assert bm.num_free_blocks == num_blocks
    assert bm.usage == 0.0
