import math
import random
import statistics
import string
from dataclasses import replace

import pytest

from tideserve.gateway.balancing import (
    BLOCK_CHARS,
    SATURATED_WAITING,
    SHARE_EPSILON,
    SHARE_SLACK,
    EndpointState,
    Policy,
    PolicyState,
    PrefixIndex,
    RequestInfo,
    block_hashes,
    bounded_load_filter,
    eligible,
    index_capacity,
    kv_watermark_filter,
    least_kv,
    least_requests,
    load_of,
    prefix_aware,
    prompt_text_of,
    ready_filter,
    round_robin,
    session,
    session_key_of,
    waiting_of,
)

NOW = 100.0
NO_PROMPT = RequestInfo("", None)


def ep(
    id: str,
    *,
    ready: bool = True,
    draining: bool = False,
    inflight: int = 0,
    running: int = 0,
    waiting: int = 0,
    kv: float = 0.2,
    scraped_at: float | None = NOW,
    weight: float = 1.0,
) -> EndpointState:
    return EndpointState(id, ready, draining, inflight, running, waiting, kv, scraped_at, weight)


def ids(endpoints: list[EndpointState]) -> list[str]:
    return [e.id for e in endpoints]


def text(rng: random.Random, n: int) -> str:
    return "".join(rng.choices(string.ascii_lowercase + " ", k=n))


# Filters -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("endpoints", "expected"),
    [
        ([ep("a"), ep("b")], ["a", "b"]),
        ([ep("a", ready=False), ep("b")], ["b"]),
        ([ep("a", draining=True), ep("b")], ["b"]),
        ([ep("a", ready=False), ep("b", draining=True)], []),
        ([], []),
    ],
)
def test_ready_filter(endpoints: list[EndpointState], expected: list[str]) -> None:
    assert ids(ready_filter(endpoints)) == expected


@pytest.mark.parametrize(
    ("endpoints", "expected"),
    [
        ([ep("a", kv=0.95), ep("b", kv=0.5)], ["b"]),
        ([ep("a", kv=0.9), ep("b", kv=0.91)], ["a"]),  # the watermark itself is still usable
        ([ep("a", kv=0.95), ep("b", kv=0.99)], ["a", "b"]),  # all above: keep all
        ([ep("a", scraped_at=None), ep("b", kv=0.8)], ["b"]),  # never scraped counts as full
        ([ep("a", scraped_at=NOW - 3.5), ep("b", kv=0.8)], ["b"]),  # stale counts as full
        ([ep("a", scraped_at=NOW - 2.5, kv=0.1), ep("b", kv=0.8)], ["a", "b"]),  # recent enough
        ([ep("a", scraped_at=None)], ["a"]),  # stale but the only one left
    ],
)
def test_kv_watermark_filter(endpoints: list[EndpointState], expected: list[str]) -> None:
    assert ids(kv_watermark_filter(endpoints, NOW)) == expected


@pytest.mark.parametrize(
    ("endpoints", "expected"),
    [
        # total 0+1, bound ceil(1.25 * 1/2) = 1: anyone may take the first request
        ([ep("a"), ep("b")], ["a", "b"]),
        # total 5+1, bound ceil(1.25 * 6/2) = 4: a at 3 may take it
        ([ep("a", inflight=3), ep("b", inflight=2)], ["a", "b"]),
        # total 8+1, bound ceil(1.25 * 9/2) = 6: a at 8 is over
        ([ep("a", inflight=8), ep("b")], ["b"]),
        # the engine queue counts as load too
        ([ep("a", inflight=2, waiting=6), ep("b")], ["b"]),
        # a stale queue is unknown, not huge: only own in-flight counts
        ([ep("a", inflight=1, waiting=50, scraped_at=None), ep("b", inflight=1)], ["a", "b"]),
        # weight 3 gives a three quarters of the mean: bound ceil(1.25 * 9 * 3/4) = 9
        ([ep("a", inflight=8, weight=3.0), ep("b")], ["a", "b"]),
    ],
)
def test_bounded_load_filter(endpoints: list[EndpointState], expected: list[str]) -> None:
    # ε = 0.25 here, as the comments compute; the default is looser (LOAD_EPSILON).
    assert ids(bounded_load_filter(endpoints, NOW, epsilon=0.25)) == expected


