"""Requests waiting for an instance, highest priority first, then first come: one queue per service.

Waiters are futures; the proxy wakes one when a request finishes (a slot freed) and all when the
endpoint table changes (an instance became ready, a breaker may have cooled down)."""

from __future__ import annotations

import asyncio
import heapq
import itertools


class WaitQueue:
    def __init__(self) -> None:
        # (rank, seq, entry number, waiter): the entry number keeps two entries of one waiter (a
        # stale one it left on timing out, and its new one) from ever comparing futures.
        self._heap: list[tuple[int, int, int, asyncio.Future[None]]] = []
        self._seq = itertools.count()
        self._entries = itertools.count()

    def __len__(self) -> int:
        return sum(1 for *_, future in self._heap if not future.done())

    def best_rank(self) -> int | None:
        self._prune()
        return self._heap[0][0] if self._heap else None

    def push(self, rank: int, seq: int | None = None) -> tuple[int, asyncio.Future[None]]:
        """A waiter woken in its turn keeps its place (`seq`) when it has to wait again."""
        seq = next(self._seq) if seq is None else seq
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._heap, (rank, seq, next(self._entries), future))
        return seq, future

    def _prune(self) -> None:
        while self._heap and self._heap[0][3].done():  # timed out or cancelled
            heapq.heappop(self._heap)

    def wake_one(self) -> None:
        self._prune()
        if self._heap:
            heapq.heappop(self._heap)[3].set_result(None)

    def wake_all(self) -> None:
        for *_, future in self._heap:
            if not future.done():
                future.set_result(None)
        self._heap.clear()
