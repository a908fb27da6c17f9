"""Routing rules, pure: which revision (pin or canary weight), which pool (prompt length) and which
priority class a request gets. The proxy applies them before a balancing policy picks an endpoint."""

from __future__ import annotations

import random
import re
from collections.abc import Sequence

from tideserve.api.auth import PRIORITIES as KEY_PRIORITIES
from tideserve.gateway.endpoints import Endpoint, RouteConfig
from tideserve.gateway.openai_api import GatewayError

# Rank: lower is served first, at the gateway queue and in the engine.
PRIORITIES = {name: rank for rank, name in enumerate(KEY_PRIORITIES)}
# vLLM's convention, which our engine shares: lower `priority` is scheduled earlier, 0 is the default.
ENGINE_PRIORITY = {0: -1, 1: 0, 2: 1}
_VERSION = re.compile(r"v?(\d{1,9})", re.IGNORECASE)
# Without a tokenizer at the gateway: English text averages about 4 bytes per token for BPE
# vocabularies; admission charges this estimate and the final usage corrects it.
BYTES_PER_TOKEN = 4


def parse_version(header: str | None) -> int | None:
    """`X-Model-Version: 3` or `v3` pins revision 3."""
    if header is None or not header.strip():
        return None
    match = _VERSION.fullmatch(header.strip())
    if match is None:
        raise GatewayError(
            400,
            f"X-Model-Version {header!r} is not a revision: send a revision number such as 3 or v3 "
            "(see `tideserve services get NAME`)",
            "invalid_model_version",
        )
    return int(match.group(1))


def priority_rank(header: str | None, key_priority: str) -> int:
    """The header may lower a request's class below its key's, never raise it above: a key is what
    a tenant pays for, the header lets it mark its own background work."""
    key_rank = PRIORITIES.get(key_priority, 1)
    if header is None or not header.strip():
        return key_rank
    rank = PRIORITIES.get(header.strip().lower())
    if rank is None:
        raise GatewayError(
            400,
            f"X-Priority {header!r} is not a priority class: use one of high, normal, low",
            "invalid_priority",
        )
    return max(rank, key_rank)


def estimate_tokens(text: str) -> int:
    return -(-len(text.encode()) // BYTES_PER_TOKEN)


def revision_candidates(
    endpoints: Sequence[Endpoint], current: int, config: RouteConfig, pin: int | None, rng: random.Random
) -> tuple[list[Endpoint], list[Endpoint]]:
    """(preferred, fallback) endpoints for the request's revision.

    A pin serves only that revision (no fallback: the client asked for it). A canary sends `weight`
    percent to the current revision and the rest to the stable one, each falling back to the other
    when it has nothing ready. Otherwise every revision serves (a rolling update in progress)."""
    if pin is not None:
        pinned = [e for e in endpoints if e.revision == pin]
        if not pinned:
            serving = sorted({e.revision for e in endpoints})
            raise GatewayError(
                404,
                f"revision {pin} is not serving: serving revisions are {serving or 'none yet'}",
                "model_version_not_found",
            )
        return pinned, []
    if config.canary_revision is None or config.canary_revision == current:
        return list(endpoints), []
    chosen = current if rng.random() * 100 < config.canary_weight else config.canary_revision
    preferred = [e for e in endpoints if e.revision == chosen]
    return preferred, [e for e in endpoints if e.revision != chosen]


def pool_candidates(
    endpoints: Sequence[Endpoint], prompt_tokens: int, config: RouteConfig
) -> tuple[list[Endpoint], list[Endpoint]]:
    """(preferred, fallback): the pool a prompt of this length belongs to, then the other one."""
    if config.long_threshold is None:
        return list(endpoints), []
    want_long = prompt_tokens >= config.long_threshold
    preferred = [e for e in endpoints if e.long_pool == want_long]
    return preferred, [e for e in endpoints if e.long_pool != want_long]


def candidate_tiers(
    endpoints: Sequence[Endpoint],
    current: int,
    config: RouteConfig,
    pin: int | None,
    prompt_tokens: int,
    rng: random.Random,
) -> list[list[Endpoint]]:
    """Endpoint sets to try in order: the right revision and pool, the right revision in the other
    pool, then (canary only) the other revision."""
    tiers: list[list[Endpoint]] = []
    for group in revision_candidates(endpoints, current, config, pin, rng):
        for pool in pool_candidates(group, prompt_tokens, config):
            if pool:
                tiers.append(pool)
    return tiers