def test_stale_metrics_count_as_saturated() -> None:
    assert waiting_of(ep("a", waiting=2, scraped_at=None), NOW) == SATURATED_WAITING
    assert waiting_of(ep("a", waiting=2), NOW) == 2
    assert load_of(ep("a", inflight=3, waiting=2, scraped_at=NOW - 10), NOW) == 3


def test_eligible_applies_readiness_before_the_watermark() -> None:
    # The only endpoint under the watermark is draining, so the full ones are all that is left.
    endpoints = [ep("a", draining=True, kv=0.1), ep("b", kv=0.95), ep("c", kv=0.97)]
    assert ids(eligible(endpoints, NOW)) == ["b", "c"]


# Request text and session keys ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (
            {"messages": [{"role": "system", "content": "S"}, {"role": "user", "content": "U"}]},
            "system\nS\nuser\nU\n",
        ),
        (
            {
                "messages": [
                    {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "image_url"}]}
                ]
            },
            "user\na\n",
        ),
        ({"messages": [{"role": "assistant", "content": None, "tool_calls": []}]}, "assistant\n\n"),
        ({"prompt": "hello"}, "hello"),
        ({"prompt": ["a", "b"]}, "ab"),
        ({"prompt": [1, 2, 3]}, ""),
        ({"model": "m"}, ""),
    ],
)
def test_prompt_text_of(body: dict, expected: str) -> None:
    assert prompt_text_of(body) == expected


def test_prompt_text_keeps_earlier_turns_a_prefix() -> None:
    turn = [{"role": "system", "content": "S"}, {"role": "user", "content": "U"}]
    later = [*turn, {"role": "assistant", "content": "A"}, {"role": "user", "content": "V"}]
    assert prompt_text_of({"messages": later}).startswith(prompt_text_of({"messages": turn}))


@pytest.mark.parametrize(
    ("headers", "body", "expected"),
    [
        ({"x-session-id": "s1"}, {"user": "u1"}, "s1"),
        ({}, {"user": "u1"}, "u1"),
        ({}, {"user": ""}, None),
        ({}, {"user": 7}, None),
        ({}, {}, None),
    ],
)
def test_session_key_of(headers: dict[str, str], body: dict, expected: str | None) -> None:
    assert session_key_of(headers, body) == expected


# Prefix index --------------------------------------------------------------------------------------


def test_block_hashes_are_chained_over_full_blocks() -> None:
    a, b = "a" * BLOCK_CHARS, "b" * BLOCK_CHARS
    assert len(block_hashes(a + b + "tail")) == 2
    assert block_hashes(a + b)[:1] == block_hashes(a)
    # The same block after a different prefix is a different cache entry.
    assert block_hashes(a + b)[1] != block_hashes(b + b)[1]


def test_prefix_index_matches_leading_blocks_only() -> None:
    index = PrefixIndex()
    a, b, c = ("a" * BLOCK_CHARS, "b" * BLOCK_CHARS, "c" * BLOCK_CHARS)
    index.record("e1", a + b)
    assert index.matched_blocks("e1", block_hashes(a + b + c)) == 2
    assert index.matched_blocks("e1", block_hashes(c + a + b)) == 0
    assert index.matched_blocks("e2", block_hashes(a + b)) == 0
    index.forget("e1")
    assert index.matched_blocks("e1", block_hashes(a + b)) == 0


def test_prefix_index_evicts_tails_before_heads() -> None:
    index = PrefixIndex(capacity=3)
    blocks = ["x" * BLOCK_CHARS, "y" * BLOCK_CHARS, "z" * BLOCK_CHARS]
    index.record("e", "".join(blocks))
    index.record("e", "w" * BLOCK_CHARS)
    assert index.matched_blocks("e", block_hashes("".join(blocks))) == 2


# Policies ------------------------------------------------------------------------------------------

ALL_POLICIES: list[Policy] = [round_robin, least_requests, least_kv, prefix_aware, session]


