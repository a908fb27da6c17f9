"""Pure routing rules (revision pin, canary weight, prompt-length pools, priority) and the route
config / pool assignment they read. No processes, no network."""

from __future__ import annotations

import random
from typing import Any

import pytest

from tideserve.gateway.endpoints import DEFAULT_MAX_BATCH, Endpoint, RouteConfig, assign_pools
from tideserve.gateway.openai_api import GatewayError
from tideserve.gateway.ratelimit import Limits
from tideserve.gateway.routing import (
    candidate_tiers,
    estimate_tokens,
    parse_version,
    pool_candidates,
    priority_rank,
    revision_candidates,
)


def ep(instance_id: str, revision: int, long_pool: bool = False) -> Endpoint:
    return Endpoint(instance_id, f"http://{instance_id}:8000", revision, long_pool=long_pool)


def ids(endpoints: list[Endpoint]) -> list[str]:
    return [e.instance_id for e in endpoints]


# --- parse_version ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (None, None),
        ("", None),
        ("   ", None),
        ("3", 3),
        ("v3", 3),
        ("V12", 12),
        (" v7 ", 7),
        ("0", 0),
        ("007", 7),
        ("123456789", 123456789),
    ],
)
def test_parse_version_accepts(header: str | None, expected: int | None) -> None:
    assert parse_version(header) == expected


@pytest.mark.parametrize(
    "header", ["latest", "3.1", "-1", "+3", "v", "vv3", "3v", "r3", "v 3", "1234567890", "3,4"]
)
def test_parse_version_rejects(header: str) -> None:
    with pytest.raises(GatewayError) as info:
        parse_version(header)
    assert info.value.status == 400
    assert info.value.code == "invalid_model_version"
    assert repr(header) in info.value.message


# --- priority_rank ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "key_priority", "expected"),
    [
        # No header: the key's class.
        (None, "high", 0),
        (None, "normal", 1),
        (None, "low", 2),
        ("", "high", 0),
        ("  ", "low", 2),
        # An unknown key class counts as normal.
        (None, "urgent", 1),
        # The header may lower the class...
        ("low", "high", 2),
        ("normal", "high", 1),
        ("low", "normal", 2),
        # ...never raise it above the key's.
        ("high", "normal", 1),
        ("high", "low", 2),
        ("normal", "low", 2),
        ("high", "high", 0),
        # Case and surrounding spaces do not matter.
        ("LOW", "high", 2),
        (" Low ", "normal", 2),
    ],
)
def test_priority_rank(header: str | None, key_priority: str, expected: int) -> None:
    assert priority_rank(header, key_priority) == expected


@pytest.mark.parametrize("header", ["urgent", "0", "1", "highest", "hi gh"])
def test_priority_rank_rejects(header: str) -> None:
    with pytest.raises(GatewayError) as info:
        priority_rank(header, "normal")
    assert info.value.status == 400
    assert info.value.code == "invalid_priority"


# --- estimate_tokens ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", 0),
        ("a", 1),
        ("abcd", 1),
        ("abcde", 2),
        ("abcdefgh", 2),
        ("x" * 401, 101),
        ("é", 1),  # 2 bytes
        ("éé" * 2, 2),  # 8 bytes
        ("日本語", 3),  # 9 bytes: counted in bytes, not characters
    ],
)
def test_estimate_tokens(text: str, expected: int) -> None:
    assert estimate_tokens(text) == expected


# --- revision_candidates -------------------------------------------------------------------------------

MIXED = [ep("a", 1), ep("b", 2), ep("c", 2), ep("d", 3)]


@pytest.mark.parametrize(
    ("pin", "expected"),
    [(1, ["a"]), (2, ["b", "c"]), (3, ["d"])],
)
def test_pin_serves_only_that_revision(pin: int, expected: list[str]) -> None:
    # Even with a canary configured, a pin wins and has no fallback.
    config = RouteConfig(canary_revision=1, canary_weight=50)
    preferred, fallback = revision_candidates(MIXED, 3, config, pin, random.Random(0))
    assert ids(preferred) == expected
    assert fallback == []


@pytest.mark.parametrize(
    ("endpoints", "pin", "listed"),
    [
        (MIXED, 4, "[1, 2, 3]"),
        ([ep("x", 5), ep("y", 2), ep("z", 5)], 1, "[2, 5]"),
        ([], 1, "none yet"),
    ],
)
def test_unknown_pin_is_404(endpoints: list[Endpoint], pin: int, listed: str) -> None:
    with pytest.raises(GatewayError) as info:
        revision_candidates(endpoints, 1, RouteConfig(), pin, random.Random(0))
    assert info.value.status == 404
    assert info.value.code == "model_version_not_found"
    assert f"revision {pin} is not serving" in info.value.message
    assert listed in info.value.message


@pytest.mark.parametrize(
    "config",
    [
        RouteConfig(),  # no canary: every revision serves (a rolling update)
        RouteConfig(canary_revision=3, canary_weight=0),  # the stable revision is the current one
    ],
)
def test_without_canary_every_revision_serves(config: RouteConfig) -> None:
    preferred, fallback = revision_candidates(MIXED, 3, config, None, random.Random(0))
    assert ids(preferred) == ["a", "b", "c", "d"]
    assert fallback == []


