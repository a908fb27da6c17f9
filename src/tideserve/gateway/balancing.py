"""Which endpoint of a service gets the next request.

Pure decisions over plain data: the gateway passes a snapshot of each endpoint (its own in-flight count
plus the last scraped engine metrics), its monotonic clock and an RNG, and gets back an endpoint id.
The only memory between requests is `PolicyState`, one per service, which the caller owns.

Roles follow the placement vocabulary: filters drop endpoints that must not take the request, scorers
rank the rest, and a selector picks the best with random tie-breaking so equal endpoints share load.
"""

from __future__ import annotations

import functools
import hashlib
import math
import random
from collections import OrderedDict
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

STALE_AFTER_S = 3.0
KV_WATERMARK = 0.9
# Unknown load must lose against any real queue, yet stay finite so a stale endpoint is still chosen
# when it is the only one left.
SATURATED_WAITING = 1_000
# least_kv: a request already waiting delays a newcomer by a whole turn in the queue (weight 1), while a
# running one only shares the continuous batch, slowing each decode step a little (α). A nearly full KV
# cache means the next request queues or preempts another, so a full cache counts like a few waiting
# requests (β): enough to steer away from it, not enough to outweigh a real queue.
RUNNING_WEIGHT = 0.25
KV_WEIGHT = 4.0
# prefix_aware: a cached prefix skips its prefill, so the request goes where the longest prefix is cached,
# among the endpoints whose recent traffic stays within ceil((1+ε)·mean + slack) (consistent hashing
# with bounded loads, applied to the traffic share). The slack, in requests, keeps the first few
# requests of a shared prefix together while counts are too small to mean anything. Traffic decays
# within seconds: the share that matters is today's, and conversations that ended must stop steering
# new ones. In-flight load is bounded as well (ε=2: three times the mean), which only bites on bursts
# or a stalled endpoint; tighter, it splits conversations off their cache on the noise of small counts.
LOAD_EPSILON = 2.0
SHARE_EPSILON = 0.2
SHARE_SLACK = 1.0
RECENT_TAU_S = 3.0
# A match shorter than this (~64 tokens: a role header, a one-line instruction) is no reason to pick
# an endpoint.
MIN_AFFINITY_BLOCKS = 4
BLOCK_CHARS = 64
# Text per token of BPE vocabularies on English, to size the index from an engine's cache in tokens.
CHARS_PER_TOKEN = 4
INDEX_CAPACITY = 50_000


@dataclass(frozen=True)
class EndpointState:
    id: str
    ready: bool
    draining: bool
    inflight: int  # this gateway's own requests, exact
    running: int  # scraped from the engine, includes other gateways' requests
    waiting: int
    kv_usage: float  # 0..1
    scraped_at: float | None  # same clock as `now`; None until the first good scrape
    weight: float = 1.0  # relative capacity, e.g. GPUs behind the endpoint


@dataclass(frozen=True)
class RequestInfo:
    prompt_text: str
    session_key: str | None


def prompt_text_of(body: dict[str, Any]) -> str:
    """The text a prefix cache would see, in order, from an OpenAI chat or completions body.

    Chat templates differ per model, but they all render messages in order, so role and content in
    order keep every earlier turn a prefix of the next request's text, which is all matching needs."""
    messages = body.get("messages")
    if isinstance(messages, list):
        return "".join(_message_text(m) for m in messages if isinstance(m, dict))
    prompt = body.get("prompt")
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, list):
        return "".join(p for p in prompt if isinstance(p, str))
    return ""


def _message_text(message: dict[str, Any]) -> str:
    content = message.get("content")
    if isinstance(content, list):
        content = "".join(
            part.get("text", "") for part in content if isinstance(part, dict) and part.get("type") == "text"
        )
    if not isinstance(content, str):
        content = ""
    return f"{message.get('role', '')}\n{content}\n"


@functools.lru_cache(maxsize=256)
def block_hashes(prompt: str) -> tuple[int, ...]:
    """Chained hashes of the prompt's full 64-character blocks: h_i = H(h_{i-1}, block_i).

    Chaining makes a block's hash name its whole prefix, as in vLLM's prefix cache, so a match on h_i
    means blocks 0..i all match. Only full blocks count because engines only cache full blocks.
    Cached because the policy hashes the prompt and `record` hashes it again right after."""
    hashes: list[int] = []
    h = 0
    for start in range(0, len(prompt) - BLOCK_CHARS + 1, BLOCK_CHARS):
        data = h.to_bytes(8, "little") + prompt[start : start + BLOCK_CHARS].encode()
        h = int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little")
        hashes.append(h)
    return tuple(hashes)


