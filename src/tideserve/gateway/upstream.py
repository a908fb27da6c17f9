"""Connections from the gateway to engine instances: HTTP/1.1 kept alive, parsed by httptools.

A general-purpose client (aiohttp, httpx) turns every streamed chunk into several Python calls and a
task switch; here a chunk of the engine's response is handed to a callback (`sink`) from the
protocol's `data_received`, which usually writes it straight to the client's socket. That is the
whole per-token cost of the gateway.

Timeouts: connecting is bounded by `connect_timeout`, and a response that stays silent longer than
`read_timeout` (between any two reads) fails with `UpstreamTimeout`."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import cast
from urllib.parse import urlsplit

import httptools

Sink = Callable[[bytes], None]


class UpstreamError(Exception):
    """The instance could not be reached or dropped the connection."""


class UpstreamTimeout(UpstreamError):
    pass


class ConnectFailed(UpstreamError):
    pass


class UpstreamConnection(asyncio.Protocol):
    def __init__(self, pool: UpstreamPool, origin: tuple[str, int]) -> None:
        self.pool, self.origin = pool, origin
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.reusable = False
        self.closed = False
        self._reset()

    def _reset(self) -> None:
        loop = asyncio.get_running_loop()
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.head: asyncio.Future[None] = loop.create_future()
        self.done: asyncio.Future[None] = loop.create_future()
        self.sink: Sink | None = None
        self.after_read: Callable[[], None] | None = None  # runs once per read, after its chunks
        self.buffered: list[bytes] = []  # body that arrived before a sink was set
        self.received_any = False
        self.last_read = time.monotonic()
        self._timer: asyncio.TimerHandle | None = None

    # --- asyncio.Protocol ---------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses

    def data_received(self, data: bytes) -> None:
        self.received_any = True
        self.last_read = time.monotonic()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as e:
            self._fail(UpstreamError(f"malformed response from {self.origin}: {e}"))
        if self.after_read is not None:
            self.after_read()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.pool.forget(self)
        if not self.done.done():
            self._fail(UpstreamError(f"{self.origin[0]}:{self.origin[1]} closed the connection"))

    # --- httptools callbacks ------------------------------------------------------------------------

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()
        if not self.head.done():
            self.head.set_result(None)

    def on_body(self, body: bytes) -> None:
        if self.sink is not None:
            self.sink(body)
        else:
            self.buffered.append(body)

    def on_message_complete(self) -> None:
        self.reusable = self.parser.should_keep_alive()
        self._stop_timer()
        if not self.done.done():
            self.done.set_result(None)

    # --- use ----------------------------------------------------------------------------------------

    def _fail(self, error: Exception) -> None:
        self._stop_timer()
        self.reusable = False
        for future in (self.head, self.done):
            if not future.done():
                future.set_exception(error)
                future.exception()  # retrieved: a caller that never awaits it is no bug
        self.close()

    def close(self) -> None:
        self.reusable = False
        if self.transport is not None and not self.closed:
            self.transport.close()
            self.closed = True

    def _watch(self, read_timeout: float) -> None:
        """One timer per request, re-armed for the time left, rather than one per chunk."""
        silent = time.monotonic() - self.last_read
        if silent >= read_timeout:
            self._fail(UpstreamTimeout(f"no data for {read_timeout:g} s"))
            return
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(read_timeout - silent, self._watch, read_timeout)

    def _stop_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def send(self, request: bytes, read_timeout: float) -> None:
        assert self.transport is not None
        self._reset()
        self.parser = httptools.HttpResponseParser(self)
        self.transport.write(request)
        self._watch(read_timeout)

    def attach(self, sink: Sink) -> None:
        """Deliver the body to `sink` from now on, starting with what already arrived."""
        buffered, self.buffered = self.buffered, []
        for chunk in buffered:
            sink(chunk)
        self.sink = sink

    async def read_all(self) -> bytes:
        parts: list[bytes] = []
        self.attach(parts.append)
        await self.done
        return b"".join(parts)

    def release(self) -> None:
        """Back to the pool when the response ended cleanly, else closed (which also tells the
        engine to stop generating)."""
        self._stop_timer()
        if self.reusable and self.done.done() and not self.done.exception() and not self.closed:
            self.pool.give_back(self)
        else:
            self.close()


@dataclass
class UpstreamPool:
    max_idle_per_origin: int = 64
    _idle: dict[tuple[str, int], list[UpstreamConnection]] = field(default_factory=dict)

    def forget(self, conn: UpstreamConnection) -> None:
        idle = self._idle.get(conn.origin)
        if idle and conn in idle:
            idle.remove(conn)

    def give_back(self, conn: UpstreamConnection) -> None:
        idle = self._idle.setdefault(conn.origin, [])
        if len(idle) < self.max_idle_per_origin:
            idle.append(conn)
        else:
            conn.close()

    async def _connect(self, origin: tuple[str, int], timeout: float) -> UpstreamConnection:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(timeout):
                _, conn = await loop.create_connection(lambda: UpstreamConnection(self, origin), *origin)
        except TimeoutError as e:
            raise ConnectFailed(f"connecting to {origin[0]}:{origin[1]} timed out after {timeout:g} s") from e
        except OSError as e:
            raise ConnectFailed(f"cannot connect to {origin[0]}:{origin[1]}: {e.strerror or e}") from e
        return conn

    async def request(
        self,
        origin: tuple[str, int],
        head: bytes,
        body: bytes,
        connect_timeout: float,
        read_timeout: float,
        bind: Callable[[UpstreamConnection], None] | None = None,
    ) -> UpstreamConnection:
        """Send one request; returns once the response's status and headers are in. `bind` learns
        each connection used, so its caller can close it (a client that left)."""
        idle = self._idle.get(origin)
        while idle:
            conn = idle.pop()
            if conn.closed:
                continue
            if bind is not None:
                bind(conn)
            conn.send(head + body, read_timeout)
            try:
                await conn.head
                return conn
            except UpstreamTimeout:
                raise
            except UpstreamError:
                # The engine closed a kept-alive connection (idle timeout, restart) just as we used
                # it: nothing was answered, so a fresh connection is a safe retry, not a failure.
                if conn.received_any:
                    raise
        conn = await self._connect(origin, connect_timeout)
        if bind is not None:
            bind(conn)
        conn.send(head + body, read_timeout)
        await conn.head
        return conn

    async def get(self, origin: tuple[str, int], path: str, timeout: float) -> tuple[int, bytes]:
        """A whole small response (a `/metrics` scrape) within `timeout`. Scrapers of hundreds of
        instances use this rather than httpx, whose pool matches every queued request against every
        connection: quadratic, which stalled the event loop for seconds at 500 instances."""
        head = request_head("GET", f"{origin[0]}:{origin[1]}", path, [], 0)
        async with asyncio.timeout(timeout):
            conn = await self.request(origin, head, b"", timeout, timeout)
            try:
                body = await conn.read_all()
            finally:
                conn.release()
        return conn.status, body

    def close(self) -> None:
        for idle in self._idle.values():
            for conn in idle:
                conn.close()
        self._idle.clear()


def origin_of(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    return parts.hostname or "127.0.0.1", parts.port or 80


def request_head(method: str, host: str, path: str, headers: list[tuple[str, str]], length: int) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", f"host: {host}", f"content-length: {length}"]
    lines += [f"{k}: {v}" for k, v in headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