@pytest.mark.parametrize(
    ("weight", "expected_current"),
    [(0, 0.0), (100, 1.0), (50, 0.5), (10, 0.1), (90, 0.9)],
)
def test_canary_weight_is_share_of_current(weight: int, expected_current: float) -> None:
    endpoints = [ep("stable-1", 1), ep("stable-2", 1), ep("new-1", 2)]
    config = RouteConfig(canary_revision=1, canary_weight=weight)
    rng = random.Random(1234)
    draws = 10_000
    current = 0
    for _ in range(draws):
        preferred, fallback = revision_candidates(endpoints, 2, config, None, rng)
        revisions = {e.revision for e in preferred}
        assert len(revisions) == 1
        # Each side falls back to the other.
        assert {e.revision for e in fallback} == {1, 2} - revisions
        assert len(preferred) + len(fallback) == len(endpoints)
        current += revisions == {2}
    assert abs(current / draws - expected_current) <= 0.02


@pytest.mark.parametrize(
    ("weight", "preferred_ids", "fallback_ids"),
    [
        (100, [], ["s"]),  # current chosen but none ready: stable is the fallback
        (0, ["s"], []),
    ],
)
def test_canary_when_one_side_has_no_endpoints(
    weight: int, preferred_ids: list[str], fallback_ids: list[str]
) -> None:
    config = RouteConfig(canary_revision=1, canary_weight=weight)
    preferred, fallback = revision_candidates([ep("s", 1)], 2, config, None, random.Random(0))
    assert ids(preferred) == preferred_ids
    assert ids(fallback) == fallback_ids


def test_canary_fallback_includes_third_revision() -> None:
    endpoints = [ep("s", 1), ep("n", 2), ep("old", 0)]
    config = RouteConfig(canary_revision=1, canary_weight=100)
    preferred, fallback = revision_candidates(endpoints, 2, config, None, random.Random(0))
    assert ids(preferred) == ["n"]
    assert ids(fallback) == ["s", "old"]


# --- pool_candidates -----------------------------------------------------------------------------------

POOLED = [ep("s1", 1), ep("s2", 1), ep("l1", 1, long_pool=True)]


@pytest.mark.parametrize(
    ("threshold", "prompt_tokens", "preferred_ids", "fallback_ids"),
    [
        (None, 10_000, ["s1", "s2", "l1"], []),
        (1000, 0, ["s1", "s2"], ["l1"]),
        (1000, 999, ["s1", "s2"], ["l1"]),
        (1000, 1000, ["l1"], ["s1", "s2"]),  # the threshold itself is long
        (1000, 50_000, ["l1"], ["s1", "s2"]),
    ],
)
def test_pool_candidates(
    threshold: int | None, prompt_tokens: int, preferred_ids: list[str], fallback_ids: list[str]
) -> None:
    config = RouteConfig(long_threshold=threshold)
    preferred, fallback = pool_candidates(POOLED, prompt_tokens, config)
    assert ids(preferred) == preferred_ids
    assert ids(fallback) == fallback_ids


# --- candidate_tiers ------------------------------------------------------------------------------------

TIERED = [
    ep("s-short", 1),
    ep("s-long", 1, long_pool=True),
    ep("n-short", 2),
    ep("n-long", 2, long_pool=True),
]


@pytest.mark.parametrize(
    ("config", "pin", "prompt_tokens", "expected"),
    [
        # No canary, no pools: a single tier of everything.
        (RouteConfig(), None, 10, [["s-short", "s-long", "n-short", "n-long"]]),
        # Pools only: right pool (both revisions), then the other pool.
        (RouteConfig(long_threshold=100), None, 10, [["s-short", "n-short"], ["s-long", "n-long"]]),
        (RouteConfig(long_threshold=100), None, 100, [["s-long", "n-long"], ["s-short", "n-short"]]),
        # Pin: right revision and pool, then right revision in the other pool; never the other revision.
        (RouteConfig(long_threshold=100), 1, 10, [["s-short"], ["s-long"]]),
        (RouteConfig(long_threshold=100), 2, 500, [["n-long"], ["n-short"]]),
        (RouteConfig(), 2, 500, [["n-short", "n-long"]]),
        # Canary (weight 100: the current revision 2 is chosen), then the stable revision.
        (
            RouteConfig(canary_revision=1, canary_weight=100, long_threshold=100),
            None,
            10,
            [["n-short"], ["n-long"], ["s-short"], ["s-long"]],
        ),
        (
            RouteConfig(canary_revision=1, canary_weight=0, long_threshold=100),
            None,
            500,
            [["s-long"], ["s-short"], ["n-long"], ["n-short"]],
        ),
        (
            RouteConfig(canary_revision=1, canary_weight=0),
            None,
            10,
            [["s-short", "s-long"], ["n-short", "n-long"]],
        ),
    ],
)
def test_candidate_tiers_order(
    config: RouteConfig, pin: int | None, prompt_tokens: int, expected: list[list[str]]
) -> None:
    tiers = candidate_tiers(TIERED, 2, config, pin, prompt_tokens, random.Random(0))
    assert [ids(t) for t in tiers] == expected


