"""API keys as the gateway sees them: an in-memory copy of the key table, refreshed in the background,
so checking a key costs one hash and one dict lookup instead of a database query per request.

A key unknown to the copy re-reads the store once (a key created a moment ago works at once); a
revocation or an edit reaches every gateway replica within one refresh interval."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime

from sqlalchemy import select

from tideserve.api.auth import bearer_token, digest
from tideserve.errors import ApiError
from tideserve.gateway.openai_api import GatewayError
from tideserve.gateway.ratelimit import Limits
from tideserve.store.db import Store
from tideserve.store.models import ApiKey

log = logging.getLogger(__name__)

REFRESH_S = 1.0
# A key that missed after a re-read is refused from memory for this long, and misses arriving together
# share one re-read: a flood of bad keys cannot become a flood of queries.
NEGATIVE_TTL_S = REFRESH_S
NEGATIVE_MAX = 10_000


@dataclass(frozen=True)
class KeyInfo:
    id: int
    name: str
    scope: str
    # Names the key's rate-limit budget: unlike the id, unique across stores sharing one Redis.
    digest: str = ""
    services: frozenset[str] | None = None  # None: every service
    expires_at: float | None = None  # unix seconds
    priority: str = "normal"
    limits: Limits = field(default_factory=Limits)

    def allows(self, service: str) -> bool:
        return self.services is None or service in self.services


def _info(k: ApiKey) -> KeyInfo:
    return KeyInfo(
        id=k.id,
        name=k.name,
        scope=k.scope,
        digest=k.sha256,
        services=None if k.services is None else frozenset(k.services),
        expires_at=None if k.expires_at is None else k.expires_at.timestamp(),
        priority=k.priority or "normal",
        limits=Limits(k.requests_per_minute, k.tokens_per_minute, k.max_concurrent),
    )


def bearer(authorization: str | None) -> str:
    """`auth.bearer_token`, refused the way OpenAI clients expect."""
    try:
        return bearer_token(authorization)
    except ApiError as e:
        raise GatewayError(e.status, e.message, "invalid_api_key") from None


class KeyCache:
    """`store=None`: a fixed set of keys (`tideserve gateway --api-key`), or none, which means open."""

    def __init__(self, store: Store | None, static: dict[str, KeyInfo] | None = None) -> None:
        self.store = store
        self.open = store is None and not static
        self._by_digest: dict[str, KeyInfo] = {digest(k): v for k, v in (static or {}).items()}
        self._revoked: set[str] = set()
        self._unknown: dict[str, float] = {}  # digest -> until when it is refused without a re-read
        self._generation = 0
        self._reload_lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None

    def _load(self) -> tuple[dict[str, KeyInfo], set[str]]:
        assert self.store is not None
        live: dict[str, KeyInfo] = {}
        revoked: set[str] = set()
        with self.store.session() as s:
            for k in s.scalars(select(ApiKey)):
                if k.revoked_at is None:
                    live[k.sha256] = _info(k)
                else:
                    revoked.add(k.sha256)
        return live, revoked

    async def reload(self) -> None:
        if self.store is not None:
            self._by_digest, self._revoked = await asyncio.to_thread(self._load)
            self._generation += 1

    async def _reload_for_miss(self, sha: str) -> KeyInfo | None:
        clock = time.monotonic()
        if self._unknown.get(sha, 0.0) > clock:
            return None
        generation = self._generation
        async with self._reload_lock:
            if self._generation == generation:  # nobody re-read the store while we waited
                await self.reload()
        info = self._by_digest.get(sha)
        if info is None:
            if len(self._unknown) >= NEGATIVE_MAX:
                self._unknown.clear()
            self._unknown[sha] = clock + NEGATIVE_TTL_S
        return info

    async def authenticate(self, authorization: str | None, now: float | None = None) -> KeyInfo | None:
        """The key's record, or None when this gateway is open (no keys configured)."""
        if self.open:
            return None
        sha = digest(bearer(authorization))
        info = self._by_digest.get(sha)
        if info is None and sha not in self._revoked and self.store is not None:
            info = await self._reload_for_miss(sha)
        if info is None:
            raise GatewayError(401, "invalid or revoked API key", "invalid_api_key")
        now = time.time() if now is None else now
        if info.expires_at is not None and now >= info.expires_at:
            when = datetime.fromtimestamp(info.expires_at, UTC).isoformat()
            raise GatewayError(
                401,
                f"API key {info.name!r} expired at {when}: create a new key or extend it with "
                f"PATCH /api/v1/keys/{info.name}",
                "key_expired",
            )
        return info

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(REFRESH_S)
            try:
                await self.reload()
            except Exception:  # keep the last good copy through a store hiccup
                log.exception("key refresh failed")

    async def start(self) -> None:
        if self.store is not None:
            await self.reload()
            self._task = asyncio.create_task(self._run(), name="key-cache")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