class PrefixIndex:
    """An approximation of each endpoint's prefix cache: the block hashes recently sent to it, LRU-bounded
    like the engine's own cache. It can be wrong (the engine evicts on its own schedule), which only costs
    a cache miss, never a wrong answer."""

    def __init__(self, capacity: int = INDEX_CAPACITY) -> None:
        self.capacity = capacity
        self._blocks: dict[str, OrderedDict[int, None]] = {}

    def matched_blocks(self, endpoint_id: str, hashes: Sequence[int]) -> int:
        blocks = self._blocks.get(endpoint_id)
        if not blocks:
            return 0
        matched = 0
        for h in hashes:
            if h not in blocks:
                break
            matched += 1
        return matched

    def record(self, endpoint_id: str, prompt: str, capacity: int | None = None) -> int:
        """Notes that `prompt` was sent to `endpoint_id`; returns how many of its blocks were new there.
        `capacity` (blocks) is the engine's own cache size when it publishes one (see
        `index_capacity`): an index that outlives the engine's evictions sends requests to a prefix
        that is gone."""
        blocks = self._blocks.setdefault(endpoint_id, OrderedDict())
        new = 0
        # Head blocks become the most recent, so eviction trims prefixes from the tail and never leaves a
        # tail that can no longer be reached through its chain.
        for h in reversed(block_hashes(prompt)):
            if h in blocks:
                blocks.move_to_end(h)
            else:
                blocks[h] = None
                new += 1
        limit = capacity or self.capacity
        while len(blocks) > limit:
            blocks.popitem(last=False)
        return new

    def endpoints(self) -> list[str]:
        return list(self._blocks)

    def forget(self, endpoint_id: str) -> None:
        """The endpoint is gone; a new one with the same id starts with an empty cache."""
        self._blocks.pop(endpoint_id, None)