@pytest.mark.parametrize("policy", ALL_POLICIES)
@pytest.mark.parametrize(
    "endpoints", [[], [ep("a", ready=False)], [ep("a", draining=True), ep("b", ready=False)]]
)
def test_no_eligible_endpoint_gives_none(policy: Policy, endpoints: list[EndpointState]) -> None:
    for request in (NO_PROMPT, RequestInfo("p", "s1")):
        assert policy(endpoints, request, PolicyState(), random.Random(0), NOW) is None


@pytest.mark.parametrize("policy", ALL_POLICIES)
def test_stale_endpoint_is_used_when_nothing_else_is(policy: Policy) -> None:
    endpoints = [ep("a", scraped_at=None), ep("b", ready=False)]
    assert policy(endpoints, RequestInfo("p", "s1"), PolicyState(), random.Random(0), NOW) == "a"


@pytest.mark.parametrize(
    ("endpoints", "expected"),
    [
        ([ep("a"), ep("b"), ep("c")], ["a", "b", "c", "a", "b", "c"]),
        ([ep("c"), ep("a"), ep("b")], ["a", "b", "c", "a", "b", "c"]),  # listing order does not matter
        ([ep("a"), ep("b", ready=False), ep("c")], ["a", "c", "a", "c", "a", "c"]),
        ([ep("a"), ep("b", kv=0.95)], ["a"] * 6),
    ],
)
def test_round_robin(endpoints: list[EndpointState], expected: list[str]) -> None:
    state, rng = PolicyState(), random.Random(0)
    assert [round_robin(endpoints, NO_PROMPT, state, rng, NOW) for _ in expected] == expected


@pytest.mark.parametrize(
    ("endpoints", "expected"),
    [
        ([ep("a", inflight=3), ep("b", inflight=1), ep("c", inflight=2)], {"b"}),
        ([ep("a", inflight=1), ep("b", inflight=1), ep("c", inflight=2)], {"a", "b"}),
        ([ep("a", inflight=0, draining=True), ep("b", inflight=5)], {"b"}),
        ([ep("a", inflight=4, weight=4.0), ep("b", inflight=2)], {"a"}),
        # scraped load is not its business: it counts only this gateway's own requests
        ([ep("a", inflight=1, waiting=50), ep("b", inflight=2)], {"a"}),
    ],
)
def test_least_requests(endpoints: list[EndpointState], expected: set[str]) -> None:
    assert_choices(least_requests, endpoints, NO_PROMPT, expected)


@pytest.mark.parametrize(
    ("endpoints", "expected"),
    [
        ([ep("a", waiting=3), ep("b", waiting=1)], {"b"}),
        # a queue outweighs a busy batch: 1 waiting > 3 running * 0.25
        ([ep("a", waiting=1), ep("b", running=3)], {"b"}),
        # an almost full cache costs about as much as a few waiting requests
        ([ep("a", kv=0.85), ep("b", kv=0.1, waiting=2)], {"b"}),
        ([ep("a", kv=0.85), ep("b", kv=0.1, waiting=4)], {"a"}),
        ([ep("a", waiting=2), ep("b", waiting=2)], {"a", "b"}),
        # all full: the stale one loses against any real queue
        ([ep("a", kv=0.95, waiting=40), ep("b", scraped_at=None)], {"a"}),
    ],
)
def test_least_kv(endpoints: list[EndpointState], expected: set[str]) -> None:
    assert_choices(least_kv, endpoints, NO_PROMPT, expected)


SYSTEM = "You are a careful assistant. " * 300  # 8,700 characters: 135 full blocks, a full affinity gain


