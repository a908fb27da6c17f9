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
from collections.abc import Callable, Mapping, Sequence
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
# prefix_aware: a cached prefix skips its prefill, which usually costs more than sharing a busier batch,
# so the (small) load term only decides between similar matches; the bounded load caps how far affinity
# can pile in-flight requests onto one endpoint (ε=1: twice the mean; tighter bounds, and a heavier load
# term, split conversations off their cache on the noise of small in-flight counts), and the
# traffic-share terms below keep the totals even.
LOAD_WEIGHT = 0.1
LOAD_EPSILON = 1.0
RECENT_TAU_S = 60.0
# About 8 KB of prompt text (2K tokens): a prefix this long cached is worth the most affinity gives.
AFFINITY_BLOCKS = 128
# Past 1 + SHARE_SLACK times its fair share of recent traffic an endpoint's score drops by OVER_WEIGHT
# per unit of share, so the requests that would reuse least there (new conversations) go elsewhere
# first; past 1 + SHARE_CAP it takes nothing new. Shares count once the history holds
# SHARE_MIN_REQUESTS per endpoint.
SHARE_SLACK = 0.15
OVER_WEIGHT = 2.0
SHARE_CAP = 0.25
SHARE_MIN_REQUESTS = 3
# Well below any real score difference (one cached block of a long prompt is ~1e-3).
TIE_WEIGHT = 1e-6
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

    def record(self, endpoint_id: str, prompt: str, capacity: int | None = None) -> None:
        """Called by the gateway after sending `prompt` to `endpoint_id`, whichever policy chose it.
        `capacity` (blocks) is the engine's own cache size when it publishes one (see
        `index_capacity`): an index that outlives the engine's evictions sends requests to a prefix
        that is gone."""
        blocks = self._blocks.setdefault(endpoint_id, OrderedDict())
        # Head blocks become the most recent, so eviction trims prefixes from the tail and never leaves a
        # tail that can no longer be reached through its chain.
        for h in reversed(block_hashes(prompt)):
            blocks[h] = None
            blocks.move_to_end(h)
        limit = capacity or self.capacity
        while len(blocks) > limit:
            blocks.popitem(last=False)

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
    # Requests sent to each endpoint, decaying with RECENT_TAU_S: a smooth share of traffic that
    # places new prefixes where traffic is lightest (in-flight counts are too noisy for that).
    recent: dict[str, tuple[float, float]] = field(default_factory=dict)

    def recent_count(self, endpoint_id: str, now: float) -> float:
        value, at = self.recent.get(endpoint_id, (0.0, now))
        return value * math.exp(-(now - at) / RECENT_TAU_S)

    def note(self, endpoint_id: str, now: float) -> None:
        """Called by the gateway for every request it sends, whichever policy chose the endpoint."""
        self.recent[endpoint_id] = (self.recent_count(endpoint_id, now) + 1.0, now)


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


def prefix_score(matched: int, total: int, load: float, max_load: float) -> float:
    """Share of the prompt already cached, less a load penalty in [0, LOAD_WEIGHT)."""
    cached = matched / total if total else 0.0
    return cached - LOAD_WEIGHT * load / (max_load + 1)


def rendezvous_score(key: str, ep: EndpointState) -> float:
    """Weighted highest-random-weight hashing: each (key, endpoint) pair gets a fixed score, so removing an
    endpoint only moves the keys it was winning. Uses a stable hash so gateway replicas agree."""
    digest = hashlib.blake2b(f"{key}\0{ep.id}".encode(), digest_size=8).digest()
    u = (int.from_bytes(digest, "little") + 1) / (2**64 + 1)  # uniform in (0, 1)
    return -ep.weight / math.log(u)


def select_best(scored: Sequence[tuple[EndpointState, float]], rng: random.Random) -> str | None:
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
    """Where the longest cached prefix is, unless that endpoint is busy or already gets more than its
    share of traffic.

    The cache gain counts cached blocks against AFFINITY_BLOCKS rather than the prompt's length, so a
    conversation with a long history sticks harder than a new one that shares only a system prompt;
    when an endpoint's recent traffic exceeds its fair share by more than SHARE_SLACK, it sheds the
    requests it would save the least on first, and past SHARE_CAP it takes none, which keeps the totals
    balanced (consistent hashing with bounded loads, applied to the traffic share). In-flight load is
    bounded as well."""
    candidates = bounded_load_filter(
        eligible(endpoints, now, state.stale_after), now, state.stale_after, state.epsilon
    )
    if not candidates:
        return None
    hashes = block_hashes(request.prompt_text)
    loads = [load_of(ep, now, state.stale_after) / ep.weight for ep in candidates]
    max_load = max(loads)
    recent = [state.recent_count(ep.id, now) for ep in candidates]
    total_weight = sum(ep.weight for ep in candidates)
    fair = (sum(recent) + 1) / total_weight  # requests per unit of weight, this one included
    # Shares of a short history are noise (the first request is 100% of it).
    shares_count = sum(recent) >= SHARE_MIN_REQUESTS * len(candidates)
    scored = []
    for ep, load, count in zip(candidates, loads, recent, strict=True):
        gain = min(1.0, state.index.matched_blocks(ep.id, hashes) / AFFINITY_BLOCKS)
        share = (count + 1) / (fair * ep.weight)
        if shares_count and share > 1 + SHARE_CAP:
            continue  # the hard bound on traffic share, whatever the cache
        over = max(0.0, share - 1 - SHARE_SLACK) if shares_count else 0.0
        # The last term only breaks ties: new prefixes go where recent traffic is lightest.
        score = gain - LOAD_WEIGHT * load / (max_load + 1) - OVER_WEIGHT * over - TIE_WEIGHT * share
        scored.append((ep, score))
    if not scored:
        # Every share counts this request, so a short, even history can put all of them past the cap
        # (8+ endpoints at SHARE_MIN_REQUESTS each); the lightest then takes it, the cap being moot.
        lightest = min(zip(candidates, recent, strict=True), key=lambda pair: pair[1] / pair[0].weight)[0]
        return lightest.id
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