def index_capacity(cache_tokens: float) -> int | None:
    """Index blocks that fit an engine's KV cache of `cache_tokens` (None: unknown)."""
    if cache_tokens <= 0:
        return None
    return max(1, int(cache_tokens * CHARS_PER_TOKEN) // BLOCK_CHARS)


@dataclass
class PolicyState:
    """What a service's policies remember between requests; the gateway keeps one per service."""

    index: PrefixIndex = field(default_factory=PrefixIndex)
    rr_next: int = 0
    stale_after: float = STALE_AFTER_S
    epsilon: float = LOAD_EPSILON
    # Requests sent to each endpoint, decaying with RECENT_TAU_S: each endpoint's share of current
    # traffic, which bounds how much prefix affinity may pile onto one (in-flight counts are too noisy).
    recent: dict[str, tuple[float, float]] = field(default_factory=dict)
    # Blocks newly cached on each endpoint, decaying alike: how fast current traffic fills its cache.
    # A new prefix costs least where that is slowest; what old traffic left there is evicted first.
    growth: dict[str, tuple[float, float]] = field(default_factory=dict)

    def recent_count(self, endpoint_id: str, now: float) -> float:
        return _decayed(self.recent, endpoint_id, now)

    def recent_growth(self, endpoint_id: str, now: float) -> float:
        return _decayed(self.growth, endpoint_id, now)

    def note(self, endpoint_id: str, now: float) -> None:
        """Called by the gateway for every request it sends, whichever policy chose the endpoint."""
        self.recent[endpoint_id] = (self.recent_count(endpoint_id, now) + 1.0, now)

    def record(self, endpoint_id: str, prompt: str, capacity: int | None, now: float) -> None:
        """Called by the gateway after sending `prompt` to `endpoint_id` under prefix_aware."""
        new = self.index.record(endpoint_id, prompt, capacity)
        self.growth[endpoint_id] = (self.recent_growth(endpoint_id, now) + new, now)

    def prune(self, live: Collection[str]) -> None:
        """Drops what is remembered of endpoints that are gone: an index the size of an engine's cache
        per instance would otherwise pile up as instances come and go."""
        for endpoint_id in {*self.index.endpoints(), *self.recent, *self.growth} - set(live):
            self.index.forget(endpoint_id)
            self.recent.pop(endpoint_id, None)
            self.growth.pop(endpoint_id, None)


def _decayed(values: dict[str, tuple[float, float]], key: str, now: float) -> float:
    value, at = values.get(key, (0.0, now))
    return value * math.exp(-(now - at) / RECENT_TAU_S)


def is_stale(ep: EndpointState, now: float, stale_after: float = STALE_AFTER_S) -> bool:
    return ep.scraped_at is None or now - ep.scraped_at > stale_after


def kv_usage_of(ep: EndpointState, now: float, stale_after: float = STALE_AFTER_S) -> float:
    return 1.0 if is_stale(ep, now, stale_after) else ep.kv_usage


def waiting_of(ep: EndpointState, now: float, stale_after: float = STALE_AFTER_S) -> int:
    return SATURATED_WAITING if is_stale(ep, now, stale_after) else ep.waiting


def load_of(ep: EndpointState, now: float, stale_after: float = STALE_AFTER_S) -> int:
    """Own in-flight requests plus the engine's queue, which also holds other gateways' requests.

    A stale queue is unknown rather than huge here: the KV filter already pushed stale endpoints to the
    back, and a made-up queue would inflate the mean that bounds everyone else."""
    return ep.inflight + (0 if is_stale(ep, now, stale_after) else ep.waiting)


# Filters -------------------------------------------------------------------------------------------


def ready_filter(endpoints: Sequence[EndpointState]) -> list[EndpointState]:
    return [ep for ep in endpoints if ep.ready and not ep.draining]


def kv_watermark_filter(
    endpoints: Sequence[EndpointState],
    now: float,
    stale_after: float = STALE_AFTER_S,
    watermark: float = KV_WATERMARK,
) -> list[EndpointState]:
    """Skip endpoints whose KV cache is nearly full (or unknown), unless every endpoint is."""
    below = [ep for ep in endpoints if kv_usage_of(ep, now, stale_after) <= watermark]
    return below or list(endpoints)


def bounded_load_filter(
    endpoints: Sequence[EndpointState],
    now: float,
    stale_after: float = STALE_AFTER_S,
    epsilon: float = LOAD_EPSILON,
) -> list[EndpointState]:
    """Keep endpoints that stay within ceil((1+ε)·mean load) after taking this request (consistent
    hashing with bounded loads, Mirrokni et al.); weights scale each endpoint's share of the mean."""
    loads = [load_of(ep, now, stale_after) for ep in endpoints]
    total = sum(loads) + 1
    total_weight = sum(ep.weight for ep in endpoints)
    within = [
        ep
        for ep, load in zip(endpoints, loads, strict=True)
        if load + 1 <= math.ceil((1 + epsilon) * total * ep.weight / total_weight)
    ]
    return within or list(endpoints)


def eligible(
    endpoints: Sequence[EndpointState], now: float, stale_after: float = STALE_AFTER_S
) -> list[EndpointState]:
    return kv_watermark_filter(ready_filter(endpoints), now, stale_after)


# Scorers (higher is better) and the selector -------------------------------------------------------


def least_requests_score(ep: EndpointState) -> float:
    return -ep.inflight / ep.weight


def kv_score(ep: EndpointState, now: float, stale_after: float = STALE_AFTER_S) -> float:
    cost = (
        waiting_of(ep, now, stale_after)
        + ep.running * RUNNING_WEIGHT
        + kv_usage_of(ep, now, stale_after) * KV_WEIGHT
    )
    return -cost / ep.weight


def rendezvous_score(key: str, ep: EndpointState) -> float:
    """Weighted highest-random-weight hashing: each (key, endpoint) pair gets a fixed score, so removing an
    endpoint only moves the keys it was winning. Uses a stable hash so gateway replicas agree."""
    digest = hashlib.blake2b(f"{key}\0{ep.id}".encode(), digest_size=8).digest()
    u = (int.from_bytes(digest, "little") + 1) / (2**64 + 1)  # uniform in (0, 1)
    return -ep.weight / math.log(u)


Score = float | tuple[float, ...]


def select_best(scored: Sequence[tuple[EndpointState, Score]], rng: random.Random) -> str | None:
    if not scored:
        return None
    best = max(score for _, score in scored)
    return rng.choice([ep.id for ep, score in scored if score == best])


# Policies ------------------------------------------------------------------------------------------

Endpoints = Sequence[EndpointState]
Policy = Callable[[Endpoints, RequestInfo, PolicyState, random.Random, float], str | None]


def round_robin(
    endpoints: Endpoints, request: RequestInfo, state: PolicyState, rng: random.Random, now: float
) -> str | None:
    # Sorted so the rotation does not depend on the order the caller happens to list endpoints in.
    candidates = sorted(eligible(endpoints, now, state.stale_after), key=lambda ep: ep.id)
    if not candidates:
        return None
    chosen = candidates[state.rr_next % len(candidates)]
    state.rr_next += 1
    return chosen.id


def least_requests(
    endpoints: Endpoints, request: RequestInfo, state: PolicyState, rng: random.Random, now: float
) -> str | None:
    candidates = eligible(endpoints, now, state.stale_after)
    return select_best([(ep, least_requests_score(ep)) for ep in candidates], rng)


def least_kv(
    endpoints: Endpoints, request: RequestInfo, state: PolicyState, rng: random.Random, now: float
) -> str | None:
    candidates = eligible(endpoints, now, state.stale_after)
    return select_best([(ep, kv_score(ep, now, state.stale_after)) for ep in candidates], rng)


def prefix_aware(
    endpoints: Endpoints, request: RequestInfo, state: PolicyState, rng: random.Random, now: float
) -> str | None:
    """Where the longest cached prefix is, among the endpoints within their share of recent traffic.

    Within the bound the cache decides: a conversation returns to its history, a new conversation joins
    the endpoint that already holds its system prompt, and equal matches go to the lighter share. A
    prefix cached nowhere goes where current traffic fills the cache slowest, so shared prompts spread
    one per endpoint before any endpoint holds two. An endpoint past its bound takes nothing, whatever it has
    cached, which is how a popular system prompt gets a second home: its next request goes to the
    slowest-filling cache within the bound, and later ones share both homes by traffic."""
    candidates = bounded_load_filter(
        eligible(endpoints, now, state.stale_after), now, state.stale_after, state.epsilon
    )
    if not candidates:
        return None
    recent = {ep.id: state.recent_count(ep.id, now) for ep in candidates}
    mean = (sum(recent.values()) + 1) / sum(ep.weight for ep in candidates)  # per unit of weight
    # Never empty: the lightest endpoint per unit of weight is at or under the mean, so it fits.
    within = [
        ep
        for ep in candidates
        if recent[ep.id] + 1 <= math.ceil((1 + SHARE_EPSILON) * mean * ep.weight + SHARE_SLACK)
    ]
    hashes = block_hashes(request.prompt_text)
    matched = {ep.id: state.index.matched_blocks(ep.id, hashes) for ep in within}
    if max(matched.values()) < MIN_AFFINITY_BLOCKS:
        growth = {ep.id: state.recent_growth(ep.id, now) / ep.weight for ep in within}
        scored = [(ep, (-growth[ep.id], -recent[ep.id] / ep.weight, -ep.inflight)) for ep in within]
    else:
        scored = [(ep, (matched[ep.id], -recent[ep.id] / ep.weight, -ep.inflight)) for ep in within]
    return select_best(scored, rng)


def session(
    endpoints: Endpoints, request: RequestInfo, state: PolicyState, rng: random.Random, now: float
) -> str | None:
    """Pin a session to one endpoint; when that endpoint becomes ineligible its sessions, and only its
    sessions, move to their next-ranked endpoint."""
    if request.session_key is None:
        return DEFAULT_POLICY(endpoints, request, state, rng, now)
    candidates = eligible(endpoints, now, state.stale_after)
    if not candidates:
        return None
    key = request.session_key
    return max(candidates, key=lambda ep: rendezvous_score(key, ep)).id


DEFAULT_POLICY: Policy = prefix_aware
POLICIES: dict[str, Policy] = {
    "round_robin": round_robin,
    "least_requests": least_requests,
    "least_kv": least_kv,
    "prefix_aware": prefix_aware,
    "session": session,
}


def session_key_of(headers: Mapping[str, str], body: dict[str, Any]) -> str | None:
    """X-Session-Id wins over the OpenAI `user` field: a client that sets the header means it.
    `headers` must look names up case-insensitively or hold them lower-cased, as Starlette's do."""
    key = headers.get("x-session-id") or body.get("user")
    return key if isinstance(key, str) and key else None