@pytest.mark.parametrize(
    ("endpoints", "recorded", "expected"),
    [
        # cached prefix wins over a lighter load while within the bound, ceil(1.25 * 5/3) = 3
        ([ep("a", inflight=2), ep("b"), ep("c", inflight=2)], {"a": SYSTEM}, {"a"}),
        # a match under MIN_AFFINITY_BLOCKS (here 3 blocks) is no reason: the slower-filling cache wins
        ([ep("a", inflight=2), ep("b")], {"a": SYSTEM[:192]}, {"b"}),
        # the longest match wins
        ([ep("a"), ep("b")], {"a": SYSTEM[:640], "b": SYSTEM}, {"b"}),
        # equal matches: the lighter load wins
        ([ep("a", inflight=1), ep("b")], {"a": SYSTEM, "b": SYSTEM}, {"b"}),
        # over the bound, ceil(1.25 * 7/2) = 5, the cached endpoint is excluded
        ([ep("a", inflight=5), ep("b", inflight=1)], {"a": SYSTEM}, {"b"}),
        # nothing cached anywhere, no cache growing: least loaded, ties at random
        ([ep("a", inflight=1), ep("b"), ep("c")], {}, {"b", "c"}),
        # not ready: the cache does not matter
        ([ep("a", ready=False), ep("b")], {"a": SYSTEM}, {"b"}),
    ],
)
def test_prefix_aware(endpoints: list[EndpointState], recorded: dict[str, str], expected: set[str]) -> None:
    state = PolicyState(epsilon=0.25)
    for endpoint_id, prompt in recorded.items():
        state.record(endpoint_id, prompt, None, NOW)
    assert_choices(prefix_aware, endpoints, RequestInfo(SYSTEM + "user: hi", None), expected, state)


def test_session_without_a_key_falls_back_to_prefix_aware() -> None:
    state = PolicyState()
    state.index.record("b", SYSTEM)
    assert_choices(session, [ep("a"), ep("b")], RequestInfo(SYSTEM, None), {"b"}, state)


def assert_choices(
    policy: Policy,
    endpoints: list[EndpointState],
    request: RequestInfo,
    expected: set[str],
    state: PolicyState | None = None,
) -> None:
    """Over many seeds the policy picks exactly the expected set: ties really are broken at random."""
    state = state or PolicyState()
    chosen = {policy(endpoints, request, state, random.Random(seed), NOW) for seed in range(50)}
    assert chosen == expected


# Properties ----------------------------------------------------------------------------------------


def test_prefix_aware_keeps_a_shared_system_prompt_on_one_endpoint_under_the_bound() -> None:
    rng = random.Random(1)
    system = {"role": "system", "content": text(rng, 3000)}
    state = PolicyState(epsilon=0.25)
    inflight = dict.fromkeys(["e0", "e1", "e2", "e3"], 20)  # background load: the bound is not tight at once
    chosen: list[str] = []
    while True:
        endpoints = [ep(e, inflight=n) for e, n in inflight.items()]
        home_fits = not chosen or chosen[0] in ids(bounded_load_filter(endpoints, NOW, epsilon=0.25))
        prompt = prompt_text_of({"messages": [system, {"role": "user", "content": text(rng, 200)}]})
        target = prefix_aware(endpoints, RequestInfo(prompt, None), state, rng, NOW)
        assert target is not None
        state.record(target, prompt, None, NOW)
        inflight[target] += 1
        assert max(inflight.values()) <= math.ceil(1.25 * statistics.mean(inflight.values()))
        if not home_fits:
            break
        chosen.append(target)
    # home at 20 + k takes one more while 21 + k <= ceil(1.25 * (81 + k) / 4), i.e. for k = 0..7
    assert chosen == [chosen[0]] * 8
    assert target != chosen[0]


def simulate(policy: Policy, seed: int, requests: int = 1000) -> tuple[dict[str, int], float]:
    """4 endpoints; 20 multi-turn conversations over 4 shared system prompts. Each request stays in flight
    8-16 arrivals. The hit rate is measured against a model of each engine's prefix cache (unbounded, full
    blocks of every prompt and its reply), not against the gateway's own index."""
    rng = random.Random(seed)
    systems = [text(rng, 2500) for _ in range(4)]
    conversations = [[{"role": "system", "content": systems[c % 4]}] for c in range(20)]
    state = PolicyState()
    finishing: dict[str, list[int]] = {f"e{i}": [] for i in range(4)}
    served = dict.fromkeys(finishing, 0)
    engine_cache: dict[str, set[int]] = {e: set() for e in finishing}
    hits = blocks = 0
    for t in range(requests):
        for e in finishing:
            finishing[e] = [end for end in finishing[e] if end > t]
        messages = conversations[rng.randrange(len(conversations))]
        messages.append({"role": "user", "content": text(rng, rng.randint(100, 400))})
        prompt = prompt_text_of({"messages": messages})
        endpoints = [ep(e, inflight=len(ends), running=len(ends)) for e, ends in finishing.items()]
        target = policy(endpoints, RequestInfo(prompt, None), state, rng, NOW)
        assert target is not None
        state.record(target, prompt, None, NOW)
        state.note(target, NOW)
        hashes = block_hashes(prompt)
        hits += next((i for i, h in enumerate(hashes) if h not in engine_cache[target]), len(hashes))
        blocks += len(hashes)
        finishing[target].append(t + rng.randint(8, 16))
        served[target] += 1
        messages.append({"role": "assistant", "content": text(rng, rng.randint(100, 400))})
        engine_cache[target].update(block_hashes(prompt_text_of({"messages": messages})))
    return served, hits / blocks


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_prefix_aware_balances_load_and_beats_round_robin_on_hits(seed: int) -> None:
    served, hit_rate = simulate(prefix_aware, seed)
    rr_served, rr_hit_rate = simulate(round_robin, seed)
    assert max(served.values()) / statistics.mean(served.values()) <= 1.25
    assert max(rr_served.values()) == min(rr_served.values())
    # Round robin still hits a lot (a conversation's history is on every endpoint a few turns late);
    # prefix-aware should at least halve the misses.
    assert hit_rate >= rr_hit_rate + 0.04
    assert 1 - hit_rate <= 0.6 * (1 - rr_hit_rate)