def test_candidate_tiers_skip_empty_pools() -> None:
    endpoints = [ep("n-short", 2), ep("s-long", 1, long_pool=True)]
    config = RouteConfig(canary_revision=1, canary_weight=100, long_threshold=100)
    tiers = candidate_tiers(endpoints, 2, config, None, 10, random.Random(0))
    assert [ids(t) for t in tiers] == [["n-short"], ["s-long"]]
    assert candidate_tiers([], 2, config, None, 10, random.Random(0)) == []


def test_candidate_tiers_unknown_pin_raises() -> None:
    with pytest.raises(GatewayError) as info:
        candidate_tiers(TIERED, 2, RouteConfig(), 9, 10, random.Random(0))
    assert info.value.code == "model_version_not_found"


# --- RouteConfig.from_spec ------------------------------------------------------------------------------


@pytest.mark.parametrize("spec", [{}, {"routing": None}, {"routing": {}, "parameters": {}}])
def test_route_config_defaults(spec: dict[str, Any]) -> None:
    config = RouteConfig.from_spec(spec)
    assert config == RouteConfig(max_inflight=2 * DEFAULT_MAX_BATCH)
    assert config.policy == "prefix_aware"
    assert config.canary_revision is None
    assert config.canary_weight == 100
    assert config.long_threshold is None
    assert config.long_replicas == 0
    assert config.limits == Limits()
    assert config.queue_size == 256
    assert config.queue_timeout_s == 30.0
    assert config.max_inflight == 64
    assert config.timeout_s == 600.0


def test_route_config_maps_every_field() -> None:
    spec: dict[str, Any] = {
        "parameters": {"maxBatchSize": 8},
        "routing": {
            "policy": "least_load",
            "canary": {"stableRevision": 4, "weight": 25},
            "promptLength": {"thresholdTokens": 2048, "longReplicas": 2},
            "rateLimit": {"requestsPerMinute": 60, "tokensPerMinute": 10_000, "maxConcurrent": 5},
            "queue": {"maxSize": 17, "timeoutSeconds": 2.5},
            "maxInflightPerInstance": 3,
            "requestTimeoutSeconds": 45.0,
        },
    }
    assert RouteConfig.from_spec(spec) == RouteConfig(
        policy="least_load",
        canary_revision=4,
        canary_weight=25,
        long_threshold=2048,
        long_replicas=2,
        limits=Limits(requests_per_min=60, tokens_per_min=10_000, max_concurrent=5),
        queue_size=17,
        queue_timeout_s=2.5,
        max_inflight=3,
        timeout_s=45.0,
    )


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ({"parameters": {"maxBatchSize": 8}}, 16),
        ({"parameters": {"maxBatchSize": 1}}, 2),
        ({"parameters": {"maxBatchSize": 8}, "routing": {"maxInflightPerInstance": 5}}, 5),
        ({"routing": {"maxInflightPerInstance": 1}}, 1),
    ],
)
def test_route_config_max_inflight(spec: dict[str, Any], expected: int) -> None:
    assert RouteConfig.from_spec(spec).max_inflight == expected


# --- assign_pools ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("instances", "long_replicas", "expected_long"),
    [
        # (instance id, revision) in arbitrary order; the last N by id per revision are long.
        ([("c", 1), ("a", 1), ("b", 1)], 1, {"c"}),
        ([("c", 1), ("a", 1), ("b", 1)], 2, {"b", "c"}),
        ([("c", 1), ("a", 1), ("b", 1)], 0, set()),
        # At least one short instance stays.
        ([("c", 1), ("a", 1), ("b", 1)], 3, {"b", "c"}),
        ([("c", 1), ("a", 1), ("b", 1)], 10, {"b", "c"}),
        # A lone instance is never long-only.
        ([("a", 1)], 1, set()),
        ([("a", 1)], 5, set()),
        ([], 2, set()),
        # Pools per revision.
        ([("a", 1), ("b", 1), ("c", 2), ("d", 2), ("e", 2)], 1, {"b", "e"}),
        ([("a", 1), ("b", 2), ("c", 2)], 1, {"c"}),
        ([("e", 2), ("a", 1), ("d", 2), ("b", 1), ("c", 2)], 2, {"b", "d", "e"}),
    ],
)
def test_assign_pools(instances: list[tuple[str, int]], long_replicas: int, expected_long: set[str]) -> None:
    endpoints = [ep(i, rev) for i, rev in instances]
    assign_pools(endpoints, long_replicas)
    assert {e.instance_id for e in endpoints if e.long_pool} == expected_long
    # The caller's order is left alone.
    assert [e.instance_id for e in endpoints] == [i for i, _ in instances]


def test_assign_pools_resets_previous_assignment() -> None:
    endpoints = [ep("a", 1, long_pool=True), ep("b", 1, long_pool=True), ep("c", 1)]
    assign_pools(endpoints, 1)
    assert {e.instance_id for e in endpoints if e.long_pool} == {"c"}
    assign_pools(endpoints, 0)
    assert not any(e.long_pool for e in endpoints)
