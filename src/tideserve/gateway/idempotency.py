"""`Idempotency-Key`: a request repeated with the same key gets what the first one produced instead of a
second generation. The first request's upstream response is recorded as it arrives; a repeat replays
the record and, while the first is still generating, follows it live. So a client whose stream broke
reconnects and receives the whole stream (already generated part first, at once) without the engine
starting over; the upstream keeps generating while no client listens.

Records live in this gateway replica's memory, scoped by API key, for `ttl_s` after they finish."""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections import OrderedDict
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from tideserve.gateway.openai_api import GatewayError

TTL_S = 600.0
# Completions are kilobytes; this bounds the worst case to a few hundred MB.
MAX_RECORDS = 2_000


def request_fingerprint(path: str, raw: bytes) -> str:
    return hashlib.sha256(path.encode() + b"\0" + raw).hexdigest()


@dataclass
class Record:
    fingerprint: str
    status: int = 0
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    chunks: list[bytes] = field(default_factory=list)
    done: bool = False
    finished_at: float | None = None
    _changed: asyncio.Event = field(default_factory=asyncio.Event)
    started: asyncio.Event = field(default_factory=asyncio.Event)  # status and headers are known

    def start(self, status: int, headers: list[tuple[bytes, bytes]]) -> None:
        self.status, self.headers = status, headers
        self.started.set()

    def append(self, chunk: bytes) -> None:
        self.chunks.append(chunk)
        self._wake()

    def finish(self) -> None:
        self.done, self.finished_at = True, time.monotonic()
        self.started.set()
        self._wake()

    def _wake(self) -> None:
        event, self._changed = self._changed, asyncio.Event()
        event.set()

    async def follow(self) -> AsyncIterator[bytes]:
        """Every chunk from the first, then the live ones until the record is finished."""
        sent = 0
        while True:
            while sent < len(self.chunks):
                sent += 1
                yield self.chunks[sent - 1]
            if self.done:
                return
            await self._changed.wait()


class IdempotencyStore:
    def __init__(self, ttl_s: float = TTL_S, max_records: int = MAX_RECORDS) -> None:
        self.ttl_s, self.max_records = ttl_s, max_records
        self._records: OrderedDict[tuple[int, str], Record] = OrderedDict()

    def _expire(self, now: float) -> None:
        """Drop records finished more than ttl_s ago (a few thousand at most, and only requests
        carrying an Idempotency-Key pay for the scan)."""
        for key in [
            k
            for k, r in self._records.items()
            if r.finished_at is not None and now - r.finished_at > self.ttl_s
        ]:
            del self._records[key]

    def claim(self, key_id: int, idem_key: str, fingerprint: str) -> tuple[Record, bool]:
        """(record, is_new): a new record for the first request; the existing one for a repeat."""
        if not idem_key or len(idem_key) > 255:
            raise GatewayError(
                400,
                "Idempotency-Key must be 1-255 characters (a UUID is a good choice)",
                "invalid_idempotency_key",
            )
        self._expire(time.monotonic())
        existing = self._records.get((key_id, idem_key))
        if existing is not None:
            if existing.fingerprint != fingerprint:
                raise GatewayError(
                    422,
                    f"Idempotency-Key {idem_key!r} was already used for a different request: send a new key "
                    "for a new request",
                    "idempotency_key_reused",
                )
            return existing, False
        while len(self._records) >= self.max_records:
            del self._records[next(iter(self._records))]  # the oldest first
        record = Record(fingerprint)
        self._records[(key_id, idem_key)] = record
        return record, True

    def discard(self, key_id: int, idem_key: str) -> None:
        """A first attempt that produced nothing worth replaying (refused, failed): a repeat runs anew."""
        self._records.pop((key_id, idem_key), None)