def test_session_affinity_is_stable_and_moves_only_a_removed_endpoints_sessions() -> None:
    rng = random.Random(3)
    endpoints = [ep(f"e{i}") for i in range(5)]
    keys = [f"session-{i}" for i in range(2000)]

    def assign(eps: list[EndpointState]) -> dict[str, str | None]:
        return {k: session(eps, RequestInfo("", k), PolicyState(), rng, NOW) for k in keys}

    before = assign(endpoints)
    assert assign(list(reversed(endpoints))) == before  # stable, whatever the listing order
    counts = [list(before.values()).count(e.id) for e in endpoints]
    assert min(counts) > 300  # spread: 400 each on average

    removed = "e2"
    after = assign([e if e.id != removed else replace(e, ready=False) for e in endpoints])
    moved = {k for k in keys if after[k] != before[k]}
    assert moved == {k for k in keys if before[k] == removed}
    assert removed not in after.values()


@pytest.mark.parametrize(
    ("cache_tokens", "expected"),
    [(0, None), (-1, None), (1, 1), (6400, 400), (32768, 2048)],  # 4 characters a token, 64 a block
)
def test_index_capacity(cache_tokens: float, expected: int | None) -> None:
    assert index_capacity(cache_tokens) == expected


def test_index_bounded_by_the_engines_cache_keeps_the_head() -> None:
    index = PrefixIndex()
    index.record("a", SYSTEM, capacity=10)
    hashes = block_hashes(SYSTEM)
    assert len(hashes) > 10 and index.matched_blocks("a", hashes) == 10


def noted(counts: dict[str, int]) -> PolicyState:
    state = PolicyState()
    for endpoint, count in counts.items():
        for _ in range(count):
            state.note(endpoint, NOW)
    return state


def test_prefix_aware_takes_nothing_past_the_share_bound() -> None:
    state = noted({"a": 27, "b": 20, "c": 20, "d": 20})
    state.record("a", SYSTEM, None, NOW)  # however long the cached history there
    endpoints = [ep(e) for e in "abcd"]
    # a's bound is ceil(1.2 * (87 + 1) / 4 + 1) = 28: taking this request it stays within
    assert prefix_aware(endpoints, RequestInfo(SYSTEM + "more", None), state, random.Random(0), NOW) == "a"
    state.note("a", NOW)  # 28 + 1 > ceil(1.2 * 89 / 4 + 1) = 28
    chosen = {
        prefix_aware(endpoints, RequestInfo(SYSTEM + "more", None), state, random.Random(s), NOW)
        for s in range(20)
    }
    assert chosen == {"b", "c", "d"}


def test_prefix_aware_gives_a_hot_prefix_a_second_home_and_reuses_it() -> None:
    """Past its bound the home sheds the next request to a shared prefix; the endpoint that takes it then
    holds the prefix too, and the two share what follows by traffic."""
    state = noted({"a": 32, "b": 24, "c": 20, "d": 24})  # a: 33 > ceil(1.2 * 101 / 4 + 1) = 32
    state.record("a", SYSTEM, None, NOW)
    state.record("c", "Another system prompt. " * 40, None, NOW)  # c, d fill up: b grows slowest, c lighter
    state.record("d", "A third system prompt. " * 40, None, NOW)
    endpoints = [ep(e) for e in "abcd"]
    second = prefix_aware(endpoints, RequestInfo(SYSTEM + "q1", None), state, random.Random(0), NOW)
    assert second == "b"
    state.record("b", SYSTEM + "q1", None, NOW)
    state.note("b", NOW)
    assert prefix_aware(endpoints, RequestInfo(SYSTEM + "q2", None), state, random.Random(0), NOW) == "b"


def test_prefix_aware_spreads_new_prefixes_over_the_slowest_filling_caches() -> None:
    """Prefixes cached nowhere go where current traffic fills the cache slowest, so N shared prompts on N
    endpoints get one endpoint each, whatever the order they arrive in."""
    rng = random.Random(4)
    systems = [text(rng, 3000) for _ in range(4)]
    state = PolicyState()
    endpoints = [ep(f"e{i}") for i in range(4)]
    homes: dict[int, set[str]] = {k: set() for k in range(4)}
    for k in [0, 1, 0, 2, 0, 1, 3, 2, 3, 1, 0, 2]:
        prompt = prompt_text_of({"messages": [{"role": "system", "content": systems[k]},
                                              {"role": "user", "content": text(rng, 200)}]})  # fmt: skip
        target = prefix_aware(endpoints, RequestInfo(prompt, None), state, rng, NOW)
        assert target is not None
        state.record(target, prompt, 200, NOW)
        state.note(target, NOW)
        homes[k].add(target)
    assert all(len(h) == 1 for h in homes.values())
    assert len(set().union(*homes.values())) == 4


def test_prefix_aware_ignores_what_old_traffic_left_in_a_cache() -> None:
    """A cache full of prompts nobody sent for a minute costs a new prefix nothing (the engine evicts
    them first); one that current traffic keeps filling does."""
    state = PolicyState()
    state.record("a", "An old conversation. " * 400, None, NOW - 60)
    state.record("b", "A current conversation. " * 20, None, NOW)
    assert prefix_aware([ep("a"), ep("b")], RequestInfo(SYSTEM, None), state, random.Random(0), NOW) == "a"


def test_policy_state_prune_forgets_gone_endpoints_only() -> None:
    state = PolicyState()
    for e in "abc":
        state.note(e, NOW)
        state.record(e, SYSTEM, None, NOW)
    state.prune({"b", "z"})
    hashes = block_hashes(SYSTEM)
    assert [state.index.matched_blocks(e, hashes) for e in "abc"] == [0, len(hashes), 0]
    assert set(state.recent) == set(state.growth) == {"b"}
    assert state.index.endpoints() == ["b"]


def test_index_record_counts_the_blocks_new_there() -> None:
    index = PrefixIndex()
    assert index.record("a", SYSTEM) == len(block_hashes(SYSTEM))
    assert index.record("a", SYSTEM + "x" * 2 * BLOCK_CHARS) == 2
    assert index.record("b", SYSTEM) == len(block_hashes(SYSTEM))


@pytest.mark.parametrize("seed", range(20))
def test_prefix_aware_always_finds_an_endpoint_within_the_bound(seed: int) -> None:
    """The lightest endpoint per unit of weight is at or under the mean, so it always fits its bound:
    whatever the history and weights, a ready endpoint is returned and the bound is respected."""
    rng = random.Random(seed)
    endpoints = [ep(f"e{i}", weight=rng.choice([1.0, 2.0, 4.0])) for i in range(rng.randint(1, 9))]
    state = noted({e.id: rng.randint(0, 40) for e in endpoints})
    target = prefix_aware(endpoints, RequestInfo(SYSTEM, None), state, rng, NOW)
    assert target is not None
    weight = {e.id: e.weight for e in endpoints}
    mean = (sum(state.recent_count(e.id, NOW) for e in endpoints) + 1) / sum(weight.values())
    assert state.recent_count(target, NOW) + 1 <= math.ceil(
        (1 + SHARE_EPSILON) * mean * weight[target] + SHARE_SLACK
    )
